"""Every row's answer during a run, held compactly until the output column is built.

A run used to keep one Python ``str`` per answered row (~60 bytes each, plus its
list slot) to the end: at a million rows of short answers, most of what it held.
:class:`Answers` keeps the answers found in the cache as the Arrow array the
lookup returned, and the answers that arrive as UTF-8 bytes in one growing
buffer with their end offsets (the layout of an Arrow string array; each buffer in a
memory map of its own, see :class:`_Mapped`), and per row
one 4-byte number: which answer it has. Equal short answers (a label set) are
stored once. The output column is then one Arrow ``take`` (:meth:`to_arrow`),
with no Python string per row on the way.

Rows are read and written as in a list (``answers[row]``, ``answers[row] = text``),
so the code that fills it stays the same. An answer that is not valid UTF-8 text
(a lone surrogate a JSON reply may carry) cannot be Arrow data: it is kept as the
``str`` it is, and :meth:`to_arrow` then returns ``None`` so that the caller builds
the column from Python strings as before.

>>> answers = Answers(3)
>>> answers[0] = "positive"; answers.set_rows([1, 2], "negative")
>>> answers[:], answers.to_arrow().to_pylist()
(['positive', 'negative', 'negative'], ['positive', 'negative', 'negative'])
"""

from __future__ import annotations

import mmap
import operator
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np
import pyarrow as pa

__all__ = ["Answers"]

#: Answers up to this long are shared between rows that got the same one, up to
#: SHARED_ANSWERS distinct answers (a label set; ~1 MB at most).
SHARED_ANSWER_CHARS = 64
SHARED_ANSWERS = 10_000

_UNSET = -1  # no answer given here: the cache's, if any
_NONE = -2  # set to None here (over whatever the cache had)
_INT32_MAX = 2**31 - 1
_ITER_ROWS = 10_000
_END = struct.Struct("<q")
_SPAN = struct.Struct("<qq")
_pack_end = _END.pack_into


class _Mapped:
    """A buffer that grows, in an anonymous memory map of its own (``size`` bytes used).

    The answers of a million rows are ~20 MB, grown a few bytes at a time. In the
    process's heap, each step past the room there is moves the buffer and leaves a
    hole that only smaller blocks can use (~35 MB more heap than in use at 1M rows,
    measured); a map of its own is doubled into a new one, and the old is given back
    to the system whole once nothing views it. Pages not written yet are not resident.
    """

    __slots__ = ("map", "size")

    def __init__(self, capacity: int = 1 << 16) -> None:
        self.map = mmap.mmap(-1, capacity)
        self.size = 0

    def reserve(self, size: int) -> mmap.mmap:
        """Room for ``size`` bytes; the map to write them to."""
        if size > len(self.map):
            bigger = mmap.mmap(-1, max(size, 2 * len(self.map)))
            with memoryview(bigger) as to, memoryview(self.map) as of:
                to[: self.size] = of[: self.size]
            self.map = bigger  # the old map goes when the last Arrow buffer viewing it does
        return self.map

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return self.map[: self.size]

    def view(self, size: int) -> memoryview:
        return memoryview(self.map)[:size]


class Answers(Sequence[str | None]):
    """``n_rows`` answers (``None`` where there is none); ``found`` the cache's answers
    (an Arrow string array of ``n_rows``, null where it has none), if it was looked up."""

    __slots__ = ("_at", "_data", "_ends", "_found", "_odd", "_shared")

    def __init__(self, n_rows: int, found: pa.Array | pa.ChunkedArray | None = None) -> None:
        if found is not None and len(found) != n_rows:
            raise ValueError(f"{len(found)} cached answers for {n_rows} rows")
        self._found = found
        self._at = np.full(n_rows, _UNSET, dtype=np.int32)  # per row: its answer's number
        self._data = _Mapped()  # the answers given here, UTF-8, one after the other
        self._ends = _Mapped()  # int64: where each one ends in _data (the first starts at 0)
        self._ends.size = _END.size
        self._shared: dict[str, int] = {}  # short answer -> its number
        self._odd: dict[int, str] = {}  # row -> an answer that is not UTF-8 text

    # ---- writing
    def __setitem__(self, row: int, answer: str | None) -> None:
        row = self._row(row)
        self._odd.pop(row, None)
        if answer is None:
            self._at[row] = _NONE
        else:
            self._at[row] = self._add(answer, row)

    def set_rows(self, rows: Sequence[int], answer: str) -> None:
        """Give every row in ``rows`` the same ``answer`` (stored once)."""
        if len(rows) == 1:
            self[rows[0]] = answer
            return
        rows = [self._row(row) for row in rows]
        for row in rows:
            self._odd.pop(row, None)
        number = self._add(answer, rows[0])
        if number == _NONE:  # not UTF-8 text: kept as it is, for every row
            self._odd.update(dict.fromkeys(rows, answer))
        self._at[rows] = number

    def _add(self, answer: str, row: int) -> int:
        """The number of ``answer``, stored now unless it is a short one stored already."""
        short = len(answer) <= SHARED_ANSWER_CHARS
        if short:
            known = self._shared.get(answer)
            if known is not None:
                return known
        try:
            encoded = answer.encode("utf-8")
        except UnicodeEncodeError:
            self._odd[row] = answer
            return _NONE
        data, ends = self._data, self._ends
        start, at = data.size, ends.size
        number = (at >> 3) - 1  # 8 bytes an end
        if number >= _INT32_MAX and self._at.dtype == np.int32:
            self._at = self._at.astype(np.int64)
        end = start + len(encoded)
        room = data.map if end <= len(data.map) else data.reserve(end)
        room[start:end] = encoded
        data.size = end
        _pack_end(ends.map if at + 8 <= len(ends.map) else ends.reserve(at + 8), at, end)
        ends.size = at + 8
        if short and len(self._shared) < SHARED_ANSWERS:
            self._shared[answer] = number
        return number

    # ---- reading
    def __len__(self) -> int:
        return len(self._at)

    @overload
    def __getitem__(self, index: int) -> str | None: ...

    @overload
    def __getitem__(self, index: slice) -> list[str | None]: ...

    def __getitem__(self, index: int | slice) -> str | list[str | None] | None:
        if isinstance(index, slice):
            return [self._get(row) for row in range(*index.indices(len(self)))]
        return self._get(self._row(index))

    def _get(self, row: int) -> str | None:
        if self._odd and row in self._odd:
            return self._odd[row]
        number = int(self._at[row])
        if number >= 0:
            start, end = _SPAN.unpack_from(self._ends.map, _END.size * number)
            return self._data.map[start:end].decode("utf-8")
        if number == _UNSET and self._found is not None:
            value: str | None = self._found[row].as_py()
            return value
        return None

    def __iter__(self) -> Iterator[str | None]:
        column = self.to_arrow()
        if column is None:
            yield from (self._get(row) for row in range(len(self)))
            return
        for start in range(0, len(column), _ITER_ROWS):
            yield from column.slice(start, _ITER_ROWS).to_pylist()

    def tolist(self) -> list[str | None]:
        return list(self)

    def to_arrow(self) -> pa.Array | pa.ChunkedArray | None:
        """Every row's answer as one Arrow ``large_string`` array (null for ``None``), built
        in one take; ``None`` if an answer is not UTF-8 text (see the module docstring)."""
        parts = self._take_from()
        if parts is None:
            return None
        values, taken = parts
        if taken is None:
            return values
        column = values.take(taken)
        del values  # the take copied: nothing views the maps any more
        return column

    def to_arrow_chunks(self, rows: int) -> Iterator[pa.Array | pa.ChunkedArray] | None:
        """:meth:`to_arrow` a take of ``rows`` rows at a time, each made when the one before
        is consumed: a caller that converts them (polars) holds one chunk, not the column, at
        once. Consume it whole before the answers change. ``None`` as for :meth:`to_arrow`."""
        parts = self._take_from()
        if parts is None:
            return None
        return self._chunks(*parts, rows)

    @staticmethod
    def _chunks(
        values: pa.Array | pa.ChunkedArray, taken: pa.Array | None, rows: int
    ) -> Iterator[pa.Array | pa.ChunkedArray]:
        for start in range(0, len(values) if taken is None else len(taken), rows):
            if taken is None:
                yield values.slice(start, rows)
            else:
                yield values.take(taken.slice(start, rows))

    def _take_from(self) -> tuple[pa.Array | pa.ChunkedArray, pa.Array | None] | None:
        """What :meth:`to_arrow` takes from and the rows' indices in it (``None``: it is the
        column as it is); ``None`` if an answer is not UTF-8 text."""
        if self._odd:
            return None
        at, found = self._at, self._found
        given = self._ends.size // _END.size - 1
        if found is not None and not given and not (at == _NONE).any():
            large = found if found.type == pa.large_string() else found.cast(pa.large_string())
            return large, None
        # The answers given here, then (with a lookup) the cache's: row r's is at given + r.
        offsets = pa.py_buffer(self._ends.view(self._ends.size))
        data = pa.py_buffer(self._data.view(self._data.size))
        values = pa.LargeStringArray.from_buffers(given, offsets, data)
        if found is None:
            # The row numbers as they are: no copy, and none of 8 bytes a row (a take's indices
            # may be int32), unless some rows have no answer and need a mask.
            missing = at < 0
            return values, pa.array(at, mask=missing) if missing.any() else pa.array(at)
        indices = at.astype(np.int64)
        unset = at == _UNSET
        indices[unset] = given + np.flatnonzero(unset)
        chunks = found.chunks if isinstance(found, pa.ChunkedArray) else [found]
        values = pa.concat_arrays([values, *(c.cast(pa.large_string()) for c in chunks)])
        return values, pa.array(indices, mask=indices < 0)

    def _row(self, index: int) -> int:
        row = operator.index(index)
        if row < 0:
            row += len(self)
        if not 0 <= row < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        return row

    @classmethod
    def of(cls, values: Iterable[str | None]) -> Answers:
        """Answers holding ``values`` in order (tests and callers that have a list)."""
        given = list(values)
        answers = cls(len(given))
        for row, value in enumerate(given):
            if value is not None:
                answers[row] = value
        return answers
