"""One RPM + TPM rate limiter, shared by every call to the same endpoint.

Every request reserves its estimated tokens (prompt + expected answer) before
it is sent, and settles them after::

    async with limiter.reserve(estimated_tokens) as slot:   # waits its turn
        reply = await send()                        # a 429 raised here pauses everyone
        slot.settle(reply.usage.total_tokens, headers=reply.headers)  # refund the rest

Two token buckets, one of requests and one of tokens, refill at limit/60 per
second and hold at most ``burst_seconds`` worth (one second by default:
servers enforce their per-minute limits over shorter windows, so spending a
whole minute's quota at once earns 429s). When each request may start is
:mod:`._schedule`'s arithmetic (FIFO, one sleep per waiter); which limits hold
is :mod:`._quota`'s; the headers are read by :mod:`._headers`; what an
attempt's outcome does to its reservation is :mod:`._reserve`'s. This module
adds the lock, the clock and the sleeping, so that one limiter serves any
number of threads and event loops at once, and the probe: until
the limits are known, one request goes at a time, and its headers set them.
Only the waiters held back behind the probe poll (every
``PROBE_POLL_SECONDS``): they wait for an event in another request's life,
not for a time, and polling keeps them free of any event loop.

:func:`~llmframe._shared_limiter.shared_limiter` hands out one limiter per
(base URL, API key, model), started from the limits an earlier process learned.
:class:`~llmframe._machine_limiter.MachineLimiter` is this limiter with its
lock widened to a file, so that every process on the machine shares it.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass

from ._errors import ConfigError
from ._headers import parse_rate_limits
from ._quota import Quota
from ._reserve import Slot
from ._retry import backoff_delay
from ._schedule import ACTIVE, DONE, QUEUED, Reservation, Schedule

__all__ = ["LimiterStats", "OnLearned", "RateLimiter", "Reservation"]

#: Told after each response: the learned ``rpm`` and ``tpm``, whether the headers
#: named a limit, and the seconds of each limit the server's window holds (None: unknown).
OnLearned = Callable[[float | None, float | None, bool, tuple[float | None, float | None]], None]

#: How often a request held back behind the probe checks whether it may go.
#: A probe is one LLM call (a second or more), so 50 ms adds little latency.
PROBE_POLL_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class LimiterStats:
    """A snapshot of what a limiter did, for the run report.

    ``waited_seconds`` sums every request's time in ``acquire``;
    ``paused_seconds`` is how much 429 pauses pushed the schedule back.
    ``reset_requests_seconds`` / ``reset_tokens_seconds`` are the last
    ``x-ratelimit-reset-*`` values seen (when the server's window is full again).
    """

    rpm: float | None
    tpm: float | None
    requests: int
    cancelled: int
    waited_seconds: float
    longest_wait_seconds: float
    pauses: int
    paused_seconds: float
    probing: bool
    learned_from_headers: bool
    reset_requests_seconds: float | None
    reset_tokens_seconds: float | None


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits for one endpoint, FIFO.

    >>> limiter = RateLimiter(rpm=500, tpm=200_000)
    >>> async def send(estimated_tokens):
    ...     async with limiter.reserve(estimated_tokens) as slot:
    ...         ...  # the request; then slot.settle(used_tokens, headers=reply_headers)

    ``rpm`` / ``tpm`` given here are always respected; limits left out are
    learned from the server's headers (see the module docstring). ``clock``
    and ``sleep`` are injectable so that timing tests never sleep. All state
    is guarded by a ``threading.Lock`` and contains nothing tied to an event
    loop, so one limiter may serve any number of threads and loops at once.
    """

    #: Whether the first headers that say how much the server's window holds (or the window an
    #: earlier process read, until a reply) open the bucket (:meth:`~._bucket.Bucket.open`). Off for
    #: the machine-wide limiter: there, several processes' sends bunched after a stall of the machine
    #: found a quarter of the window left and earned 429s (1-5 in 6 of 18 four-process runs, 2 of 82
    #: requests in CI) for 2-5% more of the binding limit, where 429s are to stay under 1% of requests.
    opens = True

    __slots__ = (
        "_burst_seconds", "_cancelled", "_clock", "_granted", "_in_flight", "_lock", "_longest_wait",
        "_paused_seconds", "_pauses", "_probe", "_queue", "_quota", "_schedule", "_sleep",
        "_waited", "on_learned",
    )  # fmt: skip

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        burst_seconds: float = 1.0,
    ):
        if not (math.isfinite(burst_seconds) and burst_seconds > 0):
            raise ConfigError(f"burst_seconds must be a positive number, got {burst_seconds!r}")
        # A context manager: the machine-wide limiter widens it to a file lock.
        self._lock: AbstractContextManager[object] = threading.Lock()
        self._clock = clock
        # Looked up at call time rather than bound here, so nothing refers to
        # a particular event loop.
        self._sleep: Callable[[float], Awaitable[None]] = sleep or asyncio.sleep
        self._burst_seconds = float(burst_seconds)
        self._quota = Quota(rpm, tpm)
        self._schedule = Schedule()
        self._probe: Reservation | None = None
        self._queue: deque[Reservation] = deque()  # waiters held back behind the probe
        self._granted = 0
        self._in_flight = [0, 0]  # requests started and not settled, and their tokens
        self._cancelled = 0
        self._waited = 0.0
        self._longest_wait = 0.0
        self._pauses = 0
        self._paused_seconds = 0.0
        #: Told what was learned after each response, outside the lock (to persist it).
        self.on_learned: OnLearned | None = None
        self._configure(clock())

    def remember(
        self, rpm: float | None, tpm: float | None, window_seconds: tuple[float | None, float | None] = (None, None)
    ) -> None:
        """Start from limits an earlier process learned, and the seconds of each limit its window held
        (they open the buckets, :attr:`opens`): no probe; the first reply's headers replace them."""
        with self._lock:
            self._quota.remember(rpm, tpm, window_seconds)
            now = self._clock()
            self._configure(now)
            windows = self._quota.windows if self.opens and self._quota.remembered else (None, None)
            self._schedule.open_remembered(windows, self._flying(), now)
            self._admit_queued(now)

    # -- limits ---------------------------------------------------------------

    @property
    def rpm(self) -> float | None:
        """The requests-per-minute limit in force (given or learned), or None for none (yet)."""
        return self._schedule.requests.limit

    @property
    def tpm(self) -> float | None:
        """The tokens-per-minute limit in force (given or learned), or None for none (yet)."""
        return self._schedule.tokens.limit

    def set_limits(self, rpm: float | None = None, tpm: float | None = None) -> None:
        """Set user-given limits; None leaves that limit as it is.

        A given limit always holds, even when the server's headers allow more;
        when the server says less, the lower value wins (the server is the truth).
        """
        with self._lock:
            self._quota.give(rpm, tpm)
            now = self._clock()
            self._configure(now)
            self._admit_queued(now)  # giving both limits ends probing

    def fits(self, tokens: int) -> bool:
        """False if ``tokens`` exceeds the TPM limit: such a request can never succeed.

        While the TPM limit is unknown, anything fits.
        """
        tpm = self.tpm
        return tpm is None or tokens <= tpm

    def _configure(self, now: float, *, resize: bool = False) -> None:
        # While probing, unknown limits stay unlimited: the one-at-a-time gate
        # is what holds requests back until the headers tell the real limits.
        self._schedule.configure(self._quota.rpm, self._quota.tpm, now, self._burst_seconds, self._quota.windows,
                                 resize=resize)  # fmt: skip

    def _flying(self) -> tuple[float, float]:
        """Requests started and not settled, and their tokens (lock held)."""
        return self._in_flight[0], self._in_flight[1]

    # -- reserving ------------------------------------------------------------

    def reserve(
        self, tokens: int, *, fallback_pause: Callable[[], float] | None = None
    ) -> Slot[Reservation]:
        """A slot for one attempt of ``tokens`` estimated tokens: ``async with`` it.

        Entering waits like :meth:`acquire`; leaving settles the reservation
        by the attempt's outcome (see :mod:`._reserve`). ``fallback_pause()``
        is how long a retryable 429 that names no ``retry_after`` (nor, in its
        rate-limit headers, when its window has room) pauses the limiter
        (default: the first retry's backoff, 0.375 to 0.5 s).

        >>> async def attempt(limiter, send):
        ...     async with limiter.reserve(120) as slot:
        ...         reply = await send()      # a CallError here: refund, keep or pause
        ...         slot.settle(reply.usage.total_tokens, headers=reply.headers)
        """
        return Slot(self, tokens, fallback_pause or (lambda: backoff_delay(0)))

    async def acquire(self, tokens: int) -> Reservation:
        """Wait until a request of ``tokens`` estimated tokens may be sent, and reserve it.

        Requests start in the order ``acquire`` was called. If the waiting
        task is cancelled, the reservation is given back before
        ``CancelledError`` propagates. Check :meth:`fits` first: a request
        larger than the TPM limit would go, but the server would refuse it.
        """
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        with self._lock:
            now = self._clock()
            reservation = Reservation(tokens, now)
            if self._quota.probing and (self._probe is not None or self._queue):
                self._queue.append(reservation)
            else:
                if self._quota.probing:
                    self._probe = reservation
                self._schedule.place(reservation, now)
            delay = self._due(reservation, now)  # in the same turn of the lock, if it may go now
        try:
            while delay is not None:
                await self._sleep(delay)
                with self._lock:
                    delay = self._due(reservation, self._clock())
        except BaseException:
            self.cancel(reservation)
            raise
        return reservation

    def _admit_queued(self, now: float) -> None:
        """Schedule waiters held behind the probe, as far as probing allows (lock held)."""
        while self._queue:
            if self._quota.probing:
                if self._probe is not None:
                    return
                self._probe = self._queue.popleft()
                self._schedule.place(self._probe, now)
            else:
                self._schedule.place(self._queue.popleft(), now)

    def _due(self, reservation: Reservation, now: float) -> float | None:
        """Seconds ``reservation`` must still wait, or None: it starts now (lock held)."""
        if reservation.state == QUEUED:
            # A probe ends here, or in another process sharing the quota.
            self._admit_queued(now)
        if reservation.state == QUEUED:
            return PROBE_POLL_SECONDS
        delay = self._schedule.delay(reservation, now)
        if reservation.state != ACTIVE:
            return delay
        self._granted += 1
        self._in_flight[0] += 1
        self._in_flight[1] += reservation.tokens
        waited = now - reservation.arrived
        self._waited += waited
        self._longest_wait = max(self._longest_wait, waited)
        return None

    # -- after the request ----------------------------------------------------

    def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Record the tokens the request really used: refund the rest, or charge the excess."""
        with self._lock:
            if reservation.state == DONE:
                return
            if reservation.state != ACTIVE:  # never started: nothing was used
                self._cancel_locked(reservation)
                return
            now = self._clock()
            self._schedule.refund(reservation, used_tokens, now)
            self._landed(reservation)
            self._finish(reservation, now)

    def cancel(self, reservation: Reservation) -> None:
        """The request was never sent: give back its request and its tokens."""
        with self._lock:
            self._cancel_locked(reservation)

    def _cancel_locked(self, reservation: Reservation) -> None:
        if reservation.state == DONE:
            return
        now = self._clock()
        if reservation.state == QUEUED:
            self._queue.remove(reservation)
        else:
            if reservation.state == ACTIVE:
                self._landed(reservation)
            self._schedule.release(reservation, now)
        self._cancelled += 1
        self._finish(reservation, now)

    def _landed(self, reservation: Reservation) -> None:
        self._in_flight[0] -= 1
        self._in_flight[1] -= reservation.tokens

    def _finish(self, reservation: Reservation, now: float) -> None:
        reservation.state = DONE
        if reservation is self._probe:
            self._probe = None
            self._admit_queued(now)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Calibrate from a response's ``x-ratelimit-*`` headers (call it for every response).

        ``limit-*`` sets the learned limits; ``remaining-*`` lowers the local
        level when the server has less left than we think. ``limit``,
        ``remaining`` and ``reset`` together say how much the server's window
        holds (:mod:`._quota`): a bucket they make larger opens at once to what
        the server has left, less what is in flight (which it may not have
        counted yet), instead of ramping up; otherwise the level is never
        raised. The first such headers of a limit, nothing waiting, also open
        the bucket (:meth:`~._bucket.Bucket.open`: 3/4 of the window, until spent; again when
        they say that much is left, until a 429), whatever a remembered window opened. A
        response with no rate-limit headers at all ends probing with no limit to learn.
        """
        seen = parse_rate_limits(headers)
        with self._lock:
            now = self._clock()
            buckets = ((seen.requests, self._schedule.requests), (seen.tokens, self._schedule.tokens))
            before = [bucket.capacity if bucket.limit is not None else None for _, bucket in buckets]
            if self._quota.remembered:  # the memory's opening ends: these headers decide, as in a first process
                self._schedule.forget_openings(now)
            self._quota.learn(seen)
            self._configure(now)
            waiting = self._schedule.waiting
            for (window, bucket), capacity, in_flight in zip(buckets, before, self._flying(), strict=True):
                if window.remaining is None:
                    continue
                if capacity is not None and bucket.capacity > capacity:  # the window opened up
                    bucket.raise_to(window.remaining - in_flight, now)
                bucket.lower_to(window.remaining, now)
                if self.opens and window.capacity is not None and window.limit == bucket.limit and not waiting:
                    bucket.open(window.capacity, window.remaining - in_flight, now)
            self._admit_queued(now)
            learned = self._quota.learned_limits
            seconds = self._quota.window_seconds
        if self.on_learned is not None:
            headers_said = seen.requests.limit is not None or seen.tokens.limit is not None
            self.on_learned(learned[0], learned[1], headers_said, seconds)

    def pause(self, seconds: float) -> None:
        """After a 429: nobody sharing this limiter starts before ``seconds`` from now.

        The server said we are out, so both buckets are drained. Waiters already scheduled move
        back by the length of the pause, keeping their spacing, rather than all starting together
        when it ends. A window an earlier process remembered, still sizing the buckets (and their
        opening), was stale: they go back to the usual burst.
        """
        if not (math.isfinite(seconds) and seconds > 0):
            seconds = 0.0
        with self._lock:
            now = self._clock()
            if self._quota.distrust():  # a remembered window sized the burst: it was stale
                self._configure(now, resize=True)
            self._paused_seconds += self._schedule.pause(seconds, now)
            self._pauses += 1

    # -- reporting ------------------------------------------------------------

    @property
    def stats(self) -> LimiterStats:
        """What this limiter has done so far (a snapshot)."""
        with self._lock:
            return LimiterStats(
                rpm=self.rpm,
                tpm=self.tpm,
                requests=self._granted,
                cancelled=self._cancelled,
                waited_seconds=self._waited,
                longest_wait_seconds=self._longest_wait,
                pauses=self._pauses,
                paused_seconds=self._paused_seconds,
                probing=self._quota.probing,
                learned_from_headers=self._quota.learned,
                reset_requests_seconds=self._quota.reset_requests,
                reset_tokens_seconds=self._quota.reset_tokens,
            )

    def __repr__(self) -> str:
        probing = ", probing" if self._quota.probing else ""
        return f"RateLimiter(rpm={self.rpm}, tpm={self.tpm}{probing})"
