"""The ``df.llm`` namespace on pandas DataFrames (registered by ``import llmframe``)."""

from __future__ import annotations

import pandas as pd

from ._accessor import LLMNamespace

__all__ = ["PandasLLM"]


@pd.api.extensions.register_dataframe_accessor("llm")
class PandasLLM(LLMNamespace[pd.DataFrame]):
    """``df.llm`` on a pandas DataFrame; see :class:`llmframe._accessor.LLMNamespace`."""
