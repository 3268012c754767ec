"""A token bucket: its level, as the time it will be full again, and six operations.

The limiter's schedule (:mod:`._schedule`) holds two, one of requests and one
of tokens, and does all its arithmetic through the operations here: when may
``amount`` be taken (:meth:`Bucket.ready_at`), take it (:meth:`~Bucket.debit`),
give it back (:meth:`~Bucket.credit`), believe the server has less
(:meth:`~Bucket.lower_to`) or more (:meth:`~Bucket.raise_to`), move everything
later (:meth:`~Bucket.shift`).
Pure arithmetic on given times: no clock and no lock (the limiter holds the lock).
"""

from __future__ import annotations

import math

__all__ = ["WINDOW_SHARE", "Bucket"]

#: The share of the server's own window (how much its bucket holds when full, told by
#: its headers) that this bucket may hold. Half: requests released together reach the
#: server late and spread out, and a bucket as large as the server's would run it dry
#: at every change of pace (benchmarks/rate_limits.py: 0.8 s of a 1 s window halved
#: the 429s of 1 s, 0.5 s halved them again). A server that holds a whole minute
#: (OpenAI's) then lets half a minute's requests go at once instead of a ramp.
WINDOW_SHARE = 0.5


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

    __slots__ = ("capacity", "full_at", "limit", "rate")

    def __init__(self) -> None:
        self.limit: float | None = None  # per minute
        self.rate = 0.0  # per second
        self.capacity = 0.0
        self.full_at = -math.inf

    def configure(
        self, limit: float | None, now: float, burst_seconds: float, floor: float,
        window: float | None = None,
    ) -> None:  # fmt: skip
        """Use a new per-minute limit, keeping the current level (within the new capacity).

        ``window`` is what the server's own bucket holds (:data:`WINDOW_SHARE` of it
        may be held here), None when its headers did not say.
        """
        if limit is None:
            self.limit = None
            return
        if limit == self.limit and window is None:
            return  # nothing new (a sharer that has not read the window keeps the size it set)
        capacity = max(floor, limit * burst_seconds / 60, WINDOW_SHARE * min(window or 0.0, limit))
        if limit == self.limit and capacity == self.capacity:
            return
        # A bucket that was unlimited starts full: the server's remaining count,
        # observed right after, lowers it if the server disagrees.
        level = self.level_at(now) if self.limit is not None else math.inf
        self.limit = limit
        self.rate = limit / 60
        self.capacity = capacity
        self.full_at = now + (self.capacity - min(level, self.capacity)) / self.rate

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
        return [self.limit, self.rate, self.capacity, self.full_at]

    def load(self, state: list[float | None]) -> None:
        """Become the bucket :meth:`shared` described."""
        limit, rate, capacity, full_at = state
        self.limit = limit
        self.rate, self.capacity, self.full_at = float(rate or 0), float(capacity or 0), float(full_at or 0)

