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

import numpy as np
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
            _warn_corrupt(path, exc)
            corrupt.append(name)
            continue
        read.append(name)
    if not frames:
        return _empty(columns), read, corrupt
    return pl.concat(frames, how="vertical"), read, corrupt


def _warn_corrupt(path: str | Path, exc: Exception) -> None:
    warnings.warn(
        f"llmframe cache: skipping unreadable segment {path} ({type(exc).__name__}: {exc}); "
        "its answers will be requested again. Delete the file to silence this warning.",
        RuntimeWarning,
        stacklevel=4,
    )


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


# --------------------------------------------------------------------------- the lookup index

# The value of each ASCII code as a lowercase hex digit; 255 for every other byte.
_HEX_DIGITS = np.full(256, 255, dtype=np.uint8)
_HEX_DIGITS[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)
#: Records read, and keys parsed or looked up, at a time: bounds the temporary text
#: and arrays to a few MB however many there are.
_BLOCK_ROWS = 1 << 16


def _text(values: pa.Array | pa.ChunkedArray, answers: bool = False) -> pa.Array:
    """``values`` as one array whose buffers :func:`_key_halves` can read (``string`` or
    ``large_string``), or, for ``answers``, as the ``string`` array the index stores."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.type == pa.string() or (values.type == pa.large_string() and not answers):
        return values
    return values.cast(pa.string() if answers else pa.large_string())


def _key_halves(keys: pa.Array, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Write each key's 128 bits into ``hi`` and ``lo`` as two uint64 halves (its first
    16 hex digits and its last 16) and return which keys are canonical: exactly 32
    lowercase hex digits, the form of every key llmframe makes. ``keys`` is a
    ``string`` or ``large_string`` array; the halves of other keys (and of nulls) are 0."""
    n = len(keys)
    hi[:] = 0
    lo[:] = 0
    canonical = np.zeros(n, dtype=bool)
    data_buffer = keys.buffers()[2] if n else None
    if data_buffer is None or not data_buffer.size:
        return canonical
    width = np.int64 if keys.type == pa.large_string() else np.int32
    offsets = np.frombuffer(
        keys.buffers()[1], dtype=width, count=n + 1, offset=keys.offset * np.dtype(width).itemsize
    )
    data = np.frombuffer(data_buffer, dtype=np.uint8)
    sized = np.diff(offsets) == 32
    if keys.null_count:
        sized &= keys.is_valid().to_numpy(zero_copy_only=False)
    for start in range(0, n, _BLOCK_ROWS):
        rows = np.flatnonzero(sized[start : start + _BLOCK_ROWS]) + start
        if not len(rows):
            continue
        if rows[-1] - rows[0] + 1 == len(rows):  # back to back in the buffer, as usual
            first = int(offsets[rows[0]])
            text = data[first : first + 32 * len(rows)].reshape(-1, 32)
        else:
            text = data[offsets[rows][:, None] + np.arange(32)]
        digits = _HEX_DIGITS[text]
        valid = (digits != 255).all(axis=1)
        halves = ((digits[:, 0::2] << 4) | digits[:, 1::2]).view(">u8")
        hi[rows] = np.where(valid, halves[:, 0], 0)
        lo[rows] = np.where(valid, halves[:, 1], 0)
        canonical[rows] = valid
    return canonical


class _OkRows:
    """The ok records of some segments, parsed for the index a batch at a time into
    arrays sized once, up front: reading a million records allocates each array once
    and never holds their keys as text."""

    __slots__ = ("answers", "at", "count", "created", "hi", "lo", "others", "read")

    def __init__(self, capacity: int) -> None:
        # Canonical keys as halves (see _key_halves), in the order read.
        self.hi = np.empty(capacity, dtype=np.uint64)
        self.lo = np.empty(capacity, dtype=np.uint64)
        self.created = np.empty(capacity, dtype=np.int64)  # microseconds
        self.at = np.empty(capacity, dtype=np.int64)  # where each one's answer is in ``answers``
        self.count = 0  # canonical keys so far
        self.answers: list[pa.Array] = []  # string chunks, one answer per ok record
        self.read = 0  # ok records so far
        self.others: list[tuple[str, int, int]] = []  # (key, created, answer position): other forms

    def add(self, batch: pa.RecordBatch) -> None:
        """Add the ok records of ``batch`` (columns key, status, answer, created)."""
        ok = pc.equal(_text(batch.column("status")), "ok")
        if ok.true_count != len(ok):
            batch = batch.filter(ok)
        n = batch.num_rows
        if not n:
            return
        keys = _text(batch.column("key"))
        created = batch.column("created").cast(_TIMESTAMP).cast(pa.int64())
        if created.null_count:  # not in a valid segment; sorts such a record first
            created = pc.fill_null(created, np.iinfo(np.int64).min)
        stop = self.count + n
        hi, lo = self.hi[self.count : stop], self.lo[self.count : stop]
        canonical = _key_halves(keys, hi, lo)
        self.created[self.count : stop] = created.to_numpy(zero_copy_only=False)
        self.at[self.count : stop] = np.arange(self.read, self.read + n)
        if canonical.all():
            self.count = stop
        else:
            odd = np.flatnonzero(~canonical)
            for text, row in zip(keys.take(pa.array(odd)).to_pylist(), odd.tolist(), strict=True):
                if text is not None:
                    self.others.append((text, int(self.created[self.count + row]), self.read + row))
            kept = int(canonical.sum())
            for array in (self.hi, self.lo, self.created, self.at):
                array[self.count : self.count + kept] = array[self.count : stop][canonical]
            self.count += kept
        self.answers.append(_text(batch.column("answer"), answers=True))
        self.read += n

    def mark(self) -> tuple[int, int, int, int]:
        return self.count, self.read, len(self.answers), len(self.others)

    def rollback(self, mark: tuple[int, int, int, int]) -> None:
        """Forget what was added since ``mark()``: a segment that failed halfway."""
        self.count, self.read, answers, others = mark
        del self.answers[answers:], self.others[others:]


def _release_memory() -> None:
    """Give the memory pyarrow's allocator holds but no longer uses back to the OS.

    Reading parquet leaves pyarrow's default allocator (mimalloc) holding several
    times the data it read, freed but kept; after reading a million records that
    is most of a cached re-run's memory peak. Reading on one thread keeps it all
    where this call reaches it. It takes well under a millisecond.
    """
    with contextlib.suppress(Exception):  # best effort, as the pool itself says
        pa.default_memory_pool().release_unused()


def _read_ok_rows(folder: Path, names: Sequence[str]) -> tuple[_OkRows, list[str], list[str]]:
    """The ok records of the named segments, parsed for the index; like
    :func:`_read_segments`, also the names read and the names found corrupt.

    One batch at a time, in the reading thread, so that a million records never
    sit in memory as text and pyarrow's allocator stays on one thread.
    """
    opened: list[tuple[str, pq.ParquetFile]] = []
    read: list[str] = []
    corrupt: list[str] = []
    try:
        for name in names:
            path = folder / name
            try:
                # Streamed page by page (not the default: whole column chunks read up front).
                opened.append((name, pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 16)))
            except Exception as exc:
                if os.path.exists(path):  # else compacted away since the listing
                    _warn_corrupt(path, exc)
                    corrupt.append(name)
        rows = _OkRows(sum(segment.metadata.num_rows for _, segment in opened))
        for name, segment in opened:
            mark = rows.mark()
            try:
                for batch in segment.iter_batches(
                    batch_size=_BLOCK_ROWS, columns=list(_LOOKUP_COLUMNS), use_threads=False
                ):
                    rows.add(batch)
            except Exception as exc:
                rows.rollback(mark)
                if os.path.exists(folder / name):
                    _warn_corrupt(folder / name, exc)
                    corrupt.append(name)
                continue
            finally:
                _release_memory()  # the segment's pages, decoded and dropped
            read.append(name)
    finally:
        for _, segment in opened:
            segment.close()
    return rows, read, corrupt


def _ok_rows_of(frame: pl.DataFrame) -> _OkRows:
    """:class:`_OkRows` of records already in memory (a compaction's)."""
    rows = _OkRows(frame.height)
    for batch in frame.select(_LOOKUP_COLUMNS).to_arrow().to_batches(max_chunksize=_BLOCK_ROWS):
        rows.add(batch)
    return rows


class _Index:
    """The newest ok answer per key, lean enough for millions of keys.

    A key of 32 lowercase hex digits (every key llmframe makes) is held as its two
    64-bit halves, sorted, and found by binary search: 32 bytes a key with its
    timestamp and answer position, where a frame of key strings and a join on it
    took several hundred. Keys in any other form, which only a hand-filled cache
    has, go in a dict. ``answers`` holds the answer texts in the order they were
    read, so an answer's position also orders records with equal ``created``: the
    later one wins. An index is never changed, only replaced, so a lookup can use
    the one it got while another thread folds in new segments.
    """

    __slots__ = ("answers", "at", "created", "hi", "lo", "others", "shared_hi")

    def __init__(self) -> None:
        self.hi: np.ndarray = np.empty(0, dtype=np.uint64)  # sorted
        self.lo: np.ndarray = np.empty(0, dtype=np.uint64)
        self.created: np.ndarray = np.empty(0, dtype=np.int64)
        # Where each key's answer is in ``answers``.
        self.at: np.ndarray = np.empty(0, dtype=np.int64)
        self.answers: pa.Array = pa.array([], type=pa.string())
        self.others: dict[str, tuple[int, int]] = {}  # key -> (created, position in answers)
        self.shared_hi = False  # distinct keys share a first half (1 in 10^7 at 10^6 keys)

    def __len__(self) -> int:
        return len(self.hi) + len(self.others)

    def folded(self, rows: _OkRows) -> _Index:
        """A new index: this one with ``rows`` (read after it, so newer on equal
        ``created``). Takes ``rows`` over: its arrays are reused."""
        if not rows.read:
            return self
        new = _Index()
        base = len(self.answers)
        m = rows.count
        columns = [rows.hi[:m], rows.lo[:m], rows.created[:m], rows.at[:m]]
        columns[3] += base
        if len(self.hi):
            olds = (self.hi, self.lo, self.created, self.at)
            columns = [np.concatenate([old, c]) for old, c in zip(olds, columns, strict=True)]
        # Sort by the first half, permuting one column at a time into a single spare
        # array: the old column is the spare for the next one.
        order = np.argsort(columns[0], kind="stable")
        spare = np.empty(len(order), dtype=np.uint64)
        for i, column in enumerate(columns):
            target = spare.view(column.dtype)
            np.take(column, order, out=target, mode="clip")
            columns[i], spare = target, column.view(np.uint64)
        del order, spare
        hi, lo, created, at = columns
        if len(hi) > 1 and bool(np.any(hi[1:] == hi[:-1])):
            # A key is there twice (or two keys share a first half): order by key, then
            # created, then position; the last record of each key is the newest.
            order = np.lexsort((at, created, lo, hi))
            hi, lo, created, at = hi[order], lo[order], created[order], at[order]
            last = np.ones(len(hi), dtype=bool)
            last[:-1] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
            hi, lo, created, at = hi[last], lo[last], created[last], at[last]
            new.shared_hi = bool(np.any(hi[1:] == hi[:-1]))
        others = dict(self.others)
        for key, stamp, position in rows.others:
            old = others.get(key)
            if old is None or stamp >= old[0]:
                others[key] = (stamp, position + base)
        # One array, not chunks: a take from chunks concatenates them every time.
        answers = pa.concat_arrays([self.answers, *rows.answers])
        if len(answers) > 2 * (len(at) + len(others)):
            # Most answers are superseded (a compaction was folded in): keep the live ones.
            kept = [at, np.array([p for _, p in others.values()], dtype=np.int64)]
            answers = answers.take(pa.array(np.concatenate(kept)))
            at = np.arange(len(at), dtype=np.int64)
            others = {
                key: (stamp, len(at) + i) for i, (key, (stamp, _)) in enumerate(others.items())
            }
        new.hi, new.lo, new.created, new.at = hi, lo, created, at
        new.answers, new.others = answers, others
        return new

    def find(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Where each canonical key's answer is in ``answers``, or -1."""
        n = len(self.hi)
        if n == 0:
            return np.full(len(hi), -1, dtype=np.int64)
        i = np.searchsorted(self.hi, hi)
        np.minimum(i, n - 1, out=i)
        found = (self.hi[i] == hi) & (self.lo[i] == lo)
        if self.shared_hi:
            # Keys that share a first half sit side by side, ordered by the second.
            for q in np.flatnonzero(~found & (self.hi[i] == hi)).tolist():
                j = int(i[q])
                while j < n and self.hi[j] == hi[q]:
                    if self.lo[j] == lo[q]:
                        i[q], found[q] = j, True
                        break
                    j += 1
        return np.where(found, self.at[i], -1)

    def answers_at(self, positions: np.ndarray) -> pa.Array:
        """The answers at ``positions`` (from :meth:`find`); null where a position is -1."""
        return self.answers.take(pa.array(positions, mask=positions < 0))

    def answers_binary(self, keys: bytes | bytearray | memoryview) -> pa.ChunkedArray:
        """The answer for each key given in binary (16 bytes each), a block at a time."""
        n = len(keys) // 16
        blocks = []
        for start in range(0, n, _BLOCK_ROWS):
            count = min(_BLOCK_ROWS, n - start)
            words = np.frombuffer(keys, dtype=">u8", count=2 * count, offset=16 * start)
            halves = words.reshape(-1, 2).astype(np.uint64)
            blocks.append(self.answers_at(self.find(halves[:, 0], halves[:, 1])))
        return pa.chunked_array(blocks, type=pa.string())


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
        # Newest ok answer per key; None until the first lookup.
        self._index: _Index | None = None
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
        index = self._current_index()
        if len(keys) == 0:
            return []
        if not len(index):
            return [None] * len(keys)
        wanted = keys.alias("key") if isinstance(keys, pl.Series) else pl.Series("key", keys)
        texts = _text(wanted.cast(pl.String).to_arrow())
        hi = np.empty(len(texts), dtype=np.uint64)
        lo = np.empty(len(texts), dtype=np.uint64)
        canonical = _key_halves(texts, hi, lo)
        positions = index.find(hi, lo)
        if not canonical.all():
            positions[~canonical] = -1
            if index.others:
                for row in np.flatnonzero(~canonical).tolist():
                    hit = index.others.get(texts[row].as_py())
                    if hit is not None:
                        positions[row] = hit[1]
        answers: list[str | None] = index.answers_at(positions).to_pylist()
        return answers

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
        _release_memory()

    def _current_index(self) -> _Index:
        self.flush()  # what this process added is found by this process
        with self._index_lock:
            self._refresh()
            assert self._index is not None
            return self._index

    def _refresh(self) -> None:
        """Fold segments not seen before into the index (``_index_lock`` held)."""
        if self._index is None:
            self._index = _Index()
        sizes = _list_segments(self.folder)
        plan = _auto_compact_plan({n: s for n, s in sizes.items() if n not in self._corrupt})
        if plan:
            self._compact_into_index(plan)
            sizes = _list_segments(self.folder)
        new = [n for n in sizes if n not in self._seen and n not in self._corrupt]
        if not new and not self._seen.issubset(sizes):
            # Segments vanished and no compaction wrote their records elsewhere:
            # someone cleared the cache. Forget those answers too.
            self._index = _Index()
            self._seen.clear()
            return
        self._seen.intersection_update(sizes)  # forget what was compacted away
        if not new:
            return
        rows, read, corrupt = _read_ok_rows(self.folder, new)
        self._corrupt.update(corrupt)
        self._index = self._index.folded(rows)
        self._seen.update(read)
        del rows
        _release_memory()

    def _fold(self, rows: pl.DataFrame) -> None:
        if rows.height == 0 or self._index is None:
            return
        self._index = self._index.folded(_ok_rows_of(rows))

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
