"""The user's tools on a cache folder's embeddings (``<cache folder>/_embeddings/``).

What ``llmframe.cache_info``, ``clear_cache`` and ``compact_cache`` (and
``python -m llmframe cache``) report and do for the vectors, beside the
answers: counts and bytes of segments and logs, deleting them, folding the
logs that dead processes left and merging the segments. Each function takes
the cache folder and returns its part of the answer, its keys prefixed with
``embedding_``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._cache_log import fold_orphans, list_logs, log_is_live, log_tables, remove_orphans
from ._cache_temps import remove_stale_temporaries
from ._embed_segments import (
    FOLDER,
    VECTOR_LOGS,
    compact_vectors,
    dims_of,
    key_pairs,
    list_segments,
    read_segments,
)

__all__ = ["clear_embeddings", "compact_embeddings", "embeddings_info"]


def _counts(folder: Path) -> tuple[int, int, list[int], list[str]]:
    """Records, distinct keys, vector lengths and models of the segments and logs."""
    tables = [*read_segments(folder, ["key", "model", "vector"]),
              *log_tables(folder, kind=VECTOR_LOGS)]  # fmt: skip
    models = {m for t in tables for m in t.column("model").unique().to_pylist()}
    keys = len(np.unique(np.concatenate([key_pairs(t) for t in tables]))) if tables else 0
    return sum(t.num_rows for t in tables), keys, sorted({dims_of(t) for t in tables}), sorted(models)


def embeddings_info(cache_dir: Path) -> dict[str, Any]:
    """``embedding_segments``, ``embedding_records`` (logs included), ``embedding_keys``
    (distinct), ``embedding_dims`` and ``embedding_models`` (sorted), ``embedding_bytes``
    (segments), ``embedding_logs``, ``embedding_orphaned_logs`` and ``embedding_log_bytes``."""
    folder = cache_dir / FOLDER
    logs = list_logs(folder)
    sizes = list_segments(folder)
    records, keys, dims, models = _counts(folder)
    return {
        "embedding_segments": len(sizes),
        "embedding_records": records,
        "embedding_keys": keys,
        "embedding_dims": dims,
        "embedding_models": models,
        "embedding_bytes": sum(sizes.values()),
        "embedding_logs": len(logs),
        "embedding_orphaned_logs": sum(not log_is_live(folder / name) for name in logs),
        "embedding_log_bytes": sum(logs.values()),
    }


def clear_embeddings(cache_dir: Path) -> int:
    """Delete the embedding segments and the logs and temporary files dead processes left;
    return how many files. The logs of running processes are theirs."""
    folder = cache_dir / FOLDER
    removed = remove_orphans(folder) + remove_stale_temporaries(folder)
    for name in list_segments(folder):
        with contextlib.suppress(FileNotFoundError):
            os.remove(folder / name)
            removed += 1
    return removed


def compact_embeddings(cache_dir: Path) -> dict[str, int]:
    """Fold the orphaned logs, then merge every embedding segment into one per vector length
    (one vector per key); the counts before and after."""
    folder = cache_dir / FOLDER
    before = list_segments(folder)
    logs_before = len(list_logs(folder))
    if folder.is_dir():
        fold_orphans(folder, kind=VECTOR_LOGS)
    logs_folded = logs_before - len(list_logs(folder))
    done = compact_vectors(folder, list(list_segments(folder)))
    after = list_segments(folder)
    return {
        "embedding_segments_before": len(before),
        "embedding_records_before": done.records_read,
        "embedding_bytes_before": sum(before.values()),
        "embedding_segments_after": len(after),
        "embedding_records_after": done.records_written,
        "embedding_bytes_after": sum(after.values()),
        "embedding_logs_folded": logs_folded,
    }
