"""The limiter's schedule: when each reservation may start, as arithmetic on given times.

Reserving does not queue and poll. :meth:`Schedule.place` computes the
earliest time at which both buckets (:mod:`._bucket`) allow a request, no
earlier than the previous reservation's start (so waiters are served in
arrival order, and a large request is never overtaken by small ones), and
commits the debit at that time right away; the waiter then sleeps until it.
One sleep per request, no timers and no waiter queue. A 429's pause moves
every waiting start back by its length (:meth:`Schedule.pause`), keeping the
spacing between waiters.

Like the buckets, this holds no lock, no clock and no event loop: the
limiter (:mod:`._limiter`) calls it with the lock held and the time read.
"""

from __future__ import annotations

import math
from typing import Any

from ._bucket import Bucket

__all__ = ["ACTIVE", "DONE", "QUEUED", "SCHEDULED", "Reservation", "Schedule"]

QUEUED = "queued"  # held back behind the probe, no start time yet
SCHEDULED = "scheduled"  # start time committed, waiting for it
ACTIVE = "active"  # acquire returned: the request may be in flight
DONE = "done"  # settled or cancelled

# asyncio may fire a timer up to one clock tick early; another sleep for less
# than a millisecond would not change what the server sees.
_EARLY_WAKE_SECONDS = 1e-3


class Reservation:
    """One request's place in the limiter's schedule, from ``acquire`` to ``settle``.

    ``tokens`` is what was reserved, ``start`` the time (on the limiter's
    clock) the request was allowed to start, ``state`` one of ``"queued"``,
    ``"scheduled"``, ``"active"``, ``"done"``. Hand it back to exactly one of
    :meth:`RateLimiter.settle` or :meth:`RateLimiter.cancel`; later calls are
    ignored, so a ``finally: cancel(...)`` after a settle is harmless.
    """

    __slots__ = (
        "_charged_request",
        "_charged_tokens",
        "_shift_seen",
        "arrived",
        "start",
        "state",
        "tokens",
    )

    def __init__(self, tokens: int, arrived: float):
        self.tokens = tokens
        self.arrived = arrived
        self.start: float | None = None
        self.state = QUEUED
        # Which buckets this reservation was debited from: a bucket that was
        # unlimited (unknown) at acquire time has nothing to refund later.
        self._charged_request = False
        self._charged_tokens = False
        # The schedule's pause shift when the start was computed; a pause since
        # then moves the start later by the difference.
        self._shift_seen = 0.0

    def __repr__(self) -> str:
        return f"Reservation(tokens={self.tokens}, start={self.start}, state={self.state})"


class Schedule:
    """Two buckets, one of requests and one of tokens, and the FIFO order over them."""

    __slots__ = ("_last_start", "_paused_until", "_pending", "_shift", "requests", "tokens")

    def __init__(self) -> None:
        self.requests = Bucket()
        self.tokens = Bucket()
        self._last_start = -math.inf  # start of the latest reservation: the FIFO anchor
        self._pending = 0  # reservations with a start time that have not started yet
        self._paused_until = -math.inf
        self._shift = 0.0  # total time pauses pushed the schedule back

    def configure(
        self, rpm: float | None, tpm: float | None, now: float, burst_seconds: float,
        windows: tuple[float | None, float | None] = (None, None), *, resize: bool = False,
    ) -> None:  # fmt: skip
        """Use these per-minute limits (None: unlimited), keeping the current levels;
        ``windows``: what the server's request and token buckets hold, where known
        (``resize``: size the buckets by them even where unknown, see :meth:`Bucket.configure`)."""
        self.requests.configure(rpm, now, burst_seconds, 1.0, windows[0], resize=resize)
        self.tokens.configure(tpm, now, burst_seconds, 0.0, windows[1], resize=resize)

    def open_remembered(
        self, windows: tuple[float | None, float | None], in_flight: tuple[float, float], now: float
    ) -> None:
        """A new process's first burst from the windows an earlier one read, less the requests
        and tokens in flight (:meth:`Bucket.open_remembered`), as if its headers had said them."""
        for bucket, window, flying in zip((self.requests, self.tokens), windows, in_flight, strict=True):
            if window is not None:
                bucket.open_remembered(window, flying, now)

    def forget_openings(self, now: float) -> None:
        """The server spoke: openings from a remembered window end (:meth:`Bucket.forget_opening`)."""
        self.requests.forget_opening(now)
        self.tokens.forget_opening(now)

    @property
    def waiting(self) -> bool:
        """Are reservations placed that have not started yet?"""
        return self._pending > 0

    def place(self, reservation: Reservation, now: float) -> None:
        """Commit ``reservation`` at the earliest time both buckets allow."""
        earliest = max(now, self._paused_until)
        if self._pending:  # only a reservation still waiting can be overtaken
            earliest = max(earliest, self._last_start)
        start = max(
            self.requests.ready_at(earliest, 1),
            self.tokens.ready_at(earliest, reservation.tokens),
        )
        self.requests.debit(start, 1)
        self.tokens.debit(start, reservation.tokens)
        self.requests.close(now)  # an opening that is spent (see Bucket.open)
        self.tokens.close(now)
        reservation._charged_request = self.requests.limit is not None
        reservation._charged_tokens = self.tokens.limit is not None
        reservation.start = start
        reservation._shift_seen = self._shift
        reservation.state = SCHEDULED
        self._last_start = start
        self._pending += 1

    def delay(self, reservation: Reservation, now: float) -> float:
        """Seconds until a scheduled ``reservation`` may start; when (about) due, it starts.

        A pause since the start was computed moves it back by the same amount
        (keeping the spacing between waiters), and nobody starts while a pause
        lasts. A reservation that starts becomes ``"active"`` and its delay is 0.
        """
        assert reservation.start is not None
        start = max(reservation.start + self._shift - reservation._shift_seen, self._paused_until)
        reservation.start = start
        reservation._shift_seen = self._shift
        delay = start - now
        if delay > _EARLY_WAKE_SECONDS:
            return delay
        reservation.state = ACTIVE
        self._pending -= 1
        return 0.0

    def refund(self, reservation: Reservation, used_tokens: int, now: float) -> None:
        """An active reservation used ``used_tokens``: give back the rest, or take the excess."""
        if reservation._charged_tokens:
            self.tokens.credit(now, reservation.tokens - max(used_tokens, 0))

    def release(self, reservation: Reservation, now: float) -> None:
        """A placed reservation was never sent: give back its request and its tokens."""
        if reservation.state == SCHEDULED:
            self._pending -= 1
        if reservation._charged_request:
            self.requests.credit(now, 1)
        if reservation._charged_tokens:
            self.tokens.credit(now, reservation.tokens)

    def shared(self) -> list[Any]:
        """The whole schedule as plain data: what processes sharing a quota share."""
        return [self.requests.shared(), self.tokens.shared(), self._last_start, self._pending,
                self._paused_until, self._shift]  # fmt: skip

    def load(self, state: list[Any]) -> None:
        """Become the schedule :meth:`shared` described (reservations keep their own starts)."""
        requests, tokens, last_start, pending, paused_until, shift = state
        self.requests.load(requests)
        self.tokens.load(tokens)
        self._last_start = float(last_start)
        self._pending = int(pending)
        self._paused_until = float(paused_until)
        self._shift = float(shift)

    def forget(self, count: int, requests: float, tokens: float, now: float, last_start: float) -> None:
        """``count`` placed reservations will never start (their process died): give back
        the ``requests`` and ``tokens`` they were charged. ``last_start`` is the latest
        start still waiting: newcomers queue behind it, not behind the dead ones."""
        self._pending = max(0, self._pending - count)
        self.requests.credit(now, requests)
        self.tokens.credit(now, tokens)
        self._last_start = last_start

    def pause(self, seconds: float, now: float) -> float:
        """Nobody starts before ``now + seconds``; both buckets drained, and they open no more
        once spent (:attr:`~._bucket.Bucket.reopens`). Returns the delay added.

        Waiters already placed move back by the length of the pause, keeping
        their spacing, rather than all starting together when it ends.
        """
        resume = max(self._paused_until, now + seconds)
        delta = max(0.0, resume - max(now, self._paused_until))
        self.requests.lower_to(0.0, now)
        self.tokens.lower_to(0.0, now)
        self.requests.reopens = self.tokens.reopens = False  # no opening again (Bucket.open)
        if delta and self._pending and self._last_start > now:
            # The debits of waiting reservations are committed in the
            # buckets: move them with their reservations.
            self.requests.shift(delta)
            self.tokens.shift(delta)
            self._last_start += delta
        self._shift += delta
        self._paused_until = resume
        return delta
