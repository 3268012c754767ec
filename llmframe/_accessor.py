"""The ``df.llm`` namespace, shared by the pandas and polars registrations.

A namespace object takes the frame in ``__init__`` and keeps no other state
(pandas builds a new one on every attribute access); every method hands the
frame to the typed function API in ``_api``.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from . import _api
from ._batch_job import BatchJob
from ._calibrate import CalibrationReport
from ._estimate import Estimate
from ._report import RunReport

__all__ = ["LLMNamespace"]

Frame = TypeVar("Frame")


class LLMNamespace(Generic[Frame]):
    """``df.llm``: ``apply``, ``aapply``, ``submit``, ``asubmit``, ``classify``, ``aclassify``, ``estimate``, ``embed``,
    ``aembed``, ``estimate_embed``, ``calibrate`` and ``report``."""

    def __init__(self, df: Frame):
        self._df = df

    def apply(self, template: str, **options: Any) -> Frame:
        """Answer ``template`` per row; see :func:`llmframe.apply`.

        >>> out = df.llm.apply("Classify the sentiment of: {review}", output="sentiment")
        """
        return _api.apply(self._df, template, **options)

    def submit(self, template: str, **options: Any) -> BatchJob:
        """Send :meth:`apply`'s requests through the Batch API; returns the job at once. See
        :func:`llmframe.submit`.

        >>> job = df.llm.submit("Classify: {review}", output="sentiment", model="gpt-4o-mini")
        >>> out = job.result()
        """
        return _api.submit(self._df, template, **options)

    async def asubmit(self, template: str, **options: Any) -> BatchJob:
        """The async form of :meth:`submit`."""
        return await _api.asubmit(self._df, template, **options)

    async def aapply(self, template: str, **options: Any) -> Frame:
        """The async form of :meth:`apply`, for code that already runs in an event loop."""
        return await _api.aapply(self._df, template, **options)

    def classify(self, template: str, *, labels: Any, **options: Any) -> Frame:
        """One of ``labels`` per row (``multi=True``: a list); see :func:`llmframe.classify`.

        >>> out = df.llm.classify("Topic of: {text}", labels=["billing", "bug", "other"], output="topic")
        """
        return _api.classify(self._df, template, labels=labels, **options)

    async def aclassify(self, template: str, *, labels: Any, **options: Any) -> Frame:
        """The async form of :meth:`classify`."""
        return await _api.aclassify(self._df, template, labels=labels, **options)

    def estimate(self, template: str, *, sample: int = 0, **options: Any) -> Estimate:
        """What :meth:`apply` with the same options would send and cost; see :func:`llmframe.estimate`.

        >>> print(df.llm.estimate("Classify: {review}", model="gpt-4o-mini"))
        """
        return _api.estimate(self._df, template, sample=sample, **options)

    def embed(self, template: str, **options: Any) -> Frame:
        """One embedding vector per row; see :func:`llmframe.embed`.

        >>> out = df.llm.embed("{title}: {abstract}", output="vec", model="text-embedding-3-small")
        """
        return _api.embed(self._df, template, **options)

    async def aembed(self, template: str, **options: Any) -> Frame:
        """The async form of :meth:`embed`."""
        return await _api.aembed(self._df, template, **options)

    def estimate_embed(self, template: str, **options: Any) -> Estimate:
        """What :meth:`embed` would send and cost; see :func:`llmframe.estimate_embed`."""
        return _api.estimate_embed(self._df, template, **options)

    def calibrate(self, template: str, **options: Any) -> CalibrationReport:
        """Measure packed-vs-one-row agreement on a sample; see :func:`llmframe.calibrate`."""
        from ._calibrate import calibrate

        return calibrate(self._df, template, **options)

    @property
    def report(self) -> RunReport | None:
        """The run report of the ``apply`` that returned this frame, if it did."""
        return _api.report_of(self._df)
