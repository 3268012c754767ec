"""A token bucket: its level, as the time it will be full again, and its operations.

The limiter's schedule (:mod:`._schedule`) holds two, one of requests and one
of tokens, and does all its arithmetic through the operations here: when may
``amount`` be taken (:meth:`Bucket.ready_at`), take it (:meth:`~Bucket.debit`),
give it back (:meth:`~Bucket.credit`), believe the server has less
(:meth:`~Bucket.lower_to`) or more (:meth:`~Bucket.raise_to`), move everything
later (:meth:`~Bucket.shift`), and the opening: hold more of the server's window
until that is spent, first when the limit is learned (or, in a new process, from the
window an earlier one read, until the server speaks), then whenever the server says
its window filled up again (:meth:`~Bucket.open`, :meth:`~Bucket.close`).
Pure arithmetic on given times: no clock and no lock (the limiter holds the lock).
"""

from __future__ import annotations

import math

__all__ = ["OPEN_SHARE", "WINDOW_SHARE", "Bucket"]

#: The share of the server's own window (how much its bucket holds when full, told by
#: its headers) that this bucket may hold. Half: requests released together reach the
#: server late and spread out, and a bucket as large as the server's would run it dry
#: at every change of pace (benchmarks/rate_limits.py: 0.8 s of a 1 s window halved
#: the 429s of 1 s, 0.5 s halved them again). A server that holds a whole minute
#: (OpenAI's) then lets half a minute's requests go at once instead of a ramp.
WINDOW_SHARE = 0.5
#: The share of the server's window the bucket holds at an opening: the first headers
#: that say what the window holds, nothing waiting (or a window remembered from an earlier
#: process, before any reply), and later headers saying it is that
#: full again (nothing waiting). With :data:`WINDOW_SHARE`
#: alone, a client facing a 1 s window starts with half of it and stays 0.5 s behind
#: one that used it all (100 requests at 20/s: 4.5 s where 4.0 s would do); all of it
#: at once earns 429s, as requests released together reach the server spread out and
#: the steady ones after them arrive first (benchmarks/processes.py; the Redis
#: limiter's script opens the same way, once per limit).
OPEN_SHARE = 0.75
#: :attr:`Bucket.opening` before the opening, and once it is spent (while open, it is
#: the capacity the bucket closes back to).
NOT_OPENED, SPENT = 0.0, -1.0


class Bucket:
    """One token bucket, kept as the single time at which it will be full again.

    With ``full_at`` the level at any time ``t`` (not before the latest debit)
    is ``capacity - rate * max(0, full_at - t)``: a debit pushes ``full_at``
    later, a refund pulls it earlier, and debits committed for future start
    times are simply part of it. One number per bucket keeps every operation
    O(1) in whatever order reservations, refunds and pauses come. A refund
    made while later reservations are already committed goes to whoever comes
    next: starts already handed out never move earlier. An unlimited bucket
    (``limit is None``) allows everything at once.
    """

    __slots__ = ("capacity", "full_at", "limit", "opening", "rate", "reopens")

    def __init__(self) -> None:
        self.limit: float | None = None  # per minute
        self.rate = 0.0  # per second
        self.capacity = 0.0
        self.full_at = -math.inf
        #: :data:`NOT_OPENED`, :data:`SPENT`, or while open the capacity to close back to.
        self.opening = NOT_OPENED
        #: Whether a spent opening may come again (:meth:`open`); not after a 429, which an
        #: opening of several clients reading the same full window at once may have caused.
        self.reopens = True

    def configure(
        self, limit: float | None, now: float, burst_seconds: float, floor: float,
        window: float | None = None, *, resize: bool = False,
    ) -> None:  # fmt: skip
        """Use a new per-minute limit, keeping the current level (within the new capacity).

        ``window`` is what the server's own bucket holds (:data:`WINDOW_SHARE` of it
        may be held here), None when its headers did not say. Without a window, a
        bucket whose limit did not change keeps its size (a sharer that has not read
        the window keeps the size another one set), unless ``resize`` (which also ends an
        opening: the window it rested on was stale). A new limit may open once more (:meth:`open`).
        """
        if limit is None:
            self.limit = None
            return
        if resize:
            self.drop_opening(now)
        if limit == self.limit and window is None and not resize:
            return
        capacity = max(floor, limit * burst_seconds / 60, WINDOW_SHARE * min(window or 0.0, limit))
        if limit == self.limit and self.opening > 0:  # open: it closes to the new size
            self.opening, capacity = capacity, max(capacity, self.capacity)
        elif limit != self.limit:
            self.opening = NOT_OPENED
        if limit == self.limit and capacity == self.capacity:
            return
        # A bucket that was unlimited starts full: the server's remaining count,
        # observed right after, lowers it if the server disagrees.
        level = self.level_at(now) if self.limit is not None else math.inf
        self.limit = limit
        self.rate = limit / 60
        self._resize(capacity, level, now)

    def _resize(self, capacity: float, level: float, now: float) -> None:
        self.capacity = capacity
        self.full_at = now + (capacity - min(level, capacity)) / self.rate

    def open(self, window: float, level: float, now: float) -> bool:
        """The opening: hold :data:`OPEN_SHARE` of ``window`` (what the server's bucket
        holds), filled up to ``level`` (what it has left, less what is in flight), until
        :meth:`close` finds it spent. The first time for a limit whatever ``level``; again
        once spent only when ``level`` fills the opening (the client paused: a check's
        verdict, a slow step of its own, and the server's window filled up meanwhile); never
        after a 429 (:attr:`reopens`), not even the first time: the first headers may come
        with the 429 of a window that other clients of the key run dry. False if it is open
        now, would hold no more than now, or may not open again (yet)."""
        if self.limit is None or self.opening > 0 or not self.reopens:
            return False
        capacity = OPEN_SHARE * min(window, self.limit)
        if capacity <= self.capacity or (self.opening == SPENT and level < capacity):
            return False
        self.opening = self.capacity
        self._resize(capacity, self.level_at(now), now)
        self.raise_to(level, now)
        return True

    def open_remembered(self, window: float, in_flight: float, now: float) -> None:
        """The opening a first reply saying ``window`` is all left would make, less what is in
        flight, from an earlier process's reading of it; only if the bucket never opened."""
        if self.limit is not None and self.opening == NOT_OPENED:
            self.open(window, OPEN_SHARE * min(window, self.limit) - in_flight, now)

    def drop_opening(self, now: float) -> None:
        """End an opening now, for good: back to the size it had."""
        if self.opening > 0:
            self._resize(self.opening, self.level_at(now), now)
            self.opening = SPENT

    def forget_opening(self, now: float) -> None:
        """End an opening now (:meth:`drop_opening`), and let headers open the bucket again as
        if it never had (unless after a 429, :attr:`reopens`): the server spoke, and what it
        says replaces an earlier process's."""
        self.drop_opening(now)
        self.opening = NOT_OPENED if self.reopens else SPENT

    def close(self, now: float) -> None:
        """An open bucket down to the size it had goes back to that size, for good."""
        if self.opening > 0 and self.level_at(now) <= self.opening:
            self.drop_opening(now)

    def level_at(self, t: float) -> float:
        if self.limit is None:
            return math.inf
        return self.capacity - self.rate * max(0.0, self.full_at - t)

    def ready_at(self, t: float, amount: float) -> float:
        """The earliest time from ``t`` on at which ``amount`` may be taken.

        A request larger than the whole bucket waits until the bucket is full
        and then takes it into debt, so it is slow but never stuck.
        """
        if self.limit is None or amount <= 0:
            return t
        need = min(amount, self.capacity)
        return max(t, self.full_at - (self.capacity - need) / self.rate)

    def debit(self, t: float, amount: float) -> None:
        if self.limit is not None:
            self.full_at = max(self.full_at, t) + amount / self.rate

    def credit(self, now: float, amount: float) -> None:
        """Give back ``amount`` (take more if negative); a full bucket cannot overflow."""
        if self.limit is not None:
            self.full_at = max(now, max(self.full_at, now) - amount / self.rate)

    def lower_to(self, level: float, now: float) -> None:
        """Make the level at ``now`` at most ``level``; never raise it."""
        if self.limit is not None:
            self.full_at = max(self.full_at, now + (self.capacity - level) / self.rate)

    def raise_to(self, level: float, now: float) -> None:
        """Make the level at ``now`` at least ``level`` (within the capacity); never lower it."""
        if self.limit is not None:
            self.full_at = min(self.full_at, now + (self.capacity - min(level, self.capacity)) / self.rate)

    def shift(self, delta: float) -> None:
        if self.limit is not None:
            self.full_at += delta

    def shared(self) -> list[float | None]:
        """Everything the bucket is, for a state shared between processes."""
        return [self.limit, self.rate, self.capacity, self.full_at, self.opening]

    def load(self, state: list[float | None]) -> None:
        """Become the bucket :meth:`shared` described."""
        limit, rate, capacity, full_at, opening = state
        self.limit = limit
        self.rate, self.capacity, self.full_at = float(rate or 0), float(capacity or 0), float(full_at or 0)
        self.opening = float(opening or 0)

