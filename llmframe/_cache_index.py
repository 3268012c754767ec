"""The key index: the newest ok answer per key, in memory, found for many keys at once.

A cached re-run of a million rows looks a million keys up at once, so this is
built for that: every key llmframe makes (32 lowercase hex digits) is held as two
64-bit halves in sorted numpy arrays and found by binary search, and the ok
records of the segments are read straight into those arrays a batch at a time,
so no million key strings (and no join on them) ever exist. It reads segments
but never writes; keeping an index, or dropping it, is up to the reader.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ._cache_schema import TIMESTAMP
from ._cache_segments import LocalSegments, Segments, warn_corrupt

__all__ = ["LOOKUP_COLUMNS", "KeyIndex", "OkRows", "ok_rows_of", "read_ok_rows", "release_memory"]

# A lookup needs only these; reading four columns instead of eleven is most of its speed.
LOOKUP_COLUMNS = ("key", "status", "answer", "created")

# The value of each ASCII code as a lowercase hex digit; 255 for every other byte.
_HEX_DIGITS = np.full(256, 255, dtype=np.uint8)
_HEX_DIGITS[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)
#: Records read, and keys parsed or looked up, at a time: bounds the temporary text
#: and arrays to a few MB however many there are.
_BLOCK_ROWS = 1 << 16


def _text_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``values`` as one ``string`` or ``large_string`` array: buffers :func:`_key_halves`
    can read."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.type in (pa.string(), pa.large_string()):
        return values
    return values.cast(pa.large_string())


def _answer_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``values`` as one ``string`` array, the type the index keeps its answers in."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values if values.type == pa.string() else values.cast(pa.string())


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


class OkRows:
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
        ok = pc.equal(_text_array(batch.column("status")), "ok")
        if ok.true_count != len(ok):
            batch = batch.filter(ok)
        n = batch.num_rows
        if not n:
            return
        keys = _text_array(batch.column("key"))
        created = batch.column("created").cast(TIMESTAMP).cast(pa.int64())
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
        self.answers.append(_answer_array(batch.column("answer")))
        self.read += n

    def mark(self) -> tuple[int, int, int, int]:
        return self.count, self.read, len(self.answers), len(self.others)

    def rollback(self, mark: tuple[int, int, int, int]) -> None:
        """Forget what was added since ``mark()``: a segment that failed halfway."""
        self.count, self.read, answers, others = mark
        del self.answers[answers:], self.others[others:]


def release_memory() -> None:
    """Give the memory pyarrow's allocator holds but no longer uses back to the OS.

    Reading parquet leaves pyarrow's default allocator (mimalloc) holding several
    times the data it read, freed but kept; after reading a million records that
    is most of a cached re-run's memory peak. Reading on one thread keeps it all
    where this call reaches it. It takes well under a millisecond.
    """
    with contextlib.suppress(Exception):  # best effort, as the pool itself says
        pa.default_memory_pool().release_unused()


def read_ok_rows(folder: Path | Segments, names: Sequence[str]) -> tuple[OkRows, list[str], list[str]]:
    """The ok records of the named segments (of a folder, or of any :class:`Segments`),
    parsed for the index; like :func:`read_segments`, also the names read and the names
    found corrupt.

    One batch at a time, in the reading thread, so that a million records never
    sit in memory as text and pyarrow's allocator stays on one thread.
    """
    store = folder if isinstance(folder, Segments) else LocalSegments(folder)
    opened: list[tuple[str, pq.ParquetFile]] = []
    read: list[str] = []
    corrupt: list[str] = []
    try:
        for name in names:
            try:
                # Streamed page by page (not the default: whole column chunks read up front).
                source = store.source(name)
                opened.append((name, pq.ParquetFile(source, pre_buffer=False, buffer_size=1 << 16)))
            except Exception as exc:
                if store.exists(name):  # else compacted away since the listing
                    warn_corrupt(f"{store.where}/{name}", exc)
                    corrupt.append(name)
        rows = OkRows(sum(segment.metadata.num_rows for _, segment in opened))
        for name, segment in opened:
            mark = rows.mark()
            try:
                for batch in segment.iter_batches(
                    batch_size=_BLOCK_ROWS, columns=list(LOOKUP_COLUMNS), use_threads=False
                ):
                    rows.add(batch)
            except Exception as exc:
                rows.rollback(mark)
                if store.exists(name):
                    warn_corrupt(f"{store.where}/{name}", exc)
                    corrupt.append(name)
                continue
            finally:
                release_memory()  # the segment's pages, decoded and dropped
            read.append(name)
    finally:
        for _, segment in opened:
            segment.close()
    return rows, read, corrupt


def ok_rows_of(records: pa.Table) -> OkRows:
    """:class:`OkRows` of records already in memory (a writer's, not yet written)."""
    rows = OkRows(records.num_rows)
    for batch in records.select(list(LOOKUP_COLUMNS)).to_batches(max_chunksize=_BLOCK_ROWS):
        rows.add(batch)
    return rows


class KeyIndex:
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

    def folded(self, rows: OkRows) -> KeyIndex:
        """A new index: this one with ``rows`` (read after it, so newer on equal
        ``created``). Takes ``rows`` over: its arrays are reused."""
        if not rows.read:
            return self
        new = KeyIndex()
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

    def answers_text(self, keys: Sequence[str] | pl.Series) -> list[str | None]:
        """The answer for each key given as text, in order; ``None`` where there is none."""
        if not len(self):
            return [None] * len(keys)
        wanted = keys.alias("key") if isinstance(keys, pl.Series) else pl.Series("key", keys)
        texts = _text_array(wanted.cast(pl.String).to_arrow())
        hi = np.empty(len(texts), dtype=np.uint64)
        lo = np.empty(len(texts), dtype=np.uint64)
        canonical = _key_halves(texts, hi, lo)
        positions = self.find(hi, lo)
        if not canonical.all():
            positions[~canonical] = -1
            if self.others:
                for row in np.flatnonzero(~canonical).tolist():
                    hit = self.others.get(texts[row].as_py())
                    if hit is not None:
                        positions[row] = hit[1]
        answers: list[str | None] = self.answers_at(positions).to_pylist()
        return answers

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
