"""The ``df.llm`` namespace on polars DataFrames (registered by ``import llmframe``)."""

from __future__ import annotations

import polars as pl

from ._accessor import LLMNamespace

__all__ = ["PolarsLLM"]


@pl.api.register_dataframe_namespace("llm")
class PolarsLLM(LLMNamespace[pl.DataFrame]):
    """``df.llm`` on a polars DataFrame; see :class:`llmframe._accessor.LLMNamespace`."""
