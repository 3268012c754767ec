"""The ``df.llm`` namespace on pandas DataFrames (registered by ``import llmframe``)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from . import _api

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
