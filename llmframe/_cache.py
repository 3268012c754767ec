"""The answer cache a run uses: one parquet dataset, one row per answer.

:class:`AnswerCache` buffers the records a run finishes and writes them as a new
segment every ``flush_seconds`` (a crash loses at most the records buffered
since the last flush), and looks the keys of a whole frame up at once.

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
from ._cache_index import KeyIndex, ok_rows_of, read_ok_rows, release_memory
from ._cache_schema import CacheRecord, columns_to_table, records_to_table_skipping_bad
from ._cache_segments import auto_compact_plan, compact, list_segments, write_segment
from ._errors import CacheError

# CacheRecord, read_cache and resolve_cache_dir are imported from here by the engine
# and calibration, which see the cache through this module.
__all__ = ["AnswerCache", "CacheRecord", "read_cache", "resolve_cache_dir"]


class AnswerCache:
    """A folder of cached answers, shared safely by threads and processes.

    ``add`` buffers records; a segment is written once ``flush_seconds`` have
    passed since the last write (checked on every ``add`` and ``flush_if_due``),
    on ``flush`` and on ``close``. ``lookup`` reads each segment once per
    ``AnswerCache`` and keeps the newest answer per key in memory; later
    lookups read only segments it has not seen yet. Example::

        with AnswerCache(tmp_path / "cache") as cache:
            cache.add([record])
            cache.flush()
            cache.lookup([record.key, "0" * 32])   # -> ["positive", None]
    """

    __slots__ = (
        "_buffer",
        "_buffered_rows",
        "_clock",
        "_closed",
        "_corrupt",
        "_flush_rows",
        "_flush_seconds",
        "_index",
        "_index_lock",
        "_last_write",
        "_lock",
        "_seen",
        "_write_lock",
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
        self._index_lock = threading.Lock()  # the in-memory index
        self._buffer: list[list[CacheRecord] | pa.Table] = []
        self._buffered_rows = 0
        self._last_write = clock()
        self._closed = False
        # Newest ok answer per key; None until the first lookup.
        self._index: KeyIndex | None = None
        self._seen: set[str] = set()  # segments folded into the index
        self._corrupt: set[str] = set()  # warned about once; never read again

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

        ``columns`` maps column names of :data:`SCHEMA` to equally long sequences
        (lists, numpy arrays, pyarrow arrays, polars or pandas Series), or is a
        pyarrow table. ``key``, ``model``, ``template_hash`` and ``status`` are
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
                buffer, self._buffer = self._buffer, []
                self._buffered_rows = 0
                self._last_write = self._clock()
            if not buffer:
                return
            tables = [
                records_to_table_skipping_bad(chunk) if isinstance(chunk, list) else chunk
                for chunk in buffer
            ]
            table = pa.concat_tables(tables)
            if not table.num_rows:
                return
            try:
                write_segment(self.folder, table)
            except BaseException as exc:
                with self._lock:  # keep the records for the next attempt (close() in finally)
                    self._buffer.insert(0, table)
                    self._buffered_rows += table.num_rows
                if isinstance(exc, Exception):
                    message = f"cannot write to the cache folder {self.folder}: {exc}"
                    raise CacheError(message) from exc
                raise
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

    # ---- reading

    def lookup(self, keys: Sequence[str] | pl.Series) -> list[str | None]:
        """The cached answer for each key, in the order given (duplicates included),
        or ``None`` where there is no successful answer. Errors are never served.

        ``keys`` is any sequence of strings or a polars Series.

        >>> cache.lookup(["9f0c...", "0000..."])   # doctest: +SKIP
        ['positive', None]
        """
        index = self._current_index()
        if len(keys) == 0:
            return []
        return index.answers_text(keys)

    def lookup_binary(self, keys: bytes | bytearray | memoryview) -> pa.ChunkedArray:
        """:meth:`lookup` for keys in binary: 16 bytes each, concatenated
        (``bytes.fromhex(key)`` per key, as :func:`llmframe._keys.row_digests` gives
        them). Returns an Arrow ``string`` chunked array, null where there is no answer.

        How a re-run looks up a million rows without a million key strings::

            cache.lookup_binary(bytes.fromhex(key1 + key2)).to_pylist()  # ["positive", None]
        """
        if len(keys) % 16:
            raise ValueError(f"lookup_binary: keys are 16 bytes each, got {len(keys)} bytes")
        return self._current_index().answers_binary(keys)

    def drop_index(self) -> None:
        """Free the answers held in memory since the last lookup; the next lookup reads
        the folder again. For callers that look up once, then only write (a run)."""
        with self._index_lock:
            self._index = None
            self._seen.clear()
        release_memory()

    def _current_index(self) -> KeyIndex:
        self.flush()  # what this process added is found by this process
        with self._index_lock:
            self._refresh()
            assert self._index is not None
            return self._index

    def _refresh(self) -> None:
        """Fold segments not seen before into the index (``_index_lock`` held)."""
        if self._index is None:
            self._index = KeyIndex()
        sizes = list_segments(self.folder)
        plan = auto_compact_plan({n: s for n, s in sizes.items() if n not in self._corrupt})
        if plan:
            self._compact_into_index(plan)
            sizes = list_segments(self.folder)
        new = [n for n in sizes if n not in self._seen and n not in self._corrupt]
        if not new and not self._seen.issubset(sizes):
            # Segments vanished and no compaction wrote their records elsewhere:
            # someone cleared the cache. Forget those answers too.
            self._index = KeyIndex()
            self._seen.clear()
            return
        self._seen.intersection_update(sizes)  # forget what was compacted away
        if not new:
            return
        rows, read, corrupt = read_ok_rows(self.folder, new)
        self._corrupt.update(corrupt)
        self._index = self._index.folded(rows)
        self._seen.update(read)
        del rows
        release_memory()

    def _fold(self, rows: pl.DataFrame) -> None:
        if rows.height == 0 or self._index is None:
            return
        self._index = self._index.folded(ok_rows_of(rows))

    def _compact_into_index(self, names: Sequence[str]) -> None:
        done = compact(self.folder, names)
        self._corrupt.update(done.corrupt)
        if done.segment is not None and self._index is not None:
            # Fold the merged rows now rather than read the file back.
            self._fold(done.rows)
            self._seen.add(done.segment)
        self._seen.difference_update(done.replaced)

    def _auto_compact(self) -> None:
        sizes = list_segments(self.folder)
        plan = auto_compact_plan({n: s for n, s in sizes.items() if n not in self._corrupt})
        if plan:
            with self._index_lock:
                self._compact_into_index(plan)
