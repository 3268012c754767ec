"""The jobs a run still has to send, kept as row numbers until they are taken.

A million uncached rows used to be a million :class:`~llmframe._jobs.Job` objects
(a key string, a values dict, the value strings, a rows list: ~500 bytes a row),
all made by the lookup and held to the end of the run. A :class:`JobQueue` holds
the distinct prompts as their first rows (8 bytes each) and binary keys (16 bytes),
the repeats of a prompt only for prompts that repeat, and makes Jobs a window of
rows at a time when the planner (or the claims) reaches them: a Job lives only
while it is queued near the front, in flight, or waiting to be sent again.

The queue is the subset of a ``deque`` the planner and the claims use: ``popleft``,
``[0]``, ``extendleft``, ``len``. Iterating it makes every job left (the Batch API
path, which lays every request out at once, does so); a slice is a look at the
jobs ahead, made afresh (the cost estimate samples rows that way) and not the jobs
the queue will hand out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import chain
from typing import cast, overload

import numpy as np

from ._errors import ConfigError
from ._jobs import Job
from ._keys import row_digests

__all__ = ["JobQueue", "distinct_rows"]

#: Rows rendered at once to make jobs (a window of the frame; at most this many jobs).
WINDOW_ROWS = 2048
#: The rows taken are dropped from the arrays (the rest copied) once at least this many and
#: half of them are taken, and when all are: the queue shrinks as a run goes (by halves, so the
#: copies add up to one of the arrays at most) instead of holding 20 bytes a row to the end.
TRIM_ROWS = 1 << 16


def _every_row(rows: np.ndarray, n: int) -> bool:
    """Whether ascending, distinct ``rows`` are all of ``0 .. n - 1`` (an uncached run's)."""
    return len(rows) == n and n > 0 and int(rows[-1]) == n - 1


def distinct_rows(digests: bytes | bytearray, rows: np.ndarray) -> tuple[np.ndarray, dict[int, list[int]]]:
    """The first row of each distinct key among ``rows`` (ascending), and for each key that
    repeats, its first row -> the other rows (ascending). ``digests`` holds 16 bytes a row.

    Sorted on the keys' first 8 bytes, vectorized; only rows whose first 8 bytes tie
    (repeats, in practice) are grouped in Python, by the whole key.

    >>> d = bytes(16) + bytes([1]) * 16 + bytes(16)
    >>> first, repeats = distinct_rows(d, np.arange(3))
    >>> first.tolist(), repeats
    ([0, 1], {0: [2]})
    """
    if len(rows) < 2:
        return rows, {}
    heads = np.frombuffer(digests, dtype="<u8")[0::2]
    # Every row (an uncached run): the keys as they are, not a copy of them in row order.
    head = heads if _every_row(rows, len(heads)) else heads[rows]
    # Sorted once to see whether any tie (8 bytes a row); argsorted (and so 16 more) only then.
    ordered = np.sort(head)
    if not (ordered[1:] == ordered[:-1]).any():
        return rows, {}
    order = np.argsort(head, kind="stable")
    ordered = head[order]
    tied = np.flatnonzero(ordered[1:] == ordered[:-1])
    in_tie = np.zeros(len(rows), dtype=bool)
    in_tie[tied] = True
    in_tie[tied + 1] = True
    groups: dict[bytes, list[int]] = {}
    for row in rows[np.sort(order[in_tie])].tolist():  # ascending: a group's first is its first row
        groups.setdefault(bytes(digests[16 * row : 16 * row + 16]), []).append(row)
    repeats = {group[0]: group[1:] for group in groups.values() if len(group) > 1}
    if not repeats:
        return rows, {}
    dropped = np.fromiter(chain.from_iterable(repeats.values()), dtype=rows.dtype)
    return rows[~np.isin(rows, dropped, assume_unique=True)], repeats


class JobQueue(Sequence[Job]):
    """Jobs to send, in order: those put in front, then the ones still kept as rows."""

    __slots__ = ("_fields", "_firsts", "_front", "_keys", "_next", "_prefix", "_repeats", "_sources", "on_changed")

    def __init__(
        self,
        jobs: Iterable[Job] = (),
        *,
        fields: Sequence[str] = (),
        sources: Sequence[Sequence[str | None]] = (),
        digests: bytes | bytearray = b"",
        firsts: np.ndarray | None = None,
        repeats: Mapping[int, list[int]] | None = None,
        prefix: bytes = b"",
    ) -> None:
        """``jobs`` made already; or the rows ``firsts`` (ascending), each a distinct prompt
        with its key in ``digests`` (16 bytes a row of the frame, keyed with ``prefix`` by
        :func:`~llmframe._keys.row_digests`) and its values in ``sources`` (one rendered
        column per field, sliceable), ``repeats`` its other rows."""
        self._front: deque[Job] = deque(jobs)
        self._prefix = prefix
        #: Told of each job whose row changed since it was keyed (not queued); unset, that raises.
        self.on_changed: Callable[[Job], None] | None = None
        self._fields = tuple(fields)
        self._sources = tuple(sources)
        rows = np.zeros(0, dtype=np.int32) if firsts is None else np.asarray(firsts)
        # Row numbers in 4 bytes where they fit (every frame below 2**31 rows), not 8.
        narrow = len(rows) and rows[-1] < 2**31
        self._firsts = rows.astype(np.int32 if narrow else np.int64, copy=False)
        keys = np.frombuffer(digests, dtype="V16") if len(rows) else np.zeros(0, dtype="V16")
        # Only the rows to send: 16 bytes each. All of them (an uncached run): ``digests`` as it
        # is, not a copy beside it (the caller keeps it unchanged, as it is the rows' keys).
        self._keys = keys if not len(rows) or _every_row(rows, len(keys)) else keys[rows]
        self._repeats = dict(repeats or {})
        self._next = 0

    # ---- the deque's side ------------------------------------------------------------------
    def __len__(self) -> int:
        """Jobs left (rows still kept are counted; one found changed when made drops out)."""
        return len(self._front) + len(self._firsts) - self._next

    def __bool__(self) -> bool:
        # Made here, so that True means popleft() has a job (a window's rows may all have changed).
        while not self._front and self._next < len(self._firsts):
            self._make()
        return bool(self._front)

    def popleft(self) -> Job:
        if not self._front and not self:
            raise IndexError("pop from an empty job queue")
        return self._front.popleft()

    def extendleft(self, jobs: Iterable[Job]) -> None:
        self._front.extendleft(jobs)

    def extend(self, jobs: Iterable[Job]) -> None:
        """Append ``jobs`` after every job left (the rows still kept are made first)."""
        self._make_all()
        self._front.extend(jobs)

    def clear(self) -> None:
        self._front.clear()
        self._next = len(self._firsts)
        self._repeats.clear()

    @overload
    def __getitem__(self, index: int) -> Job: ...

    @overload
    def __getitem__(self, index: slice) -> list[Job]: ...

    def __getitem__(self, index: int | slice) -> Job | list[Job]:
        if isinstance(index, slice):
            return [self._look(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"job {index} out of range for {len(self)} jobs")
        while index >= len(self._front):
            self._make()
        return self._front[index]

    def __iter__(self) -> Iterator[Job]:
        """Every job left, in order (all of them made now, and kept)."""
        self._make_all()
        return iter(self._front)

    def detach(self) -> JobQueue:
        """A queue with every job this one has (made or not); this one is left empty."""
        other = JobQueue(self._front, prefix=self._prefix)
        other.on_changed = self.on_changed
        other._fields, other._sources, other._keys = self._fields, self._sources, self._keys
        other._firsts, other._next, other._repeats = self._firsts, self._next, self._repeats
        self._front = deque()
        self._firsts, self._keys, self._repeats, self._next = self._firsts[:0], self._keys[:0], {}, 0
        return other

    def copy(self) -> JobQueue:
        """An independent queue of the same jobs: the ones made are shared, the rest made afresh."""
        other = self.detach()
        self._front = deque(other._front)
        self._prefix, self.on_changed = other._prefix, other.on_changed
        self._fields, self._sources, self._keys = other._fields, other._sources, other._keys
        self._firsts, self._next, self._repeats = other._firsts, other._next, dict(other._repeats)
        return other

    # ---- making jobs -------------------------------------------------------------------------
    def _make(self) -> None:
        """Make the next window's jobs (at least one) into the front."""
        firsts, i = self._firsts, self._next
        if i >= len(firsts):
            raise IndexError("pop from an empty job queue")
        lo = int(firsts[i])
        j = max(i + 1, int(np.searchsorted(firsts, lo + WINDOW_ROWS, side="left")))
        hi = int(firsts[j - 1]) + 1
        rendered = [source[lo:hi] for source in self._sources]
        rows = firsts[i:j].tolist()
        taken = [[col[row - lo] for row in rows] for col in rendered]
        now, _ = row_digests(self._prefix, taken)  # keyed again: see the module docstring
        fields, repeats, front = self._fields, self._repeats, self._front
        keyed = self._keys[i:j].tobytes()
        hexed = keyed.hex()
        self._next = j
        if j == len(firsts) or (j >= TRIM_ROWS and 2 * j >= len(firsts)):
            self._drop_taken()
        same = now == keyed  # the usual case: no row changed, none to compare one by one
        if len(fields) == 1:
            (field,) = fields
            values: Iterable[dict[str, str]] = [{field: v} for v in cast(list[str], taken[0])]
        else:  # a template has one field at least
            values = [dict(zip(fields, vs, strict=True)) for vs in zip(*taken, strict=True)]
        for m, (row, fields_of) in enumerate(zip(rows, values, strict=True)):
            job = Job(hexed[32 * m : 32 * m + 32], fields_of, [row, *repeats.pop(row, ())] if repeats else [row])
            if same or now[16 * m : 16 * m + 16] == keyed[16 * m : 16 * m + 16]:
                front.append(job)
            elif self.on_changed is None:
                raise ConfigError(f"row {row} of the frame changed while the run was going; run again")
            else:
                self.on_changed(job)

    def _drop_taken(self) -> None:
        """Keep only the rows not taken yet (new arrays: a detached or copied queue may share these)."""
        n = self._next
        self._firsts, self._keys, self._next = self._firsts[n:].copy(), self._keys[n:].copy(), 0

    def _make_all(self) -> None:
        while self._next < len(self._firsts):
            self._make()

    def _look(self, i: int) -> Job:
        """The job at position ``i``: the one made, or a fresh one for a row still kept."""
        if i < len(self._front):
            return self._front[i]
        k = self._next + i - len(self._front)
        row = int(self._firsts[k])
        values = {f: cast(str, source[row]) for f, source in zip(self._fields, self._sources, strict=True)}
        return Job(self._keys[k].tobytes().hex(), values, [row, *self._repeats.get(row, ())])

    def first_rows(self) -> list[int]:
        """The first row of every job left, in order (nothing is made)."""
        made: list[int] = [job.rows[0] for job in self._front if job.rows]
        return made + cast(list[int], self._firsts[self._next :].tolist())

    def __repr__(self) -> str:
        return f"JobQueue({len(self)} jobs, {len(self._front)} made)"

