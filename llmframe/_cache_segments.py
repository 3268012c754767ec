"""The segment store: a cache folder as a set of immutable parquet files.

A cache is a folder of immutable parquet *segments*::

    ~/.cache/llmframe/
        seg-1732896000123456789-4242-1f2e3d4c.parquet    # seg-<time_ns>-<pid>-<uuid8>
        seg-1732896002125000000-4242-9a8b7c6d.parquet
        .tmp-seg-1732896004...parquet.part               # being written; every reader ignores it (_cache_temps)
        .log-4242-5e6f7a8b-build01.arrows                # an answer log, not a segment (_cache_log)

Why segments and not one file: several processes (two notebooks, a script and a
notebook) may fill the same cache at once. Each flush writes a *new* file under a
unique name, to a temporary name first and then ``os.replace``-d into place, so a
reader sees a whole segment or none, and no file is ever rewritten in place.

Compaction merges many small segments into one. It writes the merged segment
atomically first, then deletes exactly the files it merged; a reader that listed
a file a compactor has since deleted skips it silently. Two compactors racing
on the same files leave duplicate records, never missing ones, and the next
compaction folds the duplicates away.

Everything here that touches the disk is in this module: listing, reading with
corrupt files skipped, the atomic write, and compaction. It knows files and
records, not lookups. :class:`Segments` is what a cache needs of a place that
holds segments, so that the same reader, writer and compaction serve a folder on
this machine (:class:`LocalSegments`, these functions) and an fsspec URL
(:class:`~llmframe._cache_fs.RemoteSegments`, where a segment is one PUT).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ._cache_schema import COLUMNS, POLARS_SCHEMA, SCHEMA
from ._cache_temps import TEMP_PREFIX, TEMP_SUFFIX
from ._warn import warn_user

__all__ = [
    "AUTO_COMPACT_MERGE_BYTES",
    "AUTO_COMPACT_SEGMENTS",
    "SEGMENT_NAME",
    "Compaction",
    "LocalSegments",
    "Segments",
    "auto_compact_plan",
    "compact",
    "count_rows",
    "fsync_folder",
    "list_segments",
    "new_segment",
    "read_each",
    "read_segments",
    "segment_name",
    "warn_corrupt",
    "write_parquet",
    "write_segment",
]

# Dictionary encoding pays off for repetitive columns (one model, a few answers
# such as "positive"/"negative"); keys and request ids are unique, so skip it there.
_DICTIONARY_COLUMNS = [c for c in COLUMNS if c not in ("key", "request_id")]
#: Pages of 64 KiB, not 1 MiB: a 20,000-record segment's write peaks +7-9 MB, not +13-20.
DATA_PAGE_BYTES = 1 << 16

#: More segments than this in a folder trigger a compaction on the next flush. A merge costs
#: a run far more than the data it reads: the first one left ~45 MB in polars' and Arrow's
#: allocators (three segments of ~16,000 records, 2.6 MB of Arrow data each), and at 64 a
#: 1M-row run at ~9,000 rows/s (62-95 two-second segments) merged at every flush of its
#: last minute, its peak 240 MB against 95 MB without (measured). A lookup's time follows
#: the records it reads, not the files (~1.0 s for 64 such segments, ~2.5 s for 128).
AUTO_COMPACT_SEGMENTS = 128
#: Segments at least this large on disk (~40,000 records of short answers) are left out
#: of automatic compactions: a merge holds its segments in memory whole (read, deduplicated,
#: written: ~3x their records), so merging everything made a run's peak memory grow with
#: the cache it wrote (~600 MB at a million rows). ``compact_cache()`` still merges all.
AUTO_COMPACT_MAX_BYTES = 1 << 20
#: What one automatic compaction reads at most (on disk, the smallest segments first): the
#: cap above alone let one merge take 64 segments just under it, and a long run's two-second
#: flushes (~6,000 records each) made merges of ~400,000 records (~300 MB held at once).
AUTO_COMPACT_MERGE_BYTES = 1 << 20

SEGMENT_NAME = re.compile(r"seg-\d+-\d+-[0-9a-f]{8}\.parquet")


def list_segments(folder: Path, pattern: re.Pattern[str] = SEGMENT_NAME) -> dict[str, int]:
    """Segment names (those ``pattern`` matches) in time order (the name starts with
    time_ns), with their sizes."""
    found: dict[str, int] = {}
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return found
    for entry in entries:
        if pattern.fullmatch(entry.name):
            try:
                found[entry.name] = entry.stat().st_size
            except FileNotFoundError:  # compacted away since the listing
                continue
    return dict(sorted(found.items()))


# --------------------------------------------------------------------------- reading


def _conform(frame: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    return frame.select(pl.col(name).cast(POLARS_SCHEMA[name], strict=True) for name in columns)


def _empty(columns: Sequence[str]) -> pl.DataFrame:
    return pl.DataFrame(schema={name: POLARS_SCHEMA[name] for name in columns})


def read_segments(
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
    return read_each(
        names,
        columns,
        lambda name: pl.read_parquet(folder / name, columns=list(columns)),
        lambda name: os.path.exists(folder / name),
        lambda name: str(folder / name),
    )


def read_each(
    names: Sequence[str],
    columns: Sequence[str],
    read_one: Callable[[str], pl.DataFrame],
    exists: Callable[[str], bool],
    describe: Callable[[str], str],
) -> tuple[pl.DataFrame, list[str], list[str]]:
    """:func:`read_segments` one segment at a time, with ``read_one``: a segment that
    fails and still ``exists`` is corrupt (warned about, as ``describe`` names it); one
    that is gone was compacted away and is skipped."""
    frames: list[pl.DataFrame] = []
    read: list[str] = []
    corrupt: list[str] = []
    for name in names:
        try:
            frames.append(_conform(read_one(name), columns))
        except Exception as exc:
            if not exists(name):
                continue
            warn_corrupt(describe(name), exc)
            corrupt.append(name)
            continue
        read.append(name)
    if not frames:
        return _empty(columns), read, corrupt
    return pl.concat(frames, how="vertical"), read, corrupt


def warn_corrupt(path: str | Path, exc: Exception) -> None:
    """Say which segment is unreadable and what it costs; the file itself is left alone."""
    warn_user(
        f"llmframe cache: skipping unreadable segment {path} ({type(exc).__name__}: {exc}); "
        "its answers will be requested again. Delete the file to silence this warning.",
        RuntimeWarning
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


def fsync_folder(folder: Path) -> None:
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


@contextlib.contextmanager
def new_segment(folder: Path, suffix: str, *, durable_rename: bool = False) -> Iterator[tuple[str, BinaryIO]]:
    """A new segment's name (``seg-<time_ns>-<pid>-<uuid8><suffix>``) and a file to write it
    to: a temporary one, fsynced and renamed into place when the block ends, deleted if it
    raises. The embedding cache's segments are written this way too."""
    name = segment_name(suffix)
    temp = folder / f"{TEMP_PREFIX}{name}{TEMP_SUFFIX}"
    try:
        with open(temp, "wb") as sink:
            yield name, sink
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temp, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    if durable_rename:
        fsync_folder(folder)


def segment_name(suffix: str = ".parquet") -> str:
    """A new segment's name, which no other writer uses: ``seg-<time_ns>-<pid>-<uuid8><suffix>``."""
    return f"seg-{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def write_parquet(table: pa.Table, sink: BinaryIO | pa.NativeFile) -> None:
    """``table`` as a segment's parquet, to ``sink``."""
    pq.write_table(table, sink, compression="zstd", use_dictionary=_DICTIONARY_COLUMNS, row_group_size=1 << 20,
                   data_page_size=DATA_PAGE_BYTES)  # fmt: skip


def write_segment(folder: Path, table: pa.Table, *, durable_rename: bool = False) -> str:
    """Write ``table`` as a new segment, atomically; return its file name."""
    with new_segment(folder, ".parquet", durable_rename=durable_rename) as (name, sink):
        write_parquet(table, sink)
    return name


# --------------------------------------------------------------------------- compaction


@dataclass(frozen=True, slots=True)
class Compaction:
    """What :func:`compact` found: what the caller reports or must not retry."""

    corrupt: list[str]  # unreadable segments, left where they are
    records_read: int


def compact(folder: Path | Segments, names: Sequence[str]) -> Compaction:
    """Merge the named segments into one (see :func:`_merge` for what is kept)."""
    store = folder if isinstance(folder, Segments) else LocalSegments(folder)
    records, read, corrupt = store.read(names, COLUMNS)
    merged = _merge(records)
    if len(read) < 2 and merged.height == records.height:  # already compact
        return Compaction(corrupt, records.height)
    if merged.height:
        # Written and made durable before anything is deleted: a crash in between
        # leaves duplicates, which the next compaction folds away, never a loss.
        store.write(merged.to_arrow().cast(SCHEMA), durable=True)
    for old in read:
        store.remove(old)
    return Compaction(corrupt, records.height)


def auto_compact_plan(sizes: Mapping[str, int]) -> list[str]:
    """Which segments an automatic compaction merges, or none.

    Size-tiered: while one segment is at least twice the size of all the others
    together, only the others are merged, so a run that flushes every two
    seconds against a big cache rewrites its own small files, not the big one.
    Segments of :data:`AUTO_COMPACT_MAX_BYTES` or more are never merged here (nor
    counted), and one merge reads the smallest segments up to :data:`AUTO_COMPACT_MERGE_BYTES`
    (at least two), so it holds a few MB at most, however big the cache and however many
    segments wait: the next flush merges the next ones.
    """
    sizes = {name: size for name, size in sizes.items() if size < AUTO_COMPACT_MAX_BYTES}
    if len(sizes) <= AUTO_COMPACT_SEGMENTS:
        return []
    ordered = sorted(sizes, key=lambda name: sizes[name])
    largest = ordered[-1]
    rest = ordered[:-1]
    if sizes[largest] < 2 * sum(sizes[name] for name in rest):
        rest = ordered
    chosen: list[str] = []
    total = 0
    for name in rest:  # ascending size
        if len(chosen) >= 2 and total + sizes[name] > AUTO_COMPACT_MERGE_BYTES:
            break
        chosen.append(name)
        total += sizes[name]
    return sorted(chosen)


def count_rows(folder: Path | Segments, names: Iterable[str]) -> int:
    """Records in the named segments, from their footers alone."""
    store = folder if isinstance(folder, Segments) else LocalSegments(folder)
    rows = 0
    for name in names:
        try:
            rows += pq.read_metadata(store.source(name)).num_rows
        except Exception:  # corrupt, or compacted away: nothing to count
            continue
    return rows


# --------------------------------------------------------------------------- where they live


@runtime_checkable
class Segments(Protocol):
    """A place that holds a cache's segments: what the reader, the writer and compaction
    need of it. ``where`` names it in messages (never with credentials)."""

    where: str

    def sizes(self) -> dict[str, int]:
        """Segment names in time order, with their sizes (:func:`list_segments`)."""
        ...

    def source(self, name: str) -> str | pa.NativeFile:
        """What pyarrow reads the segment ``name`` from; ``FileNotFoundError`` if it is gone."""
        ...

    def exists(self, name: str) -> bool: ...

    def read(self, names: Sequence[str], columns: Sequence[str]) -> tuple[pl.DataFrame, list[str], list[str]]:
        """The named segments' ``columns``, as :func:`read_segments` returns them."""
        ...

    def write(self, table: pa.Table, *, durable: bool = False) -> str:
        """A new segment of ``table``, whole or not at all; its name."""
        ...

    def remove(self, name: str) -> None:
        """Delete the segment ``name``; one that is gone already (or cannot go) is left."""
        ...


class LocalSegments:
    """The segments of a folder on this machine: the functions of this module."""

    __slots__ = ("folder", "where")

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where = str(folder)

    def __repr__(self) -> str:
        return f"LocalSegments({self.where!r})"

    def sizes(self) -> dict[str, int]:
        return list_segments(self.folder)

    def source(self, name: str) -> str:
        return str(self.folder / name)

    def exists(self, name: str) -> bool:
        return os.path.exists(self.folder / name)

    def read(self, names: Sequence[str], columns: Sequence[str]) -> tuple[pl.DataFrame, list[str], list[str]]:
        return read_segments(self.folder, names, columns)

    def write(self, table: pa.Table, *, durable: bool = False) -> str:
        return write_segment(self.folder, table, durable_rename=durable)

    def remove(self, name: str) -> None:
        try:
            os.remove(self.folder / name)
        except FileNotFoundError:
            pass  # another compactor got there first
        except OSError:
            pass  # e.g. open in another process on Windows: merged again next time
