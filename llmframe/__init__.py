"""llmframe: enrich a pandas or polars DataFrame with an LLM in one line.

>>> import llmframe                      # registers df.llm on pandas and polars
>>> out = df.llm.apply("Classify the sentiment of: {review}", output="sentiment",
...                    model="gpt-4o-mini")

Rows are packed many to a request, sent concurrently under one shared RPM/TPM
limiter, cached in parquet, and written back as a new column.
"""

from __future__ import annotations

from ._api import (
    ApplyOptions,
    EmbedOptions,
    aapply,
    aclassify,
    aembed,
    aestimate,
    apply,
    asubmit,
    classify,
    embed,
    estimate,
    estimate_embed,
    submit,
)
from ._batch_job import BatchJob, batch_job
from ._batch_status import BatchStatus, batch_jobs
from ._cache_admin import cache_info, clear_cache, compact_cache, read_cache
from ._calibrate import CalibrationReport, acalibrate, calibrate
from ._config import configure
from ._embed_cache import read_embeddings
from ._embed_output import embedding_matrix
from ._errors import (
    AuthenticationError,
    CacheError,
    ConfigError,
    EndpointError,
    LLMFrameError,
    RowError,
    RunError,
    TemplateError,
)
from ._estimate import Estimate
from ._pricing import PRICES, Price
from ._report import RunReport, last_report

__version__ = "0.1.0"

__all__ = [
    "PRICES",
    "ApplyOptions",
    "AuthenticationError",
    "BatchJob",
    "BatchStatus",
    "CacheError",
    "CalibrationReport",
    "ConfigError",
    "EmbedOptions",
    "EndpointError",
    "Estimate",
    "LLMFrameError",
    "Price",
    "RowError",
    "RunError",
    "RunReport",
    "TemplateError",
    "__version__",
    "aapply",
    "acalibrate",
    "aclassify",
    "aembed",
    "aestimate",
    "apply",
    "asubmit",
    "batch_job",
    "batch_jobs",
    "cache_info",
    "calibrate",
    "classify",
    "clear_cache",
    "compact_cache",
    "configure",
    "embed",
    "embedding_matrix",
    "estimate",
    "estimate_embed",
    "last_report",
    "read_cache",
    "read_embeddings",
    "submit",
]


def _register_accessors() -> None:
    # Each backend registers only if it is importable, so neither is forced on a user.
    import importlib
    import sys

    for backend in ("pandas", "polars"):
        try:
            importlib.import_module(backend)
        except ImportError:  # pragma: no cover - both are dependencies today
            continue
        importlib.import_module(f"llmframe.{backend}")
    if "dask.dataframe" in sys.modules:  # Dask is never imported for this (seconds); else `import llmframe.dask`
        importlib.import_module("llmframe.dask")


_register_accessors()
