"""The embedding cache a run uses: vectors durable on arrival, in memory-mapped Arrow IPC segments.

Its own record kind beside the answer cache, under ``<cache folder>/_embeddings/``
(the schema and the files: :mod:`~llmframe._embed_segments`)::

    ~/.cache/llmframe/_embeddings/
        seg-1732896000123456789-4242-1f2e3d4c.arrow
        .log-4242-9a8b7c6d-build01.arrows       # a running (or killed) process's vectors

The same promises as the answer cache (``_cache``): :class:`EmbeddingCache`
appends each reply's vectors to its own log (``_cache_log``, one write per
reply, handed to the OS before ``add`` returns), so a process killed at any
instant loses only the requests it had in flight; it folds the log into a new
segment every ``flush_seconds`` and at close, and merges small segments once
there are many. Opening a folder folds the logs that dead processes left.
Lookups find the vectors of the segments, of every other process's log and of
this cache's buffer.

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
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from ._cache_admin import default_cache_dir
from ._cache_log import LOGS_SUPPORTED, AnswerLog, fold_orphans, log_tables
from ._cache_segments import auto_compact_plan
from ._cache_temps import remove_stale_temporaries
from ._embed_lookup import Found, find
from ._embed_segments import (
    FOLDER,
    VECTOR_LOGS,
    compact_vectors,
    dims_of,
    list_segments,
    read_segments,
    schema_of,
    vectors_table,
    write_vectors,
)
from ._errors import CacheError
from ._warn import warn_user

__all__ = ["FOLDER", "EmbeddingCache", "Found", "lookup_vectors", "read_embeddings"]

_LOOKUP_COLUMNS = ["key", "vector"]


def lookup_vectors(cache_dir: str | os.PathLike[str], keys: bytes, dims: int | None = None,
                   *, own: tuple[list[str], list[pa.Table]] = ([], [])) -> Found:  # fmt: skip
    """The cached vector of each key (16 bytes a row, concatenated) in the segments and the
    logs of ``cache_dir``'s embeddings; writes nothing. ``own``: the names of logs not to
    read and the tables that hold their rows (a writer's buffer)."""
    folder = Path(cache_dir).expanduser() / FOLDER
    # The logs before the segments: a log folded meanwhile is in a segment by then.
    logged = [t.select(_LOOKUP_COLUMNS) for t in log_tables(folder, own[0], VECTOR_LOGS)]
    tables = read_segments(folder, _LOOKUP_COLUMNS)
    return find([*tables, *logged, *(t.select(_LOOKUP_COLUMNS) for t in own[1])], keys, dims, folder)


class EmbeddingCache:
    """The vectors of one cache folder: bulk lookups, and writes logged on arrival.

    ``add`` appends one reply's vectors to this cache's log and buffers them; a
    segment is written from the buffer once ``flush_seconds`` have passed since the
    last write (checked on each ``add`` and ``flush_if_due``) and on ``close``, and
    the log is then deleted. ``log_vectors=False`` (and platforms without ``fcntl``)
    keep vectors in memory only until the next segment. Example::

        cache = EmbeddingCache(tmp_path / "cache")
        cache.add(keys, "text-embedding-3-small", vectors)   # keys: 16 bytes a row; logged
        cache.close()
        found = cache.lookup(keys)          # found.vectors[found.positions]
    """

    __slots__ = ("_buffer", "_clock", "_corrupt", "_flush_seconds", "_last_write", "_lock", "_log", "_log_dims",
                 "_log_failed", "_logging", "_retired", "_write_lock", "_writing", "cache_dir", "folder")  # fmt: skip

    def __init__(self, cache_dir: str | os.PathLike[str], *, flush_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, log_vectors: bool = True) -> None:  # fmt: skip
        self.cache_dir = Path(cache_dir).expanduser()
        self.folder = self.cache_dir / FOLDER  # made at the first write: lookups write nothing
        self._flush_seconds = flush_seconds
        self._clock = clock
        self._last_write = clock()
        self._lock = threading.Lock()  # the buffer and the logs
        self._write_lock = threading.Lock()  # one segment write or compaction at a time
        self._buffer: list[pa.Table] = []
        self._writing: list[pa.Table] = []  # taken by a flush, not in a segment yet
        self._logging = log_vectors and LOGS_SUPPORTED
        self._log: AnswerLog | None = None  # created by the first add, replaced at each flush
        self._log_dims = 0
        self._retired: list[AnswerLog] = []  # logs whose vectors are not in a segment yet
        self._log_failed = False
        self._corrupt: set[str] = set()  # segments compaction found unreadable: left out of the next
        if self.folder.is_dir():  # the logs of processes that died; a read-only folder keeps them
            with contextlib.suppress(OSError):
                fold_orphans(self.folder, kind=VECTOR_LOGS)
            remove_stale_temporaries(self.folder)

    def lookup(self, keys: bytes, dims: int | None = None) -> Found:
        """The cached vector of each key (16 bytes a row, concatenated); ``dims``, when
        known, skips segments of other lengths. Raises :class:`CacheError` when the
        vectors found differ in length (the model changed them: clear the folder)."""
        with self._lock:
            own = [log.name for log in (*self._retired, self._log) if log is not None]
            unwritten = [*self._writing, *self._buffer]
        return lookup_vectors(self.cache_dir, keys, dims, own=(own, unwritten))

    def add(self, keys: bytes, model: str, vectors: np.ndarray) -> None:
        """Log and buffer one reply's vectors (``keys``: 16 bytes a row, in the rows' order)."""
        table = vectors_table(keys, model, vectors)
        with self._lock:
            self._buffer.append(table)
            self._append_to_log(table)
        self.flush_if_due()

    def _append_to_log(self, table: pa.Table) -> None:
        """One write to this cache's log for the vectors' length (``_lock`` held)."""
        if not self._logging or self._log_failed:
            return
        try:
            dims = dims_of(table)
            if self._log is not None and self._log_dims != dims:
                self._retired.append(self._log)  # a log holds one length
                self._log = None
            if self._log is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._log, self._log_dims = AnswerLog.create(self.folder, schema_of(dims)), dims
            self._log.append(table)
        except OSError as exc:
            self._log_failed = True
            warn_user(f"llmframe cache: cannot append to an embedding log in {self.folder} ({exc}); "
                      "vectors are kept in memory until the next segment is written, and a crash "
                      "before then loses them.", RuntimeWarning)  # fmt: skip

    def flush_if_due(self) -> None:
        if self._clock() - self._last_write >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered, one segment per vector length, then delete the logs it
        was in (a crash in between leaves duplicates, not a loss); compact if due."""
        with self._write_lock:
            with self._lock:
                buffer = self._writing = self._buffer  # lookups find them here until written
                self._buffer = []
                self._last_write = self._clock()
                if self._log is not None:  # later adds go to a new log
                    self._retired.append(self._log)
                    self._log = None
                retired = list(self._retired)
            try:
                self._write(buffer)
            except BaseException:
                with self._lock:  # kept for the next attempt (close() in a finally)
                    self._buffer[:0] = buffer
                    self._writing = []
                raise
            with self._lock:
                self._writing = []
                self._retired = [log for log in self._retired if log not in retired]
                self._log_failed = self._log_failed and not buffer
            for log in retired:
                with contextlib.suppress(OSError):
                    log.discard()
            if buffer:
                self._auto_compact()

    def _write(self, buffer: list[pa.Table]) -> None:
        lengths = sorted({dims_of(t) for t in buffer})
        try:
            if lengths:
                self.folder.mkdir(parents=True, exist_ok=True)
            for length in lengths:
                write_vectors(self.folder, pa.concat_tables([t for t in buffer if dims_of(t) == length]))
        except Exception as exc:
            raise CacheError(f"cannot write to the embedding cache folder {self.folder}: {exc}") from exc

    def _auto_compact(self) -> None:
        """Merge the small segments once there are too many (``_write_lock`` held): a long
        run writes one every ``flush_seconds``."""
        sizes = list_segments(self.folder)
        plan = auto_compact_plan({name: size for name, size in sizes.items() if name not in self._corrupt})
        if plan:
            with contextlib.suppress(OSError):  # the segments stay as they are; tried again next flush
                self._corrupt.update(compact_vectors(self.folder, plan).corrupt)

    def close(self) -> None:
        """Write what is buffered. If that fails, the logs are let go of, unfolded: orphans
        that the next cache to open the folder folds."""
        try:
            self.flush()
        finally:
            with self._lock:
                logs = [log for log in (*self._retired, self._log) if log is not None]
                self._retired, self._log = [], None
            for log in logs:
                with contextlib.suppress(OSError):
                    log.close()


def read_embeddings(cache_dir: str | os.PathLike[str] | None = None, *, dims: int | None = None) -> pa.Table:
    """Every cached vector of a cache folder, with ``vector`` as ``fixed_size_list<float32>``:
    the segments', then those of the logs not folded into a segment yet.

    A folder holding vectors of several lengths (two ``dimensions=`` settings) cannot be one
    table of that type: pass ``dims=`` to read those of one length.

    >>> llmframe.read_embeddings(cache_dir=".cache", dims=256)   # doctest: +SKIP
    """
    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser() / FOLDER
    logged = log_tables(folder, kind=VECTOR_LOGS)
    tables = [*read_segments(folder), *logged]
    if dims is not None:
        tables = [t for t in tables if dims_of(t) == dims]
    lengths = {dims_of(t) for t in tables}
    if len(lengths) > 1:
        raise CacheError(f"{folder} holds vectors of several lengths ({sorted(lengths)}); "
                         "pass dims= to read one of them")  # fmt: skip
    if not tables:
        return schema_of(1).empty_table()
    return pa.concat_tables(tables)
