"""The embedding cache: vectors in Arrow IPC segments under ``<cache folder>/_embeddings/``.

Its own record kind beside the answer cache, one row per vector::

    key      fixed_size_binary(16)          blake2b-128 of (model, dimensions) and the text
    model    string
    dims     int32                          the vector's length
    vector   fixed_size_list<float32>[dims]
    created  timestamp[us, UTC]

Segments are Arrow IPC files (Feather v2, uncompressed), not parquet as the
answer cache's are: parquet writes a repetition and a definition level for
every float of a list and decodes every page on reading, which made a million
256-float vectors (1 GB) take longer to read than the answer cache's whole
cached re-run (measured with pyarrow 26: 2-3 s against 3.4 s). An IPC file is
memory-mapped and its vectors are used where they lie: a fully cached re-run
reads keys, not vectors, and its output column is slices of the mapped files.
pandas (``pd.read_feather``), polars (``pl.read_ipc``), pyarrow and DuckDB's
arrow reader read them as they are; :func:`read_embeddings` reads the folder.
The folder's name starts with ``_``, so dataset discovery of the answer cache
(``pd.read_parquet(folder)``) skips it.

Segments are written as the answer cache's are: a new uniquely named file,
written to a temporary name and ``os.replace``-d into place, never changed
afterwards (so a mapping stays valid), so several processes may fill one folder
at once and a reader sees whole files only. A lookup reads every segment's
keys as two uint64 halves, sorted once, and finds a whole run's keys by binary
search: no per-row Python object on a cached re-run.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from ._cache_admin import default_cache_dir
from ._cache_segments import warn_corrupt
from ._errors import CacheError

__all__ = ["FOLDER", "EmbeddingCache", "Found", "read_embeddings"]

#: The subfolder of the cache folder that holds the embedding segments.
FOLDER = "_embeddings"
_TEMP_PREFIX, _TEMP_SUFFIX = ".tmp-", ".part"  # as the answer cache: ignored by every reader
SEGMENT_NAME = re.compile(r"seg-\d+-\d+-[0-9a-f]{8}\.arrow")


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
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(raw.reshape(-1)), dims),
        "created": pa.array(np.full(n, int(datetime.now(timezone.utc).timestamp() * 1e6), dtype="int64"),
                            pa.timestamp("us", tz="UTC")),
    })  # fmt: skip


def list_segments(folder: Path) -> list[str]:
    """The segment names of ``folder``, oldest first (the name starts with time_ns)."""
    try:
        return sorted(e.name for e in os.scandir(folder) if SEGMENT_NAME.fullmatch(e.name))
    except FileNotFoundError:
        return []


def write_vectors(folder: Path, table: pa.Table) -> str:
    """Write ``table`` as a new segment, atomically; return its file name."""
    name = f"seg-{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.arrow"
    temp = folder / f"{_TEMP_PREFIX}{name}{_TEMP_SUFFIX}"
    try:
        with open(temp, "wb") as sink:
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table, max_chunksize=1 << 20)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temp, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return name


def _read(folder: Path, name: str, columns: list[str] | None = None) -> pa.Table | None:
    """A segment, memory-mapped (no copy); None, with a warning, if it is unreadable."""
    path = folder / name
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        return table if columns is None else table.select(columns)
    except Exception as exc:
        if path.exists():
            warn_corrupt(path, exc)
        return None


def _dims(table: pa.Table) -> int:
    return int(table.schema.field("vector").type.list_size)


#: Most slices a fully cached lookup returns instead of copying: one per reply is typical.
_MAX_RUNS = 4096


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
        names = list_segments(self.folder)
        tables = [t for t in (_read(self.folder, name, ["key", "vector"]) for name in names) if t is not None]
        with self._lock:
            tables.extend(t.select(["key", "vector"]) for t in self._buffer)
        lengths = {_dims(t) for t in tables if t.num_rows}
        if dims is not None:
            lengths &= {dims}
        found: Found | None = None
        for length in sorted(lengths):
            group = pa.concat_tables([t for t in tables if _dims(t) == length])
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
                raise CacheError(f"cached vectors for these texts have {sorted(lengths)} values: the model's "
                                 f"vectors changed length; clear {self.folder}")  # fmt: skip
            rows = candidate[hit]
            positions[hit] = np.arange(len(rows))
            aligned = _runs(group.column("vector"), rows) if hit.all() else None
            if aligned is not None:
                found = Found(positions, np.zeros((0, length), np.float32), aligned)
            else:  # only the rows found are copied out, chunk by chunk: one copy of what the run uses
                found = Found(positions, _gather(group.column("vector"), rows, length))
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
        lengths = sorted({_dims(t) for t in buffer})
        if lengths:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CacheError(f"cannot create the embedding cache folder {self.folder}: {exc}") from exc
        for length in lengths:
            table = pa.concat_tables([t for t in buffer if _dims(t) == length])
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
    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser() / FOLDER
    tables = [t for t in (_read(folder, n) for n in list_segments(folder)) if t is not None]
    if dims is not None:
        tables = [t for t in tables if _dims(t) == dims]
    lengths = {_dims(t) for t in tables}
    if len(lengths) > 1:
        raise CacheError(f"{folder} holds vectors of several lengths ({sorted(lengths)}); "
                         "pass dims= to read one of them")  # fmt: skip
    if not tables:
        return pa.table({"key": pa.array([], pa.binary(16)), "model": pa.array([], pa.string()),
                         "dims": pa.array([], pa.int32()), "vector": pa.array([], pa.list_(pa.float32(), 1)),
                         "created": pa.array([], pa.timestamp("us", tz="UTC"))})  # fmt: skip
    return pa.concat_tables(tables)
