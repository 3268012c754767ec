"""The answer cache: one parquet dataset, one row per answer.

A cache is a folder of immutable parquet *segments*::

    ~/.cache/llmframe/
        seg-1732896000123456789-4242-1f2e3d4c.parquet    # seg-<time_ns>-<pid>-<uuid8>
        seg-1732896002125000000-4242-9a8b7c6d.parquet
        .tmp-seg-1732896004...parquet.part               # being written; every reader ignores it

Why segments and not one file: several processes (two notebooks, a script and a
notebook) may fill the same cache at once. Each flush writes a *new* file under a
unique name, to a temporary name first and then ``os.replace``-d into place, so a
reader sees a whole segment or none, and no file is ever rewritten in place. A
crash loses at most the records buffered since the last flush (``flush_seconds``).

Compaction merges many small segments into one. It writes the merged segment
atomically first, then deletes exactly the files it merged; a reader that listed
a file a compactor has since deleted skips it silently. Two compactors racing
on the same files leave duplicate records, never missing ones, and the next
compaction folds the duplicates away.

Rows are :data:`SCHEMA`; pandas (``pd.read_parquet(folder)``), polars
(``pl.read_parquet(folder / "*.parquet")``) and DuckDB
(``read_parquet('folder/*.parquet')``) read the folder as it is. Errors are
stored with ``status == "error"`` so a report can show them, and are never
served as answers: a lookup returns the newest ``"ok"`` answer per key. No API
key or request header is ever stored: the schema has no column for one and
:meth:`AnswerCache.add_columns` refuses columns outside it.
"""

from __future__ import annotations

import contextlib
import operator
import os
import re
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ._errors import CacheError, ConfigError

__all__ = [
    "AUTO_COMPACT_SEGMENTS",
    "SCHEMA",
    "AnswerCache",
    "CacheRecord",
    "cache_info",
    "clear_cache",
    "compact_cache",
    "default_cache_dir",
    "read_cache",
    "resolve_cache_dir",
]

_TIMESTAMP = pa.timestamp("us", tz="UTC")

#: Column order and types of every segment. Only the nullable columns may hold nulls.
SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("template_hash", pa.string(), nullable=False),
        pa.field("answer", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("prompt_tokens", pa.int64(), nullable=False),
        pa.field("completion_tokens", pa.int64(), nullable=False),
        pa.field("cost_usd", pa.float64()),
        pa.field("created", _TIMESTAMP, nullable=False),
        pa.field("request_id", pa.string()),
    ]
)
_COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
_POLARS_SCHEMA: dict[str, pl.DataType] = {
    "key": pl.String(),
    "model": pl.String(),
    "template_hash": pl.String(),
    "answer": pl.String(),
    "status": pl.String(),
    "error": pl.String(),
    "prompt_tokens": pl.Int64(),
    "completion_tokens": pl.Int64(),
    "cost_usd": pl.Float64(),
    "created": pl.Datetime("us", "UTC"),
    "request_id": pl.String(),
}
# A lookup needs only these; reading four columns instead of eleven is most of its speed.
_LOOKUP_COLUMNS = ("key", "status", "answer", "created")
_STATUSES = ("ok", "error")
# Dictionary encoding pays off for repetitive columns (one model, a few answers
# such as "positive"/"negative"); keys and request ids are unique, so skip it there.
_DICTIONARY_COLUMNS = [c for c in _COLUMNS if c not in ("key", "request_id")]

#: More segments than this in a folder trigger a compaction on the next flush or lookup.
AUTO_COMPACT_SEGMENTS = 64

_SEGMENT_NAME = re.compile(r"seg-\d+-\d+-[0-9a-f]{8}\.parquet")
_TEMP_PREFIX = ".tmp-"  # pyarrow's dataset discovery skips names starting with "." or "_"
_TEMP_SUFFIX = ".part"  # and no "*.parquet" glob (polars, DuckDB) matches a file being written


@dataclass(frozen=True, slots=True)
class CacheRecord:
    """One row's answer (or failure), as stored in the cache.

    ``key`` is the row's cache key (32 hex characters, see the keys module);
    ``created`` must be timezone-aware. Example::

        CacheRecord(key="9f0c...", model="gpt-4o-mini", template_hash="1a2b...",
                    answer="positive", status="ok", error=None, prompt_tokens=41,
                    completion_tokens=3, cost_usd=8.0e-06,
                    created=datetime.now(timezone.utc), request_id="req_123")
    """

    key: str
    model: str
    template_hash: str
    answer: str | None
    status: str  # "ok" | "error"
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    created: datetime  # UTC, tz-aware
    request_id: str | None

    def __post_init__(self) -> None:
        # Checked here, where the caller can see which record is wrong, not at
        # flush time, where one bad record would hold up everyone else's.
        if self.status not in _STATUSES:
            raise ValueError(
                f"status must be 'ok' or 'error', got {self.status!r} (key {self.key})"
            )
        if self.created.tzinfo is None:
            raise ValueError(
                f"created must be timezone-aware, e.g. datetime.now(timezone.utc) (key {self.key})"
            )


_FIELD_GETTERS = tuple(operator.attrgetter(name) for name in _COLUMNS)


# --------------------------------------------------------------------------- folders


def default_cache_dir() -> Path:
    """The cache folder used when ``cache=True``.

    ``$LLMFRAME_CACHE_DIR`` if set, else the per-user cache folder:
    ``~/.cache/llmframe`` on Linux (``$XDG_CACHE_HOME`` respected),
    ``~/Library/Caches/llmframe`` on macOS and ``%LOCALAPPDATA%\\llmframe\\Cache``
    on Windows.
    """
    configured = os.environ.get("LLMFRAME_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
        return base / "llmframe" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "llmframe"
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says to ignore relative paths.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "llmframe"


def resolve_cache_dir(cache: bool | str | os.PathLike[str] | None) -> Path | None:
    """Turn the user's ``cache=`` option into a folder: ``True`` is :func:`default_cache_dir`,
    a path is that folder, ``False`` (or ``None``) means no cache.

    >>> resolve_cache_dir(False) is None
    True
    """
    if cache is None or cache is False:
        return None
    if cache is True:
        return default_cache_dir()
    if isinstance(cache, (str, os.PathLike)):
        text = os.fspath(cache)
        if not text:
            raise ConfigError("cache= got an empty path; pass a folder, True or False")
        return Path(text).expanduser()
    raise ConfigError(f"cache= must be True, False or a folder path, got {type(cache).__name__}")


def _list_segments(folder: Path) -> dict[str, int]:
    """Segment names in time order (the name starts with time_ns), with their sizes."""
    found: dict[str, int] = {}
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return found
    for entry in entries:
        if _SEGMENT_NAME.fullmatch(entry.name):
            try:
                found[entry.name] = entry.stat().st_size
            except FileNotFoundError:  # compacted away since the listing
                continue
    return dict(sorted(found.items()))


# --------------------------------------------------------------------------- reading


def _conform(frame: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    return frame.select(pl.col(name).cast(_POLARS_SCHEMA[name], strict=True) for name in columns)


def _empty(columns: Sequence[str]) -> pl.DataFrame:
    return pl.DataFrame(schema={name: _POLARS_SCHEMA[name] for name in columns})


def _read_segments(
    folder: Path, names: Sequence[str], columns: Sequence[str]
) -> tuple[pl.DataFrame, list[str], list[str]]:
    """Read ``columns`` of the named segments, in order.

    Returns the rows, the names that were read, and the names that are corrupt
    (each reported with a warning). A file that has disappeared since it was
    listed was compacted away by someone else and is skipped without a word.
    """
    if not names:
        return _empty(columns), [], []
    paths = [str(folder / name) for name in names]
    try:
        # One multithreaded scan for the common case where every file is fine.
        frame = (
            pl.scan_parquet(paths, glob=False, hive_partitioning=False).select(columns).collect()
        )
        return _conform(frame, columns), list(names), []
    except Exception:
        pass  # find out which file is at fault, one at a time
    frames: list[pl.DataFrame] = []
    read: list[str] = []
    corrupt: list[str] = []
    for name, path in zip(names, paths, strict=True):
        try:
            frames.append(_conform(pl.read_parquet(path, columns=list(columns)), columns))
        except Exception as exc:
            if not os.path.exists(path):
                continue
            warnings.warn(
                f"llmframe cache: skipping unreadable segment {path} ({type(exc).__name__}: {exc}); "
                "its answers will be requested again. Delete the file to silence this warning.",
                RuntimeWarning,
                stacklevel=3,
            )
            corrupt.append(name)
            continue
        read.append(name)
    if not frames:
        return _empty(columns), read, corrupt
    return pl.concat(frames, how="vertical"), read, corrupt


def _newest_per_key(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per key: the one with the latest ``created``; on a tie, the later row."""
    return frame.sort("created", maintain_order=True).unique("key", keep="last")


def _merge(records: pl.DataFrame) -> pl.DataFrame:
    """What compaction keeps: the newest ok record per key, or the newest error
    for a key that has no ok record at all (an error never hides an answer)."""
    ok = _newest_per_key(records.filter(pl.col("status") == "ok"))
    errors = records.filter((pl.col("status") != "ok") & ~pl.col("key").is_in(ok["key"].implode()))
    return pl.concat([ok, _newest_per_key(errors)], how="vertical").sort(
        "created", maintain_order=True
    )


# --------------------------------------------------------------------------- writing


def _fsync_folder(folder: Path) -> None:
    # Makes a rename durable before the files it replaces are deleted. POSIX only:
    # Windows cannot open a directory, and its renames are journaled anyway.
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_segment(folder: Path, table: pa.Table, *, durable_rename: bool = False) -> str:
    """Write ``table`` as a new segment, atomically; return its file name."""
    name = f"seg-{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
    temp = folder / f"{_TEMP_PREFIX}{name}{_TEMP_SUFFIX}"
    try:
        with open(temp, "wb") as sink:
            pq.write_table(
                table,
                sink,
                compression="zstd",
                use_dictionary=_DICTIONARY_COLUMNS,
                row_group_size=1 << 20,
            )
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temp, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    if durable_rename:
        _fsync_folder(folder)
    return name


def _records_to_table(records: Sequence[CacheRecord]) -> pa.Table:
    # Column by column: zip(*rows) over a million tuples is several times slower.
    return pa.Table.from_arrays(
        [
            pa.array(list(map(getter, records)), type=field.type)
            for getter, field in zip(_FIELD_GETTERS, SCHEMA, strict=True)
        ],
        schema=SCHEMA,
    )


def _records_to_table_skipping_bad(records: Sequence[CacheRecord]) -> pa.Table:
    """Like :func:`_records_to_table`, but a record whose values do not fit the
    schema (a number where text belongs, say) is dropped with a warning instead
    of keeping every other record out of the cache."""
    try:
        return _records_to_table(records)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        pass
    good: list[CacheRecord] = []
    for record in records:
        try:
            _records_to_table([record])
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            warnings.warn(
                f"llmframe cache: not caching the record for key {record.key!r}: {exc}",
                RuntimeWarning,
                stacklevel=4,
            )
            continue
        good.append(record)
    if not good:
        return SCHEMA.empty_table()
    return _records_to_table(good)


def _column_to_arrow(name: str, values: Any, length: int | None) -> pa.Array | pa.ChunkedArray:
    target = SCHEMA.field(name).type
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        array = values
    elif isinstance(values, pl.Series):
        array = values.to_arrow()
    else:
        # Let pyarrow infer timestamps so that naive ones can be refused below.
        try:
            array = pa.array(values, type=None if name == "created" else target)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise ValueError(
                f"add_columns: column {name!r} cannot be stored as {target}: {exc}"
            ) from exc
    if name == "created" and pa.types.is_timestamp(array.type) and array.type.tz is None:
        raise ValueError("add_columns: 'created' must be timezone-aware (UTC)")
    if array.type != target:
        try:
            array = array.cast(target)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise ValueError(
                f"add_columns: column {name!r} cannot be stored as {target}: {exc}"
            ) from exc
    if length is not None and len(array) != length:
        raise ValueError(
            f"add_columns: column {name!r} has {len(array)} values, 'key' has {length}"
        )
    if not SCHEMA.field(name).nullable and array.null_count:
        raise ValueError(f"add_columns: column {name!r} has {array.null_count} null values")
    return array


def _columns_to_table(columns: Mapping[str, Any], now: datetime) -> pa.Table:
    unknown = sorted(set(columns) - set(_COLUMNS))
    if unknown:
        # Also the guard that keeps API keys and headers out of the cache.
        raise ValueError(
            f"add_columns: unknown columns {unknown}; the cache stores only {list(_COLUMNS)}"
        )
    missing = [name for name in ("key", "model", "template_hash", "status") if name not in columns]
    if missing:
        raise ValueError(f"add_columns: missing required columns {missing}")
    key = _column_to_arrow("key", columns["key"], None)
    length = len(key)
    defaults: dict[str, Any] = {
        "prompt_tokens": pa.repeat(pa.scalar(0, pa.int64()), length),
        "completion_tokens": pa.repeat(pa.scalar(0, pa.int64()), length),
        "created": pa.repeat(pa.scalar(now, _TIMESTAMP), length),
    }
    arrays: list[pa.Array | pa.ChunkedArray] = []
    for field in SCHEMA:
        if field.name == "key":
            arrays.append(key)
        elif field.name in columns:
            arrays.append(_column_to_arrow(field.name, columns[field.name], length))
        elif field.name in defaults:
            arrays.append(defaults[field.name])
        else:
            arrays.append(pa.nulls(length, field.type))
    status = arrays[_COLUMNS.index("status")]
    if length and not pc.all(pc.is_in(status, value_set=pa.array(_STATUSES))).as_py():
        raise ValueError("add_columns: 'status' must be 'ok' or 'error' in every row")
    chunked = [a if isinstance(a, pa.ChunkedArray) else pa.chunked_array([a]) for a in arrays]
    return pa.Table.from_arrays(chunked, schema=SCHEMA)


@dataclass(frozen=True, slots=True)
class _Compaction:
    segment: str | None  # the merged segment, None when nothing was rewritten
    rows: pl.DataFrame  # what it holds
    replaced: list[str]  # the segments it replaced, now deleted
    corrupt: list[str]  # unreadable segments, left where they are
    records_read: int


def _compact(folder: Path, names: Sequence[str]) -> _Compaction:
    """Merge the named segments into one (see :func:`_merge` for what is kept)."""
    records, read, corrupt = _read_segments(folder, names, _COLUMNS)
    merged = _merge(records)
    if len(read) < 2 and merged.height == records.height:  # already compact
        return _Compaction(None, merged, [], corrupt, records.height)
    segment: str | None = None
    if merged.height:
        # Written and made durable before anything is deleted: a crash in between
        # leaves duplicates, which the next compaction folds away, never a loss.
        segment = _write_segment(folder, merged.to_arrow().cast(SCHEMA), durable_rename=True)
    for old in read:
        try:
            os.remove(folder / old)
        except FileNotFoundError:
            pass  # another compactor got there first
        except OSError:
            pass  # e.g. open in another process on Windows: merged again next time
    return _Compaction(segment, merged, read, corrupt, records.height)


def _auto_compact_plan(sizes: Mapping[str, int]) -> list[str]:
    """Which segments an automatic compaction merges, or none.

    Size-tiered: while one segment is at least twice the size of all the others
    together, only the others are merged, so a run that flushes every two
    seconds against a big cache rewrites its own small files, not the big one.
    """
    if len(sizes) <= AUTO_COMPACT_SEGMENTS:
        return []
    ordered = sorted(sizes, key=lambda name: sizes[name])
    largest = ordered[-1]
    rest = ordered[:-1]
    if sizes[largest] >= 2 * sum(sizes[name] for name in rest):
        return sorted(rest)
    return sorted(ordered)


_INDEX_COLUMNS = ("key", "answer", "created")


def _empty_index() -> pl.DataFrame:
    return _empty(_INDEX_COLUMNS).with_columns(pl.col("key").hash().alias("_hash"))


def _join_answers(wanted: pl.DataFrame, index: pl.DataFrame) -> list[str | None]:
    """The answer for each row of ``wanted`` (one ``key`` column), in its order.

    Joins on a 64-bit hash of the key, which is several times faster than
    joining on 32-character strings, then checks the key itself so that a hash
    collision can never serve another key's answer.
    """
    wanted = wanted.with_columns(pl.col("key").hash().alias("_hash"))
    found = wanted.join(
        index.select("_hash", pl.col("key").alias("_key"), "answer"),
        on="_hash",
        how="left",
        maintain_order="left",
    )
    if found.height != wanted.height:
        # Two cached keys share a hash (about one chance in 10^7 for a million
        # keys): join on the keys themselves.
        found = wanted.join(
            index.select("key", "answer"), on="key", how="left", maintain_order="left"
        )
        return found.get_column("answer").to_list()
    return (
        found.select(
            pl.when(pl.col("key") == pl.col("_key")).then(pl.col("answer")).alias("answer")
        )
        .to_series()
        .to_list()
    )


# --------------------------------------------------------------------------- the cache


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
        # Newest ok record per key (key, answer, created, _hash); None until the first lookup.
        self._index: pl.DataFrame | None = None
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
        table = _columns_to_table(columns, datetime.now(timezone.utc))
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
                _records_to_table_skipping_bad(chunk) if isinstance(chunk, list) else chunk
                for chunk in buffer
            ]
            table = pa.concat_tables(tables)
            if not table.num_rows:
                return
            try:
                _write_segment(self.folder, table)
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
        self.flush()  # what this process added is found by this process
        with self._index_lock:
            self._refresh()
            index = self._index
        if len(keys) == 0:
            return []
        if index is None or index.height == 0:
            return [None] * len(keys)
        wanted = keys.alias("key") if isinstance(keys, pl.Series) else pl.Series("key", keys)
        return _join_answers(wanted.cast(pl.String).to_frame(), index)

    def _refresh(self) -> None:
        """Fold segments not seen before into the index (``_index_lock`` held)."""
        if self._index is None:
            self._index = _empty_index()
        sizes = _list_segments(self.folder)
        plan = _auto_compact_plan({n: s for n, s in sizes.items() if n not in self._corrupt})
        if plan:
            self._compact_into_index(plan)
            sizes = _list_segments(self.folder)
        new = [n for n in sizes if n not in self._seen and n not in self._corrupt]
        if not new and not self._seen.issubset(sizes):
            # Segments vanished and no compaction wrote their records elsewhere:
            # someone cleared the cache. Forget those answers too.
            self._index = _empty_index()
            self._seen.clear()
            return
        self._seen.intersection_update(sizes)  # forget what was compacted away
        if not new:
            return
        rows, read, corrupt = _read_segments(self.folder, new, _LOOKUP_COLUMNS)
        self._corrupt.update(corrupt)
        self._fold(rows)
        self._seen.update(read)

    def _fold(self, rows: pl.DataFrame) -> None:
        ok = rows.filter(pl.col("status") == "ok").select(_INDEX_COLUMNS)
        if ok.height == 0 or self._index is None:
            return
        # The index comes first, so on equal timestamps the newer segment wins.
        newest = _newest_per_key(pl.concat([self._index.select(_INDEX_COLUMNS), ok]))
        self._index = newest.with_columns(pl.col("key").hash().alias("_hash"))

    def _compact_into_index(self, names: Sequence[str]) -> None:
        done = _compact(self.folder, names)
        self._corrupt.update(done.corrupt)
        if done.segment is not None and self._index is not None:
            # Fold the merged rows now rather than read the file back.
            self._fold(done.rows)
            self._seen.add(done.segment)
        self._seen.difference_update(done.replaced)

    def _auto_compact(self) -> None:
        sizes = _list_segments(self.folder)
        plan = _auto_compact_plan({n: s for n, s in sizes.items() if n not in self._corrupt})
        if plan:
            with self._index_lock:
                self._compact_into_index(plan)


# --------------------------------------------------------------------------- maintenance


def read_cache(path: str | os.PathLike[str] | None = None) -> pl.DataFrame:
    """Every record in the cache folder (default: :func:`default_cache_dir`), every column.

    The columns and types are :data:`SCHEMA`'s even when the folder is empty or
    missing. Corrupt segments are skipped with a warning. Example::

        read_cache().group_by("model").agg(pl.col("cost_usd").sum())
    """
    folder = Path(path).expanduser() if path is not None else default_cache_dir()
    records, _read, _corrupt = _read_segments(folder, list(_list_segments(folder)), _COLUMNS)
    return records


def cache_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A summary of a cache folder, for the CLI's ``cache info``.

    Keys: ``folder``, ``segments``, ``records``, ``keys`` (distinct), ``ok``,
    ``error``, ``bytes`` (segments on disk), ``models`` (sorted) and ``corrupt``
    (segments skipped as unreadable). Example::

        cache_info(default_cache_dir())["records"]
    """
    folder = Path(path).expanduser()
    sizes = _list_segments(folder)
    records, _read, corrupt = _read_segments(folder, list(sizes), ("key", "status", "model"))
    return {
        "folder": str(folder),
        "segments": len(sizes),
        "records": records.height,
        "keys": records.get_column("key").n_unique(),
        "ok": int((records.get_column("status") == "ok").sum()),
        "error": int((records.get_column("status") == "error").sum()),
        "bytes": sum(sizes.values()),
        "models": sorted(records.get_column("model").unique().to_list()),
        "corrupt": corrupt,
    }


def clear_cache(path: str | os.PathLike[str]) -> int:
    """Delete every segment in the folder and return how many.

    Only files named like segments (``seg-<time_ns>-<pid>-<uuid8>.parquet``) are
    removed; anything else in the folder is left alone.
    """
    folder = Path(path).expanduser()
    removed = 0
    for name in _list_segments(folder):
        try:
            os.remove(folder / name)
        except FileNotFoundError:
            continue
        removed += 1
    return removed


def compact_cache(path: str | os.PathLike[str]) -> dict[str, int]:
    """Merge every segment into one, atomically, and report the counts before and after.

    Keeps the newest ok record per key, and for keys without any ok record the
    newest error; errors that an ok record supersedes are dropped. Safe while
    other processes read, write or compact the same folder. Example::

        compact_cache(default_cache_dir())
        # {"segments_before": 412, "records_before": 90211, "bytes_before": ...,
        #  "segments_after": 1, "records_after": 88000, "bytes_after": ...}
    """
    folder = Path(path).expanduser()
    before = _list_segments(folder)
    records_before = _compact(folder, list(before)).records_read
    after = _list_segments(folder)
    return {
        "segments_before": len(before),
        "records_before": records_before,
        "bytes_before": sum(before.values()),
        "segments_after": len(after),
        "records_after": _count_rows(folder, after),
        "bytes_after": sum(after.values()),
    }


def _count_rows(folder: Path, names: Iterable[str]) -> int:
    rows = 0
    for name in names:
        try:
            rows += pq.read_metadata(folder / name).num_rows
        except Exception:  # corrupt, or compacted away: nothing to count
            continue
    return rows
