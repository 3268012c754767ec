"""``ddf.llm`` on Dask DataFrames: ``apply``, ``classify`` and ``embed``, lazy, one partition at a time.

>>> import dask.dataframe as dd
>>> import llmframe.dask                 # registers ddf.llm (needs llmframe[dask])
>>> out = ddf.llm.apply("Classify: {review}", output="sentiment", model="gpt-4o-mini",
...                     cache="/shared/llm-cache/")
>>> out.to_parquet("enriched/")          # the requests are sent here, by the workers
>>> print(out.llm.report)                # every partition's report, merged

``import llmframe`` registers the accessor too when ``dask.dataframe`` is already
imported; it never imports Dask itself (a second or more on import).
"""

from __future__ import annotations

from typing import Any

try:
    import dask.dataframe as dd
except ImportError as exc:  # pragma: no cover - exercised in a process without dask
    raise ImportError(
        "llmframe.dask needs Dask: pip install 'llmframe[dask]' (dask[dataframe] and distributed)"
    ) from exc

from ._dask import RUN, dask_call
from ._dask_report import take_run
from ._report import RunReport

__all__ = ["DaskLLM", "report_of"]

#: The attribute keeping a run's merged report once its folder is gone.
_MERGED = "_llmframe_report"


def report_of(ddf: Any) -> RunReport | None:
    """The merged report of the partitions of ``ddf`` computed so far (``ddf.llm.report``).

    Once every partition has stored its report, the run's folder is removed and the
    merged report kept on ``ddf``; a later compute of ``ddf`` stores new ones, read next.
    """
    state = getattr(ddf, "__dict__", {})
    folder = state.get(RUN)
    if not isinstance(folder, str):
        return None
    report, whole = take_run(folder, ddf.npartitions)
    if whole:
        state[_MERGED] = report
    return report if report is not None else state.get(_MERGED)


@dd.extensions.register_dataframe_accessor("llm")
class DaskLLM:
    """``ddf.llm`` on a Dask DataFrame: each method returns a lazy Dask DataFrame whose
    partitions run the pandas call of the same name when computed."""

    def __init__(self, ddf: dd.DataFrame):
        self._ddf = ddf

    def apply(self, template: str, **options: Any) -> dd.DataFrame:
        """:func:`llmframe.apply` on every partition; the same arguments (``client=`` aside).

        >>> out = ddf.llm.apply("Classify: {review}", output="sentiment", model="gpt-4o-mini")
        """
        return dask_call(self._ddf, "apply", template, options)

    def classify(self, template: str, *, labels: Any, **options: Any) -> dd.DataFrame:
        """:func:`llmframe.classify` on every partition.

        >>> out = ddf.llm.classify("Topic of: {text}", labels=["billing", "bug", "other"], output="topic")
        """
        return dask_call(self._ddf, "classify", template, {"labels": labels, **options})

    def embed(self, template: str, *, dimensions: int, **options: Any) -> dd.DataFrame:
        """:func:`llmframe.embed` on every partition; ``dimensions`` is needed, so that the
        column's type is known before any request.

        >>> out = ddf.llm.embed("{title}", output="vec", model="text-embedding-3-small", dimensions=256)
        """
        return dask_call(self._ddf, "embed", template, {"dimensions": dimensions, **options})

    @property
    def report(self) -> RunReport | None:
        """The merged report of this frame's partitions computed so far; None before any.

        Read from the run's folder (``<cache>/_runs/<run id>/``), where each partition
        stores its own: rows, cached, failed, requests, 429s, tokens and cost add up.
        The folder is removed once every partition's report is in it and read.
        """
        return report_of(self._ddf)
