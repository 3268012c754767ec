"""The embedding cache: vectors in parquet segments under ``<cache folder>/_embeddings/``.

Its own record kind beside the answer cache, one row per vector::

    key      fixed_size_binary(16)    blake2b-128 of (model, dimensions) and the text
    model    string
    dims     int32                    the vector's length
    vector   fixed_size_binary(4*dims) the float32 values, little-endian
    created  timestamp[us, UTC]

The folder's name starts with ``_`` so that pyarrow's and pandas' dataset
discovery of the answer cache (``pd.read_parquet(folder)``) skips it. The vector
is stored as its float32 bytes, not as a parquet list: parquet writes a
repetition and a definition level for every float of a list, which made a
million 256-float vectors read six times slower (measured with pyarrow 26);
stored as bytes they read as one buffer and become a ``(rows, dims)`` float32
array without a copy. :func:`read_embeddings` gives them back as
``fixed_size_list<float32>``. The vector column is written uncompressed (zstd
gains ~10% on float32 and costs more than the read itself); the rest with zstd.

Segments are written as the answer cache's are: a new uniquely named file,
written to a temporary name and ``os.replace``-d into place, so several
processes may fill one folder at once and a reader sees whole files only. A
lookup reads every segment, keys as two uint64 halves sorted once, and finds a
whole run's keys by binary search: no per-row Python object on a cached re-run.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._cache_segments import list_segments, warn_corrupt
from ._errors import CacheError

__all__ = ["FOLDER", "EmbeddingCache", "Found", "read_embeddings"]

#: The subfolder of the cache folder that holds the embedding segments.
FOLDER = "_embeddings"
_TEMP_PREFIX, _TEMP_SUFFIX = ".tmp-", ".part"  # as the answer cache: ignored by every reader


class Found:
    """What a lookup found: for each row, the position of its vector in ``vectors``, or -1.

    When every row was found in a few long runs of the segments (a re-run of what one
    run wrote: its replies are stored in blocks, in row order), ``aligned`` holds the
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


def _halves(keys: bytes | pa.Buffer, n: int | None = None) -> np.ndarray:
    """16-byte keys, concatenated, as an (n, 2) uint64 array (no copy)."""
    return np.frombuffer(keys, dtype="<u8", count=-1 if n is None else 2 * n).reshape(-1, 2)


def _table(keys: bytes, model: str, vectors: np.ndarray) -> pa.Table:
    n, dims = vectors.shape
    raw = np.ascontiguousarray(vectors, dtype="<f4")
    return pa.table({
        "key": pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(keys)]),
        "model": pa.array([model] * n, pa.string()),
        "dims": pa.array(np.full(n, dims, dtype=np.int32)),
        "vector": pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * dims), n, [None, pa.py_buffer(raw)]),
        "created": pa.array(np.full(n, int(datetime.now(timezone.utc).timestamp() * 1e6), dtype="int64"),
                            pa.timestamp("us", tz="UTC")),
    })  # fmt: skip


def write_vectors(folder: Path, table: pa.Table) -> str:
    """Write ``table`` as a new segment, atomically; return its file name."""
    name = f"seg-{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
    temp = folder / f"{_TEMP_PREFIX}{name}{_TEMP_SUFFIX}"
    try:
        with open(temp, "wb") as sink:
            pq.write_table(table, sink, compression={"key": "none", "model": "zstd", "dims": "zstd",
                                                     "vector": "none", "created": "zstd"},
                           use_dictionary=["model"], write_statistics=["dims", "created"])  # fmt: skip
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temp, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return name


def _read(folder: Path, name: str) -> pa.Table | None:
    path = folder / name
    try:
        return pq.read_table(path, columns=["key", "vector"], memory_map=True)
    except Exception as exc:
        if path.exists():
            warn_corrupt(path, exc)
        return None


#: Most slices a fully cached lookup returns instead of copying: one per reply is typical.
_MAX_RUNS = 4096


def _as_lists(chunk: pa.Array, dims: int) -> pa.FixedSizeListArray:
    """A ``fixed_size_binary(4 * dims)`` array as ``fixed_size_list<float32>[dims]``, no copy."""
    values = pa.Array.from_buffers(pa.float32(), (chunk.offset + len(chunk)) * dims, [None, chunk.buffers()[1]])
    return pa.FixedSizeListArray.from_arrays(values, dims).slice(chunk.offset, len(chunk))


def _runs(vectors: pa.ChunkedArray, rows: np.ndarray, dims: int) -> pa.ChunkedArray | None:
    """The vectors at ``rows`` as slices of ``vectors``' chunks, when they form at most
    :data:`_MAX_RUNS` runs of consecutive positions; else None (copy them instead)."""
    starts = np.cumsum([0] + [len(c) for c in vectors.chunks])
    cuts = np.union1d(np.flatnonzero(np.diff(rows) != 1) + 1, np.flatnonzero(np.isin(rows, starts[1:-1])))
    if len(cuts) >= _MAX_RUNS or not len(rows) or vectors.null_count:
        return None
    pieces = []
    chunks = [_as_lists(c, dims) for c in vectors.chunks]
    for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(rows)], strict=True):
        first = int(rows[lo])
        index = int(np.searchsorted(starts, first, side="right")) - 1
        pieces.append(chunks[index].slice(first - int(starts[index]), hi - lo))
    return pa.chunked_array(pieces, pa.list_(pa.float32(), dims))


def _gather(vectors: pa.ChunkedArray, rows: np.ndarray, dims: int) -> np.ndarray:
    """The float32 vectors at ``rows`` of a column of ``fixed_size_binary(4 * dims)`` chunks."""
    out = np.empty((len(rows), dims), dtype=np.float32)
    start = 0
    for chunk in vectors.chunks:
        end = start + len(chunk)
        if len(chunk):
            view = np.frombuffer(chunk.buffers()[1], dtype="<f4", count=(chunk.offset + len(chunk)) * dims)
            view = view.reshape(-1, dims)[chunk.offset :]
            inside = (rows >= start) & (rows < end)
            if inside.all():
                out[:] = view[rows - start]
            elif inside.any():
                out[inside] = view[rows[inside] - start]
        start = end
    return out


class EmbeddingCache:
    """The vectors of one cache folder: bulk lookups, and writes buffered for ``flush_seconds``.

    ``add`` buffers one reply's vectors; a segment is written once ``flush_seconds``
    have passed since the last write (checked on each ``add`` and ``flush_if_due``)
    and on ``close``, so a crash loses at most that much. Example::

        cache = EmbeddingCache(tmp_path / "cache")
        cache.add(keys, "text-embedding-3-small", vectors)   # keys: 16 bytes a row
        cache.close()
        found = cache.lookup(keys)          # found.vectors[found.positions]
    """

    __slots__ = ("_buffer", "_clock", "_flush_seconds", "_last_write", "_lock", "folder")

    def __init__(self, cache_dir: str | os.PathLike[str], *, flush_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.folder = Path(cache_dir).expanduser() / FOLDER  # made at the first write: lookups write nothing
        self._flush_seconds = flush_seconds
        self._clock = clock
        self._last_write = clock()
        self._lock = threading.Lock()
        self._buffer: list[pa.Table] = []

    def lookup(self, keys: bytes, dims: int | None = None) -> Found:
        """The cached vector of each key (16 bytes a row, concatenated); ``dims``, when
        known, skips segments of other lengths. Raises :class:`CacheError` when the
        vectors found differ in length (the model changed them: clear the folder)."""
        wanted = _halves(keys)
        positions = np.full(len(wanted), -1, dtype=np.int64)
        tables = [t for t in (_read(self.folder, name) for name in list_segments(self.folder)) if t is not None]
        with self._lock:
            tables.extend(t.select(["key", "vector"]) for t in self._buffer)
        widths = {t.schema.field("vector").type.byte_width for t in tables if t.num_rows}
        if dims is not None:
            widths &= {4 * dims}
        found: Found | None = None
        for width in sorted(widths):
            group = pa.concat_tables([t for t in tables if t.schema.field("vector").type.byte_width == width])
            stored_keys = group.column("key").combine_chunks()
            stored = _halves(stored_keys.buffers()[1], len(stored_keys))
            order = np.argsort(stored[:, 0], kind="stable")
            sorted_hi = stored[order, 0]
            at = np.minimum(np.searchsorted(sorted_hi, wanted[:, 0]), max(len(order) - 1, 0))
            candidate = order[at]
            hit = (stored[candidate, 0] == wanted[:, 0]) & (stored[candidate, 1] == wanted[:, 1])
            if not hit.any():
                continue
            if found is not None:
                raise CacheError(f"cached vectors for these texts have {sorted(widths)} bytes: the model's "
                                 f"vectors changed length; clear {self.folder}")  # fmt: skip
            rows = candidate[hit]
            positions[hit] = np.arange(len(rows))
            dims = width // 4
            aligned = _runs(group.column("vector"), rows, dims) if hit.all() else None
            if aligned is not None:
                found = Found(positions, np.zeros((0, dims), np.float32), aligned)
            else:  # only the rows found are copied out, chunk by chunk: one copy of what the run uses
                found = Found(positions, _gather(group.column("vector"), rows, dims))
        return found if found is not None else Found(positions, np.zeros((0, 0), np.float32))

    def add(self, keys: bytes, model: str, vectors: np.ndarray) -> None:
        """Buffer one reply's vectors (``keys``: 16 bytes a row, in the rows' order)."""
        table = _table(keys, model, vectors)
        with self._lock:
            self._buffer.append(table)
        self.flush_if_due()

    def flush_if_due(self) -> None:
        if self._clock() - self._last_write >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered, one segment per vector length."""
        with self._lock:
            buffer, self._buffer = self._buffer, []
            self._last_write = self._clock()
        widths = sorted({t.schema.field("vector").type.byte_width for t in buffer})
        if widths:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CacheError(f"cannot create the embedding cache folder {self.folder}: {exc}") from exc
        for width in widths:
            table = pa.concat_tables([t for t in buffer if t.schema.field("vector").type.byte_width == width])
            try:
                write_vectors(self.folder, table)
            except Exception as exc:
                raise CacheError(f"cannot write to the embedding cache folder {self.folder}: {exc}") from exc

    def close(self) -> None:
        self.flush()


def read_embeddings(cache_dir: str | os.PathLike[str] | None = None, *, dims: int | None = None) -> pa.Table:
    """Every cached vector of a cache folder, with ``vector`` as ``fixed_size_list<float32>``.

    A folder holding vectors of several lengths (two ``dimensions=`` settings) cannot be one
    table of that type: pass ``dims=`` to read those of one length.

    >>> llmframe.read_embeddings(cache_dir=".cache", dims=256)   # doctest: +SKIP
    """
    from ._cache_admin import default_cache_dir

    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser() / FOLDER
    tables = [t for t in (_read_all(folder, n) for n in list_segments(folder)) if t is not None]
    if dims is not None:
        tables = [t for t in tables if t.schema.field("vector").type.byte_width == 4 * dims]
    widths = {t.schema.field("vector").type.byte_width for t in tables}
    if len(widths) > 1:
        raise CacheError(f"{folder} holds vectors of several lengths ({sorted(w // 4 for w in widths)}); "
                         "pass dims= to read one of them")  # fmt: skip
    if not tables:
        return pa.table({"key": pa.array([], pa.binary(16)), "model": pa.array([], pa.string()),
                         "dims": pa.array([], pa.int32()), "vector": pa.array([], pa.list_(pa.float32(), 1)),
                         "created": pa.array([], pa.timestamp("us", tz="UTC"))})  # fmt: skip
    table = pa.concat_tables(tables)
    raw = table.column("vector").combine_chunks()
    width = raw.type.byte_width
    values = pa.Array.from_buffers(pa.float32(), len(raw) * (width // 4), [None, raw.buffers()[1]])
    return table.set_column(3, "vector", pa.FixedSizeListArray.from_arrays(values, width // 4))


def _read_all(folder: Path, name: str) -> pa.Table | None:
    try:
        return pq.read_table(folder / name)
    except Exception as exc:
        warn_corrupt(folder / name, exc)
        return None
