"""Finding a whole run's vectors at once among tables of cached vectors.

The tables are what the embedding cache holds (memory-mapped segments, logs,
its own buffer). Their keys are read as two uint64 halves, sorted once, and a
run's keys found by binary search: no per-row Python object on a cached re-run.
When every row is found in a few long runs (a re-run of what one run wrote: its
replies are stored in blocks, in row order), the vectors are returned as slices
of the tables as they lie, no copy; otherwise only the rows found are copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from ._embed_segments import dims_of, halves
from ._errors import CacheError

__all__ = ["Found", "find"]

#: Most slices a fully cached lookup returns instead of copying: one per reply is typical.
_MAX_RUNS = 4096


class Found:
    """What a lookup found: for each row, the position of its vector in ``vectors``, or -1.

    When every row was found in a few long runs of the segments, ``aligned`` holds the
    rows' vectors as slices of the segments as read, no copy, and ``vectors`` is empty.
    """

    __slots__ = ("aligned", "positions", "vectors")

    def __init__(self, positions: np.ndarray, vectors: np.ndarray, aligned: pa.ChunkedArray | None = None) -> None:
        self.positions = positions  # int64, one per row
        self.vectors = vectors  # (found, dims) float32; (0, 0) when nothing was found
        self.aligned = aligned  # fixed_size_list<float32>[dims], one row per row, or None

    @property
    def hits(self) -> int:
        return int((self.positions >= 0).sum())


def _runs(vectors: pa.ChunkedArray, rows: np.ndarray) -> pa.ChunkedArray | None:
    """The vectors at ``rows`` as slices of ``vectors``' chunks, when they form at most
    :data:`_MAX_RUNS` runs of consecutive positions; else None (copy them instead)."""
    starts = np.cumsum([0] + [len(c) for c in vectors.chunks])
    cuts = np.union1d(np.flatnonzero(np.diff(rows) != 1) + 1, np.flatnonzero(np.isin(rows, starts[1:-1])))
    if len(cuts) >= _MAX_RUNS or not len(rows) or vectors.null_count:
        return None
    pieces = []
    for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(rows)], strict=True):
        first = int(rows[lo])
        index = int(np.searchsorted(starts, first, side="right")) - 1
        pieces.append(vectors.chunk(index).slice(first - int(starts[index]), hi - lo))
    return pa.chunked_array(pieces, vectors.type)


def _gather(vectors: pa.ChunkedArray, rows: np.ndarray, dims: int) -> np.ndarray:
    """The float32 vectors at ``rows`` of a ``fixed_size_list<float32>[dims]`` column, copied."""
    out = np.empty((len(rows), dims), dtype=np.float32)
    start = 0
    for chunk in vectors.chunks:
        end = start + len(chunk)
        if len(chunk):
            view = chunk.values.to_numpy(zero_copy_only=True).reshape(-1, dims)[chunk.offset :]
            inside = (rows >= start) & (rows < end)
            if inside.all():
                out[:] = view[rows - start]
            elif inside.any():
                out[inside] = view[rows[inside] - start]
        start = end
    return out


def find(tables: Sequence[pa.Table], keys: bytes, dims: int | None, folder: Path) -> Found:
    """The vector of each key (16 bytes a row, concatenated) among ``tables`` (``key`` and
    ``vector`` columns); ``dims``, when known, skips tables of other lengths. Raises
    :class:`CacheError` when the vectors found differ in length (``folder`` is named)."""
    wanted = halves(keys)
    positions = np.full(len(wanted), -1, dtype=np.int64)
    lengths = {dims_of(t) for t in tables if t.num_rows}
    if dims is not None:
        lengths &= {dims}
    found: Found | None = None
    for length in sorted(lengths):
        group = pa.concat_tables([t for t in tables if dims_of(t) == length])
        stored_keys = group.column("key").combine_chunks()
        stored = halves(stored_keys.buffers()[1], len(stored_keys))
        order = np.argsort(stored[:, 0], kind="stable")
        sorted_hi = stored[order, 0]
        at = np.minimum(np.searchsorted(sorted_hi, wanted[:, 0]), max(len(order) - 1, 0))
        candidate = order[at]
        hit = (stored[candidate, 0] == wanted[:, 0]) & (stored[candidate, 1] == wanted[:, 1])
        if not hit.any():
            continue
        if found is not None:
            raise CacheError(f"cached vectors for these texts have {sorted(lengths)} values: the model's "
                             f"vectors changed length; clear {folder}")  # fmt: skip
        rows = candidate[hit]
        positions[hit] = np.arange(len(rows))
        aligned = _runs(group.column("vector"), rows) if hit.all() else None
        if aligned is not None:
            found = Found(positions, np.zeros((0, length), np.float32), aligned)
        else:  # only the rows found are copied out, chunk by chunk: one copy of what the run uses
            found = Found(positions, _gather(group.column("vector"), rows, length))
    return found if found is not None else Found(positions, np.zeros((0, 0), np.float32))
