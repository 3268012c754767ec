"""The ``df.llm`` namespace on pandas DataFrames (registered by ``import llmframe``)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from . import _api
from ._calibrate import CalibrationReport
from ._estimate import Estimate
from ._report import RunReport

__all__ = ["PandasLLM"]


@pd.api.extensions.register_dataframe_accessor("llm")
class PandasLLM:
    """``df.llm``: converts the frame and calls the engine; it keeps no other state."""

    def __init__(self, df: pd.DataFrame):
        self._df = df

    def apply(self, template: str, **options: Any) -> pd.DataFrame:
        """Answer ``template`` per row; see :func:`llmframe.apply`.

        >>> out = df.llm.apply("Classify the sentiment of: {review}", output="sentiment")
        """
        return _api.apply(self._df, template, **options)

    async def aapply(self, template: str, **options: Any) -> pd.DataFrame:
        """The async form of :meth:`apply`, for code that already runs in an event loop."""
        return await _api.aapply(self._df, template, **options)

    def estimate(self, template: str, *, sample: int = 0, **options: Any) -> Estimate:
        """What :meth:`apply` with the same options would send and cost; see :func:`llmframe.estimate`."""
        return _api.estimate(self._df, template, sample=sample, **options)

    @property
    def report(self) -> RunReport | None:
        """The run report of the ``apply`` that returned this frame, if it did."""
        return _api.report_of(self._df)

    def calibrate(self, template: str, **options: Any) -> CalibrationReport:
        """Measure packed-vs-one-row agreement on a sample; see :func:`llmframe.calibrate`."""
        from ._calibrate import calibrate

        return calibrate(self._df, template, **options)
