"""The answer cache a run uses: parquet segments, fed by a log that every answer reaches
the moment it arrives.

:class:`AnswerCache` appends the records of each ``add`` (one reply's rows) to
its own answer log in the folder, so that a process killed at any instant loses
only the requests it had in flight, and folds the log into a new parquet
segment every ``flush_seconds`` and at close. Opening a folder folds the logs
that dead processes left. It looks the keys of a whole frame up at once, in the
segments, in every log (other processes' included) and in what it holds itself.
Its lookups write nothing; writing, and merging small segments, happen in
``add`` (the log), ``flush``, ``close`` and on opening (orphaned logs only).

The cache, module by module:

    _cache_schema     what a row holds: SCHEMA, CacheRecord, records -> Arrow
    _cache_segments   the folder of parquet files: list, read, write atomically, compact
    _cache_log        the answer logs: append per reply, read, torn tails, orphans folded
    _cache_index      the in-memory index: newest ok answer per key, found in bulk
    _cache_reader     CacheReader: lookups against a folder (segments and logs), never a write
    _cache            AnswerCache: the run's writer, with lookups through a reader
    _cache_admin      the user's tools: where the folder is, read, info, compact, clear
    _cache_fs         the folder as an fsspec URL: segments there, logs and claims here

Rows are :data:`~llmframe._cache_schema.SCHEMA`; pandas (``pd.read_parquet(folder)``),
polars (``pl.read_parquet(folder / "*.parquet")``) and DuckDB
(``read_parquet('folder/*.parquet')``) read the segments as they are, and pass
the logs by (``.log-*.arrows``); :func:`read_cache` reads both. Errors are
stored with ``status == "error"`` so a report can show them, and are never
served as answers: a lookup returns the newest ``"ok"`` answer per key. No API
key or request header is ever stored: the schema (of segments and logs alike)
has no column for one and :meth:`AnswerCache.add_columns` refuses columns
outside it.

The folder may be an fsspec URL (``AnswerCache("s3://bucket/llm-cache/",
options={...})``): the segments are written there, one PUT each, and the logs
stay in this machine's folder for that URL (:mod:`._cache_fs`).
"""

from __future__ import annotations

import contextlib
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

from ._cache_admin import cache_location, read_cache, resolve_cache_dir
from ._cache_fs import CacheLocation, is_url
from ._cache_index import release_memory
from ._cache_log import LOGS_SUPPORTED, AnswerLog, fold_orphans
from ._cache_reader import CacheReader
from ._cache_schema import (
    SCHEMA,
    CacheRecord,
    columns_to_table,
    records_to_table_skipping_bad,
    rows_to_table_skipping_bad,
)
from ._cache_segments import auto_compact_plan, compact
from ._cache_temps import remove_stale_temporaries
from ._errors import CacheError
from ._warn import warn_user

# CacheRecord, read_cache and resolve_cache_dir are imported from here by the engine
# and calibration, which see the cache through this module.
__all__ = ["AnswerCache", "CacheRecord", "read_cache", "resolve_cache_dir"]


class AnswerCache:
    """A folder of cached answers, shared safely by threads and processes: what a run uses.

    ``add`` appends its records to this cache's answer log (one write, handed to
    the OS before ``add`` returns) and keeps them in memory; a segment is written
    from memory once ``flush_seconds`` have passed since the last write (checked
    on every ``add`` and ``flush_if_due``), on ``flush`` and on ``close``, and the
    log it came from is then deleted. A write that leaves more than
    :data:`~llmframe._cache_segments.AUTO_COMPACT_SEGMENTS` segments compacts the
    small ones. Opening the folder folds the logs of processes that died. ``lookup``
    finds what is in the folder (segments and every log) and what this cache holds,
    writes nothing, and keeps nothing in memory once it returns: a run looks up
    once, then only writes. (:class:`~llmframe._cache_reader.CacheReader` keeps its
    index, for callers that look up again and again.) ``log_answers=False`` keeps
    records in memory only until the next segment, as bulk importers may prefer
    (and as on platforms without ``fcntl``, where there is no log).
    Example::

        with AnswerCache(tmp_path / "cache") as cache:
            cache.add([record])                    # in the log: a kill -9 now loses nothing
            cache.lookup([record.key, "0" * 32])   # -> ["positive", None], no segment yet
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
        "_log",
        "_log_answers",
        "_log_failed",
        "_reader",
        "_retired",
        "_write_lock",
        "_writing",
        "folder",
        "location",
    )

    def __init__(
        self,
        path: str | os.PathLike[str] | CacheLocation,
        *,
        flush_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        flush_rows: int = 250_000,
        log_answers: bool = True,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        # A folder as before; a URL opened with ``options`` (fsspec's storage options).
        found = path if isinstance(path, CacheLocation) else cache_location(
            path if is_url(path) else Path(os.fspath(path)).expanduser(), options
        )
        assert found is not None
        self.location = location = found
        self.folder = location.logs  # the cache folder; for a URL, this machine's folder of its logs
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
        self._buffer: list[pa.Table] = []  # each add's records, as logged
        self._writing: list[pa.Table] = []  # taken by a flush, not in a segment yet
        self._buffered_rows = 0
        self._last_write = clock()
        self._closed = False
        self._log_answers = log_answers and LOGS_SUPPORTED
        self._log: AnswerLog | None = None  # created by the first add, replaced at each flush
        self._retired: list[AnswerLog] = []  # logs whose records are not in a segment yet
        self._log_failed = False  # a log write failed: memory only until a segment is written
        # Keeps no index, only the names of corrupt segments: each is warned about once.
        self._reader = CacheReader(location, keep_index=False)
        # Logs of processes that died. A folder that cannot take the fold (read-only)
        # keeps them: lookups read them as they are. And what died mid-write left.
        with contextlib.suppress(OSError):
            fold_orphans(self.folder, kind=location.log_format)
        remove_stale_temporaries(self.folder)

    def __repr__(self) -> str:
        return f"AnswerCache({self.location.name!r})"

    # ---- writing

    def add(self, records: Iterable[CacheRecord]) -> None:
        """Append records to the log (one write) and keep them for the next segment;
        write a segment if ``flush_seconds`` have passed since the last."""
        batch = list(records)
        self._add(records_to_table_skipping_bad(batch) if batch else None)

    def add_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """:meth:`add` for records given as tuples of their values in
        :data:`~llmframe._cache_schema.COLUMNS` order, ``created`` in microseconds since
        the epoch (:func:`~llmframe._cache_schema.micros`): how a run stores a reply's
        rows, with ``status`` ``"ok"`` or ``"error"`` as it made them."""
        self._add(rows_to_table_skipping_bad(rows) if rows else None)

    def _add(self, table: pa.Table | None) -> None:
        with self._lock:
            self._check_open()
            if table is not None and table.num_rows:
                self._keep(table)
            due = self._is_due()
        if due:
            self.flush()

    def add_columns(self, columns: Mapping[str, Any] | pa.Table) -> None:
        """Log and buffer many records given column-wise, for bulk writers (one write
        to the log, as for :meth:`add`).

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
                self._keep(table)
            due = self._is_due()
        if due:
            self.flush()

    def _keep(self, table: pa.Table) -> None:
        """Log ``table`` and buffer it for the next segment (``_lock`` held)."""
        self._buffer.append(table)
        self._buffered_rows += table.num_rows
        if not self._log_answers or self._log_failed:
            return
        try:
            if self._log is None:
                self._log = AnswerLog.create(self.folder)
            self._log.append(table)
        except OSError as exc:
            self._log_failed = True
            warn_user(
                f"llmframe cache: cannot append to an answer log in {self.folder} ({exc}); "
                "answers are kept in memory until the next segment is written, and a crash "
                "before then loses them.",
                RuntimeWarning,
            )

    def flush_if_due(self) -> None:
        """Write the buffer if ``flush_seconds`` have passed since the last write."""
        with self._lock:
            due = self._is_due()
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the buffered records as one segment now (nothing if the buffer is empty),
        then delete the logs they were in: a crash in between leaves duplicates, not a loss."""
        with self._write_lock:
            with self._lock:
                # Moved, not dropped: lookups find them in _writing until they are on disk.
                buffer = self._writing = self._buffer
                self._buffer = []
                self._buffered_rows = 0
                self._last_write = self._clock()
                if self._log is not None:  # later adds go to a new log
                    self._retired.append(self._log)
                    self._log = None
                retired = list(self._retired)
            # One chunk per column, as one table of records was before the log: a reply's
            # records are a chunk each.
            batches = [batch for chunk in buffer for batch in chunk.to_batches()]
            table = pa.Table.from_batches(batches, schema=SCHEMA).combine_chunks()
            try:
                if table.num_rows:
                    self.location.segments.write(table)
            except BaseException as exc:
                with self._lock:  # keep the records for the next attempt (close() in finally)
                    self._buffer.insert(0, table)
                    self._buffered_rows += table.num_rows
                    self._writing = []
                if isinstance(exc, Exception):
                    message = f"cannot write to the cache folder {self.location.name}: {exc}"
                    raise CacheError(message) from exc
                raise
            with self._lock:
                self._writing = []
                self._retired = [log for log in self._retired if log not in retired]
                if table.num_rows:
                    self._log_failed = False  # the folder takes writes again: so may the log
            for log in retired:
                with contextlib.suppress(OSError):
                    log.discard()
            if table.num_rows:
                self._auto_compact()
                del buffer, batches, table
                # Arrow's allocator keeps what the parquet writer and a merge freed (~17-30 MB
                # after a segment of ~16,000 records, measured): given back here, it does not
                # sit under every later peak of the run.
                release_memory()

    def close(self) -> None:
        """Write what is buffered. Safe to call twice; ``with AnswerCache(...)`` calls it."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            with self._lock:
                self._closed = True
                logs = [log for log in (*self._retired, self._log) if log is not None]
                self._retired, self._log = [], None
            for log in logs:  # unfolded (the flush failed): orphans the next open folds
                with contextlib.suppress(OSError):
                    log.close()

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
        sizes = self.location.segments.sizes()
        plan = auto_compact_plan({n: s for n, s in sizes.items() if n not in corrupt})
        if plan:
            corrupt.update(compact(self.location.segments, plan).corrupt)

    # ---- reading

    def lookup(self, keys: Sequence[str] | pl.Series) -> list[str | None]:
        """The cached answer for each key, in the order given (duplicates included),
        or ``None`` where there is no successful answer. Errors are never served.

        ``keys`` is any sequence of strings or a polars Series. Records added but
        not flushed yet are found too, without being written.

        >>> cache.lookup(["9f0c...", "0000..."])   # doctest: +SKIP
        ['positive', None]
        """
        unwritten, own = self._unwritten()
        return self._reader.lookup(keys, unwritten=unwritten, skip_logs=own)

    def lookup_binary(self, keys: bytes | bytearray | memoryview) -> pa.ChunkedArray:
        """:meth:`lookup` for keys in binary: 16 bytes each, concatenated
        (``bytes.fromhex(key)`` per key, as :func:`llmframe._keys.row_digests` gives
        them). Returns an Arrow ``string`` chunked array, null where there is no answer.

        How a re-run looks up a million rows without a million key strings::

            cache.lookup_binary(bytes.fromhex(key1 + key2)).to_pylist()  # ["positive", None]
        """
        unwritten, own = self._unwritten()
        return self._reader.lookup_binary(keys, unwritten=unwritten, skip_logs=own)

    def _unwritten(self) -> tuple[pa.Table | None, list[str]]:
        """The records not in a segment yet (buffered, or being written by a flush) as
        one table, for a lookup to find without writing them; and the names of this
        cache's logs, which hold the same records and need not be read."""
        with self._lock:
            chunks = [*self._writing, *self._buffer]
            own = [log.name for log in (*self._retired, self._log) if log is not None]
        if not chunks:
            return None, own
        return pa.concat_tables(chunks), own
