"""The answer cache a run uses: one parquet dataset, one row per answer.

:class:`AnswerCache` buffers the records a run finishes and writes them as a new
segment every ``flush_seconds`` (a crash loses at most the records buffered
since the last flush), and looks the keys of a whole frame up at once. Its
lookups write nothing, so reading a cache (an estimate, a fully cached re-run)
never changes the folder; writing, and merging small segments, happen only in
``flush`` and ``close``.

The cache, module by module:

    _cache_schema     what a row holds: SCHEMA, CacheRecord, records -> Arrow
    _cache_segments   the folder of parquet files: list, read, write atomically, compact
    _cache_index      the in-memory index: newest ok answer per key, found in bulk
    _cache_reader     CacheReader: lookups against a folder, never a write
    _cache            AnswerCache: the run's writer, with lookups through a reader
    _cache_admin      the user's tools: where the folder is, read, info, compact, clear

Rows are :data:`~llmframe._cache_schema.SCHEMA`; pandas (``pd.read_parquet(folder)``),
polars (``pl.read_parquet(folder / "*.parquet")``) and DuckDB
(``read_parquet('folder/*.parquet')``) read the folder as it is. Errors are
stored with ``status == "error"`` so a report can show them, and are never
served as answers: a lookup returns the newest ``"ok"`` answer per key. No API
key or request header is ever stored: the schema has no column for one and
:meth:`AnswerCache.add_columns` refuses columns outside it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import polars as pl
import pyarrow as pa

from ._cache_admin import read_cache, resolve_cache_dir
from ._cache_reader import CacheReader
from ._cache_schema import CacheRecord, columns_to_table, records_to_table_skipping_bad
from ._cache_segments import auto_compact_plan, compact, list_segments, write_segment
from ._errors import CacheError

# CacheRecord, read_cache and resolve_cache_dir are imported from here by the engine
# and calibration, which see the cache through this module.
__all__ = ["AnswerCache", "CacheRecord", "read_cache", "resolve_cache_dir"]


class AnswerCache:
    """A folder of cached answers, shared safely by threads and processes: what a run uses.

    ``add`` buffers records; a segment is written once ``flush_seconds`` have
    passed since the last write (checked on every ``add`` and ``flush_if_due``),
    on ``flush`` and on ``close``; a write that leaves more than
    :data:`~llmframe._cache_segments.AUTO_COMPACT_SEGMENTS` segments compacts the
    small ones. ``lookup`` finds what is in the folder and what this cache still
    buffers, writes nothing, and keeps nothing in memory once it returns: a run
    looks up once, then only writes. (:class:`~llmframe._cache_reader.CacheReader`
    keeps its index, for callers that look up again and again.) Example::

        with AnswerCache(tmp_path / "cache") as cache:
            cache.add([record])
            cache.lookup([record.key, "0" * 32])   # -> ["positive", None], nothing written yet
    """

    __slots__ = (
        "_buffer",
        "_buffered_rows",
        "_clock",
        "_closed",
        "_flush_rows",
        "_flush_seconds",
        "_last_write",
        "_lock",
        "_reader",
        "_write_lock",
        "_writing",
        "folder",
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        flush_rows: int = 250_000,
    ) -> None:
        self.folder = Path(os.fspath(path)).expanduser()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create the cache folder {self.folder}: {exc}") from exc
        if not self.folder.is_dir():
            raise CacheError(f"the cache path {self.folder} is not a folder")
        self._flush_seconds = flush_seconds
        # Bounds memory for bulk writers: a segment per this many buffered rows.
        self._flush_rows = flush_rows
        self._clock = clock
        self._lock = threading.Lock()  # the buffer
        self._write_lock = threading.Lock()  # one segment write or compaction at a time
        self._buffer: list[list[CacheRecord] | pa.Table] = []
        self._writing: list[list[CacheRecord] | pa.Table] = []  # taken by a flush, not on disk yet
        self._buffered_rows = 0
        self._last_write = clock()
        self._closed = False
        # Keeps no index, only the names of corrupt segments: each is warned about once.
        self._reader = CacheReader(self.folder, keep_index=False)

    def __repr__(self) -> str:
        return f"AnswerCache({str(self.folder)!r})"

    # ---- writing

    def add(self, records: Iterable[CacheRecord]) -> None:
        """Buffer records; write a segment if ``flush_seconds`` have passed since the last."""
        batch = list(records)
        with self._lock:
            self._check_open()
            if batch:
                last = self._buffer[-1] if self._buffer else None
                if isinstance(last, list):
                    last.extend(batch)
                else:
                    self._buffer.append(batch)
                self._buffered_rows += len(batch)
            due = self._is_due()
        if due:
            self.flush()

    def add_columns(self, columns: Mapping[str, Any] | pa.Table) -> None:
        """Buffer many records given column-wise, for bulk writers.

        ``columns`` maps column names of :data:`~llmframe._cache_schema.SCHEMA` to
        equally long sequences (lists, numpy arrays, pyarrow arrays, polars or pandas
        Series), or is a pyarrow table. ``key``, ``model``, ``template_hash`` and ``status`` are
        required; missing token counts are 0, a missing ``created`` is now, other
        missing columns are null. Any other column name is refused. Example::

            cache.add_columns({"key": keys, "model": ["gpt-4o-mini"] * len(keys),
                               "template_hash": [h] * len(keys), "status": ["ok"] * len(keys),
                               "answer": answers})
        """
        if isinstance(columns, pa.Table):
            columns = {name: columns.column(name) for name in columns.column_names}
        table = columns_to_table(columns, datetime.now(timezone.utc))
        with self._lock:
            self._check_open()
            if table.num_rows:
                self._buffer.append(table)
                self._buffered_rows += table.num_rows
            due = self._is_due()
        if due:
            self.flush()

    def flush_if_due(self) -> None:
        """Write the buffer if ``flush_seconds`` have passed since the last write."""
        with self._lock:
            due = self._is_due()
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the buffered records as one segment now (nothing if the buffer is empty)."""
        with self._write_lock:
            with self._lock:
                # Moved, not dropped: lookups find them in _writing until they are on disk.
                buffer = self._writing = self._buffer
                self._buffer = []
                self._buffered_rows = 0
                self._last_write = self._clock()
            if not buffer:
                return
            table = pa.concat_tables([_table_of(chunk) for chunk in buffer])
            try:
                if table.num_rows:
                    write_segment(self.folder, table)
            except BaseException as exc:
                with self._lock:  # keep the records for the next attempt (close() in finally)
                    self._buffer.insert(0, table)
                    self._buffered_rows += table.num_rows
                    self._writing = []
                if isinstance(exc, Exception):
                    message = f"cannot write to the cache folder {self.folder}: {exc}"
                    raise CacheError(message) from exc
                raise
            with self._lock:
                self._writing = []
            if table.num_rows:
                self._auto_compact()

    def close(self) -> None:
        """Write what is buffered. Safe to call twice; ``with AnswerCache(...)`` calls it."""
        if self._closed:
            return
        self.flush()
        with self._lock:
            self._closed = True

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _is_due(self) -> bool:
        return bool(self._buffered_rows) and (
            self._buffered_rows >= self._flush_rows
            or self._clock() - self._last_write >= self._flush_seconds
        )

    def _check_open(self) -> None:
        if self._closed:
            raise CacheError(f"{self!r} is closed")

    def _auto_compact(self) -> None:
        """Merge the small segments once there are too many (``_write_lock`` held)."""
        corrupt = self._reader.corrupt
        sizes = list_segments(self.folder)
        plan = auto_compact_plan({n: s for n, s in sizes.items() if n not in corrupt})
        if plan:
            corrupt.update(compact(self.folder, plan).corrupt)

    # ---- reading

    def lookup(self, keys: Sequence[str] | pl.Series) -> list[str | None]:
        """The cached answer for each key, in the order given (duplicates included),
        or ``None`` where there is no successful answer. Errors are never served.

        ``keys`` is any sequence of strings or a polars Series. Records added but
        not flushed yet are found too, without being written.

        >>> cache.lookup(["9f0c...", "0000..."])   # doctest: +SKIP
        ['positive', None]
        """
        return self._reader.lookup(keys, unwritten=self._unwritten())

    def lookup_binary(self, keys: bytes | bytearray | memoryview) -> pa.ChunkedArray:
        """:meth:`lookup` for keys in binary: 16 bytes each, concatenated
        (``bytes.fromhex(key)`` per key, as :func:`llmframe._keys.row_digests` gives
        them). Returns an Arrow ``string`` chunked array, null where there is no answer.

        How a re-run looks up a million rows without a million key strings::

            cache.lookup_binary(bytes.fromhex(key1 + key2)).to_pylist()  # ["positive", None]
        """
        return self._reader.lookup_binary(keys, unwritten=self._unwritten())

    def _unwritten(self) -> pa.Table | None:
        """The records not on disk yet (buffered, or being written by a flush) as one
        table, for a lookup to find without writing them."""
        with self._lock:
            # Converted here once: the flush writes these tables and warns about a bad record once.
            self._buffer = [_table_of(chunk) for chunk in self._buffer]
            chunks = [*self._writing, *self._buffer]
        if not chunks:
            return None
        return pa.concat_tables([_table_of(chunk) for chunk in chunks])


def _table_of(chunk: list[CacheRecord] | pa.Table) -> pa.Table:
    return records_to_table_skipping_bad(chunk) if isinstance(chunk, list) else chunk
