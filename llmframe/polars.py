"""The ``df.llm`` namespace on polars DataFrames and ``lf.llm`` on LazyFrames (registered by ``import llmframe``)."""

from __future__ import annotations

from typing import Any

import polars as pl

from ._accessor import LLMNamespace
from ._lazy_polars import lazy_call, reports_of
from ._report import RunReport

__all__ = ["PolarsLLM", "PolarsLazyLLM"]


@pl.api.register_dataframe_namespace("llm")
class PolarsLLM(LLMNamespace[pl.DataFrame]):
    """``df.llm`` on a polars DataFrame; see :class:`llmframe._accessor.LLMNamespace`."""


@pl.api.register_lazyframe_namespace("llm")
class PolarsLazyLLM:
    """``lf.llm`` on a polars LazyFrame: each method returns a LazyFrame that answers at ``collect``.

    >>> out = lf.llm.apply("Classify: {review}", output="sentiment", model="gpt-4o-mini")
    >>> out.filter(pl.col("sentiment") == "positive").collect(engine="streaming")
    """

    def __init__(self, lf: pl.LazyFrame):
        self._lf = lf

    def apply(self, template: str, **options: Any) -> pl.LazyFrame:
        """:func:`llmframe.apply`, lazily; the same arguments."""
        return lazy_call(self._lf, "apply", template, options)

    def classify(self, template: str, *, labels: Any, **options: Any) -> pl.LazyFrame:
        """:func:`llmframe.classify`, lazily."""
        return lazy_call(self._lf, "classify", template, {"labels": labels, **options})

    def embed(self, template: str, *, dimensions: int, **options: Any) -> pl.LazyFrame:
        """:func:`llmframe.embed`, lazily; ``dimensions`` gives the column's type before any request."""
        return lazy_call(self._lf, "embed", template, {"dimensions": dimensions, **options})

    @property
    def report(self) -> RunReport | None:
        """The merged report of every batch this LazyFrame's call has answered (all collects so far)."""
        return reports_of(self._lf)
