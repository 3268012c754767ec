"""One RPM + TPM rate limiter, shared by every call to the same endpoint.

Every request passes :meth:`RateLimiter.acquire` before it is sent, with its
estimated tokens (prompt + expected answer). The limiter holds two token
buckets, one of requests and one of tokens, each refilling at limit/60 per
second and holding at most ``burst_seconds`` worth (one second by default:
servers enforce their per-minute limits over shorter windows, so spending a
whole minute's quota at once earns 429s). After the response,
:meth:`~RateLimiter.settle` refunds the difference between the estimate and
the ``usage`` the server reports, and :meth:`~RateLimiter.observe` recalibrates
from the ``x-ratelimit-*`` headers. The flow of one request::

    reservation = await limiter.acquire(estimated_tokens)   # waits its turn
    try:
        response = await send()
    except RateLimited as err:                 # a 429: everyone sharing the limiter waits
        limiter.settle(reservation, reservation.tokens)   # keep its place (see the engine)
        limiter.pause(err.retry_after)
        limiter.observe(err.headers)
        raise
    except BaseException:
        limiter.cancel(reservation)            # never reached the server: give it all back
        raise
    limiter.observe(response.headers)          # every response, or probing never ends
    limiter.settle(reservation, response.usage.total_tokens)

**Virtual scheduling.** ``acquire`` does not queue and poll. Under a lock it
computes the earliest time at which both buckets allow the request, no earlier
than the previous reservation's start (so waiters are served in arrival order,
and a large request is never overtaken by small ones), commits the debit at
that time right away, and then sleeps until it. One sleep per request, no
timers, no waiter queue, and nothing bound to an event loop in the shared
state: the same limiter serves two ``apply`` calls running in different
threads with different event loops.

**Learning limits.** A limit the user does not give is unknown until a response
says it. Until something has been observed, the limiter lets one request
through at a time (a probe); the probe's headers set the limits, and a
response without any rate-limit headers (vLLM, llama.cpp, Ollama) means there
is no limit to learn, so the caller's concurrency cap alone governs. Only
these probe waiters poll (every ``PROBE_POLL_SECONDS``): they wait for an event
in another request's life, not for a time, and polling keeps them free of any
event loop.

:func:`shared_limiter` hands out one limiter per (base URL, API key, model).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import numbers
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from ._errors import ConfigError
from ._headers import parse_duration

__all__ = ["LimiterStats", "RateLimiter", "Reservation", "shared_limiter"]

#: How often a request held back behind the probe checks whether it may go.
#: A probe is one LLM call (a second or more), so 50 ms adds little latency.
PROBE_POLL_SECONDS = 0.05

# asyncio may fire a timer up to one clock tick early; another sleep for less
# than a millisecond would not change what the server sees.
_EARLY_WAKE_SECONDS = 1e-3

_QUEUED = "queued"  # held back behind the probe, no start time yet
_SCHEDULED = "scheduled"  # start time committed, waiting for it
_ACTIVE = "active"  # acquire returned: the request may be in flight
_DONE = "done"  # settled or cancelled


class _Bucket:
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
        self, limit: float | None, now: float, burst_seconds: float, floor: float
    ) -> None:
        """Use a new per-minute limit, keeping the current level (within the new capacity)."""
        if limit == self.limit:
            return
        if limit is None:
            self.limit = None
            return
        # A bucket that was unlimited starts full: the server's remaining count,
        # observed right after, lowers it if the server disagrees.
        level = self.level_at(now) if self.limit is not None else math.inf
        self.limit = limit
        self.rate = limit / 60
        self.capacity = max(floor, limit * burst_seconds / 60)
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

    def shift(self, delta: float) -> None:
        if self.limit is not None:
            self.full_at += delta


class Reservation:
    """One request's place in the limiter's schedule, from ``acquire`` to ``settle``.

    ``tokens`` is what was reserved, ``start`` the time (on the limiter's
    clock) the request was allowed to start. Hand it back to exactly one of
    :meth:`RateLimiter.settle` or :meth:`RateLimiter.cancel`; later calls are
    ignored, so a ``finally: cancel(...)`` after a settle is harmless.
    """

    __slots__ = (
        "_charged_request",
        "_charged_tokens",
        "_shift_seen",
        "_state",
        "arrived",
        "start",
        "tokens",
    )

    def __init__(self, tokens: int, arrived: float):
        self.tokens = tokens
        self.arrived = arrived
        self.start: float | None = None
        self._state = _QUEUED
        # Which buckets this reservation was debited from: a bucket that was
        # unlimited (unknown) at acquire time has nothing to refund later.
        self._charged_request = False
        self._charged_tokens = False
        # The limiter's pause shift when the start was computed; a pause since
        # then moves the start later by the difference.
        self._shift_seen = 0.0

    def __repr__(self) -> str:
        return f"Reservation(tokens={self.tokens}, start={self.start}, state={self._state})"


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


def _positive_limit(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number of {name.upper()} per minute, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive per-minute limit, got {value!r}")
    return float(value)


def _header_number(value: str | None) -> float | None:
    """A non-negative finite number from a header, or None for anything else."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits for one endpoint, FIFO.

    >>> limiter = RateLimiter(rpm=500, tpm=200_000)
    >>> async def send(estimated_tokens):
    ...     reservation = await limiter.acquire(estimated_tokens)
    ...     ...  # the request; then limiter.settle(reservation, used_tokens)

    ``rpm`` / ``tpm`` given here are always respected; limits left out are
    learned from the server's headers (see the module docstring). ``clock``
    and ``sleep`` are injectable so that timing tests never sleep. All state
    is guarded by a ``threading.Lock`` and contains nothing tied to an event
    loop, so one limiter may serve any number of threads and loops at once.
    """

    __slots__ = (
        "_burst_seconds",
        "_cancelled",
        "_clock",
        "_given_rpm",
        "_given_tpm",
        "_granted",
        "_last_start",
        "_learned",
        "_learned_rpm",
        "_learned_tpm",
        "_lock",
        "_longest_wait",
        "_observed",
        "_paused_seconds",
        "_paused_until",
        "_pauses",
        "_pending",
        "_probe",
        "_queue",
        "_requests",
        "_reset_requests",
        "_reset_tokens",
        "_shift",
        "_sleep",
        "_tokens",
        "_waited",
    )

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
        self._lock = threading.Lock()
        self._clock = clock
        # Looked up at call time rather than bound here, so nothing refers to
        # a particular event loop.
        self._sleep: Callable[[float], Awaitable[None]] = sleep or asyncio.sleep
        self._burst_seconds = float(burst_seconds)
        self._given_rpm = _positive_limit(rpm, "rpm")
        self._given_tpm = _positive_limit(tpm, "tpm")
        self._learned_rpm: float | None = None
        self._learned_tpm: float | None = None
        self._observed = False  # has any response been observed (with or without headers)?
        self._learned = False
        self._requests = _Bucket()
        self._tokens = _Bucket()
        self._last_start = -math.inf  # start of the latest reservation: the FIFO anchor
        self._pending = 0  # reservations with a start time whose acquire has not returned
        self._paused_until = -math.inf
        self._shift = 0.0  # total time pauses pushed the schedule back
        self._probe: Reservation | None = None
        self._queue: deque[Reservation] = deque()  # waiters held back behind the probe
        self._granted = 0
        self._cancelled = 0
        self._waited = 0.0
        self._longest_wait = 0.0
        self._pauses = 0
        self._paused_seconds = 0.0
        self._reset_requests: float | None = None
        self._reset_tokens: float | None = None
        self._configure(clock())

    # -- limits ---------------------------------------------------------------

    @property
    def rpm(self) -> float | None:
        """The requests-per-minute limit in force (given or learned), or None for none (yet)."""
        return self._requests.limit

    @property
    def tpm(self) -> float | None:
        """The tokens-per-minute limit in force (given or learned), or None for none (yet)."""
        return self._tokens.limit

    def set_limits(self, rpm: float | None = None, tpm: float | None = None) -> None:
        """Set user-given limits; None leaves that limit as it is.

        A given limit always holds, even when the server's headers allow more;
        when the server says less, the lower value wins (the server is the truth).
        """
        rpm = _positive_limit(rpm, "rpm")
        tpm = _positive_limit(tpm, "tpm")
        with self._lock:
            if rpm is not None:
                self._given_rpm = rpm
            if tpm is not None:
                self._given_tpm = tpm
            now = self._clock()
            self._configure(now)
            self._admit_queued(now)  # giving both limits ends probing

    def fits(self, tokens: int) -> bool:
        """False if ``tokens`` exceeds the TPM limit: such a request can never succeed.

        While the TPM limit is unknown, anything fits.
        """
        tpm = self._tokens.limit
        return tpm is None or tokens <= tpm

    def _effective(self, given: float | None, learned: float | None) -> float | None:
        if given is not None and learned is not None:
            return min(given, learned)
        return given if given is not None else learned

    def _configure(self, now: float) -> None:
        # While probing, unknown limits stay unlimited: the one-at-a-time gate
        # is what holds requests back until the headers tell the real limits.
        self._requests.configure(
            self._effective(self._given_rpm, self._learned_rpm), now, self._burst_seconds, 1.0
        )
        self._tokens.configure(
            self._effective(self._given_tpm, self._learned_tpm), now, self._burst_seconds, 0.0
        )

    def _probing(self) -> bool:
        # Learned limits only come with an observation, so "unknown" means
        # "not given and nothing observed yet".
        return not self._observed and (self._given_rpm is None or self._given_tpm is None)

    # -- acquiring ------------------------------------------------------------

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
            if self._probing() and (self._probe is not None or self._queue):
                self._queue.append(reservation)
            else:
                if self._probing():
                    self._probe = reservation
                self._schedule(reservation, now)
        try:
            await self._wait(reservation)
        except BaseException:
            self.cancel(reservation)
            raise
        return reservation

    def _schedule(self, reservation: Reservation, now: float) -> None:
        """Commit ``reservation`` at the earliest time both buckets allow (lock held)."""
        earliest = max(now, self._paused_until)
        if self._pending:  # only a reservation still waiting can be overtaken
            earliest = max(earliest, self._last_start)
        start = max(
            self._requests.ready_at(earliest, 1),
            self._tokens.ready_at(earliest, reservation.tokens),
        )
        self._requests.debit(start, 1)
        self._tokens.debit(start, reservation.tokens)
        reservation._charged_request = self._requests.limit is not None
        reservation._charged_tokens = self._tokens.limit is not None
        reservation.start = start
        reservation._shift_seen = self._shift
        reservation._state = _SCHEDULED
        self._last_start = start
        self._pending += 1

    def _admit_queued(self, now: float) -> None:
        """Schedule waiters held behind the probe, as far as probing allows (lock held)."""
        while self._queue:
            if self._probing():
                if self._probe is not None:
                    return
                self._probe = self._queue.popleft()
                self._schedule(self._probe, now)
            else:
                self._schedule(self._queue.popleft(), now)

    async def _wait(self, reservation: Reservation) -> None:
        while True:
            with self._lock:
                now = self._clock()
                if reservation._state == _QUEUED:
                    delay = PROBE_POLL_SECONDS
                else:
                    assert reservation.start is not None
                    # A pause since the start was computed moves it back by the
                    # same amount (keeping the spacing between waiters), and
                    # nobody starts while a pause lasts.
                    start = max(
                        reservation.start + self._shift - reservation._shift_seen,
                        self._paused_until,
                    )
                    reservation.start = start
                    reservation._shift_seen = self._shift
                    delay = start - now
                    if delay <= _EARLY_WAKE_SECONDS:
                        reservation._state = _ACTIVE
                        self._pending -= 1
                        self._granted += 1
                        waited = now - reservation.arrived
                        self._waited += waited
                        self._longest_wait = max(self._longest_wait, waited)
                        return
            await self._sleep(delay)

    # -- after the request ----------------------------------------------------

    def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Record the tokens the request really used: refund the rest, or charge the excess."""
        with self._lock:
            if reservation._state == _DONE:
                return
            if reservation._state != _ACTIVE:  # never started: nothing was used
                self._cancel_locked(reservation)
                return
            now = self._clock()
            if reservation._charged_tokens:
                self._tokens.credit(now, reservation.tokens - max(used_tokens, 0))
            self._finish(reservation, now)

    def cancel(self, reservation: Reservation) -> None:
        """The request was never sent: give back its request and its tokens."""
        with self._lock:
            self._cancel_locked(reservation)

    def _cancel_locked(self, reservation: Reservation) -> None:
        if reservation._state == _DONE:
            return
        now = self._clock()
        if reservation._state == _QUEUED:
            self._queue.remove(reservation)
        else:
            if reservation._state == _SCHEDULED:
                self._pending -= 1
            if reservation._charged_request:
                self._requests.credit(now, 1)
            if reservation._charged_tokens:
                self._tokens.credit(now, reservation.tokens)
        self._cancelled += 1
        self._finish(reservation, now)

    def _finish(self, reservation: Reservation, now: float) -> None:
        reservation._state = _DONE
        if reservation is self._probe:
            self._probe = None
            self._admit_queued(now)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Calibrate from a response's ``x-ratelimit-*`` headers (call it for every response).

        ``limit-*`` sets the learned limits; ``remaining-*`` lowers the local
        level when the server has less left than we think (never raises it:
        our own in-flight requests may not be counted yet). A response with
        no rate-limit headers at all ends probing with no limit to learn.
        """
        lowered = {str(name).lower(): value for name, value in headers.items()}
        with self._lock:
            now = self._clock()
            self._observed = True
            for kind in ("requests", "tokens"):
                limit = _header_number(lowered.get(f"x-ratelimit-limit-{kind}"))
                if limit is not None and limit > 0:
                    self._learned = True
                    if kind == "requests":
                        self._learned_rpm = limit
                    else:
                        self._learned_tpm = limit
            self._configure(now)
            for kind, bucket in (("requests", self._requests), ("tokens", self._tokens)):
                remaining = _header_number(lowered.get(f"x-ratelimit-remaining-{kind}"))
                if remaining is not None:
                    bucket.lower_to(remaining, now)
                # With a per-minute window the reset time follows from the limit
                # and the remaining count, which the bucket already uses; it is
                # kept for the report.
                reset = parse_duration(lowered.get(f"x-ratelimit-reset-{kind}"))
                if reset is not None:
                    if kind == "requests":
                        self._reset_requests = reset
                    else:
                        self._reset_tokens = reset
            self._admit_queued(now)

    def pause(self, seconds: float) -> None:
        """After a 429: nobody sharing this limiter starts before ``seconds`` from now.

        The server said we are out, so both buckets are drained. Waiters
        already scheduled move back by the length of the pause, keeping their
        spacing, rather than all starting together when it ends.
        """
        if not (math.isfinite(seconds) and seconds > 0):
            seconds = 0.0
        with self._lock:
            now = self._clock()
            resume = max(self._paused_until, now + seconds)
            delta = max(0.0, resume - max(now, self._paused_until))
            self._requests.lower_to(0.0, now)
            self._tokens.lower_to(0.0, now)
            if delta and self._pending and self._last_start > now:
                # The debits of waiting reservations are committed in the
                # buckets: move them with their reservations.
                self._requests.shift(delta)
                self._tokens.shift(delta)
                self._last_start += delta
            self._shift += delta
            self._paused_until = resume
            self._pauses += 1
            self._paused_seconds += delta

    # -- reporting ------------------------------------------------------------

    @property
    def stats(self) -> LimiterStats:
        """What this limiter has done so far (a snapshot)."""
        with self._lock:
            return LimiterStats(
                rpm=self._requests.limit,
                tpm=self._tokens.limit,
                requests=self._granted,
                cancelled=self._cancelled,
                waited_seconds=self._waited,
                longest_wait_seconds=self._longest_wait,
                pauses=self._pauses,
                paused_seconds=self._paused_seconds,
                probing=self._probing(),
                learned_from_headers=self._learned,
                reset_requests_seconds=self._reset_requests,
                reset_tokens_seconds=self._reset_tokens,
            )

    def __repr__(self) -> str:
        probing = ", probing" if self._probing() else ""
        return f"RateLimiter(rpm={self.rpm}, tpm={self.tpm}{probing})"


# -- one limiter per endpoint ---------------------------------------------------

_registry_lock = threading.Lock()
# Keyed by a hash of the API key: the key itself is never stored, so it cannot
# leak through a repr, a log line or a debugger.
_registry: dict[tuple[str, str, str], RateLimiter] = {}


def _normalize_base_url(base_url: str) -> str:
    """``HTTPS://API.example.com/v1/`` and ``https://api.example.com/v1`` are one endpoint."""
    parts = urlsplit(base_url.strip())
    return urlunsplit(
        (parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), parts.query, "")
    )


def _key_fingerprint(api_key: str | None) -> str:
    if api_key is None:
        return ""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


#: The burst of the process-wide limiters, under a server's likely one second:
#: requests released together reach the server spread out and late (connections
#: opening), so a client bucket as large as the server's runs it dry and earns a
#: 429 at every phase change (benchmarks/rate_limits.py: 0.8 s halved the 429s).
SHARED_BURST_SECONDS = 0.5


def shared_limiter(
    base_url: str,
    api_key: str | None,
    model: str,
    *,
    rpm: float | None = None,
    tpm: float | None = None,
) -> RateLimiter:
    """The process-wide limiter for one (base URL, API key, model).

    Quotas belong to the key and the model on one endpoint, so every call
    with the same three shares one limiter, in any thread or event loop.
    ``rpm`` / ``tpm`` set (or update) its user-given limits.

    >>> a = shared_limiter("https://api.openai.com/v1", "sk-...", "gpt-4o-mini")
    >>> a is shared_limiter("https://api.openai.com/v1/", "sk-...", "gpt-4o-mini")
    True
    """
    key = (_normalize_base_url(base_url), _key_fingerprint(api_key), model)
    with _registry_lock:
        limiter = _registry.get(key)
        if limiter is None:
            limiter = _registry[key] = RateLimiter(rpm=rpm, tpm=tpm, burst_seconds=SHARED_BURST_SECONDS)
            return limiter
    if rpm is not None or tpm is not None:
        limiter.set_limits(rpm=rpm, tpm=tpm)
    return limiter
