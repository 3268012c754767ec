"""One RPM + TPM quota for every process on every machine: the limiter, its state in Redis.

Dask workers on several machines, on one key, each run their own limiter and
together overrun the quota; ``limiter="machine"`` shares a file, which other
machines cannot see. :class:`RedisLimiter` (``limiter="redis://host:port/db"``,
or ``rediss://``) keeps the quota in Redis, as LiteLLM's Router keeps its
counters, under keys named by a hash of the endpoint key (base URL, model, a
hash of the API key; never the key).

Design: each step is one call of a Lua script (:mod:`._redis_script`) that does
the bucket arithmetic inside Redis. ``reserve`` places the request in the FIFO
schedule and returns its start time; the worker sleeps until then in its own
event loop; ``settle`` refunds from ``usage``; a 429 sets a shared pause that
moves every waiting start back; ``observe`` stores what the ``x-ratelimit-*``
headers say, so any worker's headers set the limits of all. The alternative,
the machine limiter's "lock, load, compute, store" with the state blob in Redis,
reuses the Python schedule but costs a lock and two round trips per step, four
steps per request, and a lock held across the network serializes every
machine's steps behind the slowest. With the script a request costs three
round trips (reserve, observe, settle) and one more if it waited (the check
after its sleep, which sees a pause or a lost reservation); Redis runs scripts
one at a time, so there is no lock to wait for. Measured by
``benchmarks/processes.py`` (four processes, 600 requests): 4.4 script calls per
request sent, the leases' heartbeats included. On loopback, on a loaded 2-core
machine, one call takes 0.6 to 0.8 ms (a ``PING`` 0.2 to 0.5 ms, the script 0.14 ms
inside Redis), so the synchronous client is used, thread-safe through its
connection pool, called from the event loop: a request's steps cost a few
milliseconds of a loop that waits a second for the model.

Time is the Redis server's (``TIME``), one clock for every machine: each reply
is a wait in seconds, which the worker sleeps on its own clock. The local
``clock`` only measures the waits for the report.

Liveness: each sharer holds a lease, renewed by a heartbeat thread every
``LEASE_SECONDS / 4`` and by each reservation it makes. A reservation placed in the
schedule and not yet started names its sharer; when a sharer's lease runs out
(a worker killed, its machine gone), the next step of any other sharer gives
its waiting reservations and its probe back to everyone. Its requests in flight
keep their charge: the server may well have counted them. A sharer alive but
silent past its lease (stopped for seconds) finds its reservation given back
when it wakes, and places it again.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import secrets
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ._errors import ConfigError
from ._headers import parse_rate_limits
from ._limiter import PROBE_POLL_SECONDS, LimiterStats, RateLimiter
from ._redis_script import SCRIPT
from ._schedule import ACTIVE, DONE, QUEUED, SCHEDULED

__all__ = ["LEASE_SECONDS", "RedisLimiter", "RedisReservation", "is_redis_url", "redacted", "redis_keys"]

#: How long a sharer that stopped renewing stays in the schedule: a killed worker's
#: waiting reservations come back this long after its last heartbeat.
LEASE_SECONDS = 2.0
#: A wait this short is no wait (asyncio may wake up to a clock tick early).
_EARLY_WAKE_SECONDS = 1e-3
_SCHEMES = ("redis://", "rediss://")
INSTALL_HINT = "pip install 'llmframe[redis]'"


def is_redis_url(value: object) -> bool:
    """Does ``limiter=`` name a Redis server (``redis://`` or ``rediss://``)?"""
    return isinstance(value, str) and value.lower().startswith(_SCHEMES)


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redis_keys(name: str) -> list[str]:
    """The four Redis keys of the endpoint key ``name``, named by a hash of it (one hash slot)."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:24]
    return [f"llmframe:limiter:{{{digest}}}:{part}" for part in ("state", "waiting", "sharers", "given")]


def _arg(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _num(value: bytes) -> float | None:
    return float(value) if value else None


class RedisReservation:
    """One request's place in the shared schedule: ``start`` on the Redis server's clock
    (seconds since the shared state began)."""

    __slots__ = ("arrived", "member", "start", "state", "tokens")

    def __init__(self, tokens: int, arrived: float) -> None:
        self.tokens = tokens
        self.arrived = arrived
        self.member = ""  # its name in the shared schedule; "" while queued behind the probe
        self.start = 0.0
        self.state = QUEUED

    def __repr__(self) -> str:
        return f"RedisReservation(tokens={self.tokens}, start={self.start}, state={self.state})"


class RedisLimiter(RateLimiter):
    """A :class:`RateLimiter` whose quota every sharer of ``name`` on the Redis at ``url`` shares.

    >>> limiter = RedisLimiter("redis://localhost:6379/0", "endpoint-key", rpm=500)  # doctest: +SKIP

    ``clock`` and ``sleep`` are the worker's own, injectable as for
    :class:`RateLimiter`. ``server_time`` replaces the Redis server's clock in
    the script (virtual time for tests); ``heartbeat=False`` starts no
    heartbeat thread (the sharer then renews its lease only by its steps).
    """

    __slots__ = (
        "__weakref__", "_beat_stop", "_client", "_keys", "_learned", "_lease", "_limits", "_lock_stats",
        "_probing", "_resets", "_server_time", "_sha", "_token", "_url",
    )  # fmt: skip

    def __init__(
        self,
        url: str,
        name: str,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        burst_seconds: float = 1.0,
        server_time: Callable[[], float] | None = None,
        lease_seconds: float = LEASE_SECONDS,
        heartbeat: bool = True,
    ) -> None:
        super().__init__(rpm, tpm, clock=clock, sleep=sleep, burst_seconds=burst_seconds)
        try:
            import redis
        except ImportError:
            raise ConfigError(f"limiter={redacted(url)!r} needs the redis package: {INSTALL_HINT}") from None
        self._url = url
        self._client: Any = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self._keys = redis_keys(name)
        self._sha = hashlib.sha1(SCRIPT.encode()).hexdigest()
        self._server_time = server_time
        self._lease = float(lease_seconds)
        self._limits: tuple[float | None, float | None] = (None, None)
        self._probing = True
        self._learned = False
        self._resets: tuple[float | None, float | None] = (None, None)
        self._lock_stats = threading.Lock()
        self._beat_stop: threading.Event | None = None
        self._join(heartbeat)
        _LIVE.add(self)

    def _join(self, heartbeat: bool) -> None:
        self._token = secrets.token_hex(8)
        try:
            self._beat()
        except Exception as exc:
            raise ConfigError(f"limiter={redacted(self._url)!r}: cannot reach Redis ({type(exc).__name__}: "
                              f"{exc})") from None  # fmt: skip
        if heartbeat:
            self._start_heartbeat()

    def _start_heartbeat(self) -> None:
        self._beat_stop = stop = threading.Event()
        threading.Thread(target=_heartbeat, args=(weakref.ref(self), stop, self._lease / 4), daemon=True,
                         name="llmframe-redis-lease").start()  # fmt: skip

    # -- one step: one script call ---------------------------------------------------

    def _call(self, op: str, *args: object) -> list[bytes]:
        """Run ``op`` in the script (EVALSHA; EVAL when the server does not have it yet)."""
        import redis

        now = "" if self._server_time is None else repr(self._server_time())
        argv = [op, now, repr(self._burst_seconds), self._token, repr(self._lease), *map(str, args)]
        try:
            reply = self._client.evalsha(self._sha, len(self._keys), *self._keys, *argv)
        except redis.exceptions.NoScriptError:
            reply = self._client.eval(SCRIPT, len(self._keys), *self._keys, *argv)
        rpm, tpm, probing, learned, reset_rq, reset_tk, *rest = reply
        self._limits = (_num(rpm), _num(tpm))
        self._probing, self._learned = probing == b"1", learned == b"1"
        self._resets = (_num(reset_rq), _num(reset_tk))
        return list(rest)

    def _beat(self) -> None:
        given_rpm, given_tpm = self._quota.given
        self._call("beat", _arg(given_rpm), _arg(given_tpm))

    # -- limits -----------------------------------------------------------------------

    @property
    def rpm(self) -> float | None:
        """The requests-per-minute limit in force for every sharer, as of the last step."""
        return self._limits[0]

    @property
    def tpm(self) -> float | None:
        """The tokens-per-minute limit in force for every sharer, as of the last step."""
        return self._limits[1]

    def set_limits(self, rpm: float | None = None, tpm: float | None = None) -> None:
        """This sharer's given limits; the lowest any live sharer gives holds for all."""
        self._quota.give(rpm, tpm)
        self._beat()

    def remember(self, rpm: float | None, tpm: float | None) -> None:
        """Limits an earlier process learned: used unless a sharer has seen the endpoint."""
        self._call("remember", _arg(rpm or None), _arg(tpm or None))

    # -- reserving --------------------------------------------------------------------

    async def acquire(self, tokens: int) -> RedisReservation:  # type: ignore[override]
        """Wait until a request of ``tokens`` estimated tokens may start, in FIFO order
        across every sharer; cancelled while waiting, it gives its reservation back."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        reservation = RedisReservation(tokens, self._clock())
        try:
            delay = self._place(reservation)
            while delay > _EARLY_WAKE_SECONDS:
                await self._sleep(delay)
                delay = self._place(reservation) if reservation.state == QUEUED else self._check(reservation)
        except BaseException:
            self.cancel(reservation)
            raise
        reservation.state = ACTIVE
        waited = self._clock() - reservation.arrived
        with self._lock_stats:
            self._granted += 1
            self._waited += waited
            self._longest_wait = max(self._longest_wait, waited)
        return reservation

    def _place(self, reservation: RedisReservation) -> float:
        """Reserve in the shared schedule: the seconds to wait (polling while behind the probe)."""
        given_rpm, given_tpm = self._quota.given
        reply = self._call("reserve", reservation.tokens, _arg(given_rpm), _arg(given_tpm))
        if reply[0] == b"queued":
            return PROBE_POLL_SECONDS
        member, delay, start = reply
        reservation.member, reservation.start = member.decode(), float(start)
        reservation.state = SCHEDULED
        return float(delay)

    def _check(self, reservation: RedisReservation) -> float:
        """After a sleep: the seconds still to wait (a pause may have moved the start)."""
        reply = self._call("check", reservation.member, repr(reservation.start))
        if reply[0] == b"lost":  # given back while this sharer was silent: place it again
            return self._place(reservation)
        delay, start = reply
        reservation.start = float(start)
        return float(delay)

    # -- after the request ------------------------------------------------------------

    def settle(self, reservation: RedisReservation, used_tokens: int) -> None:  # type: ignore[override]
        """Record the tokens the request really used: refund the rest, or charge the excess."""
        if reservation.state == DONE:
            return
        if reservation.state != ACTIVE:  # never started: nothing was used
            self.cancel(reservation)
            return
        reservation.state = DONE
        self._call("settle", reservation.member, repr(reservation.start), int(used_tokens))

    def cancel(self, reservation: RedisReservation) -> None:  # type: ignore[override]
        """The request was never sent: give back its request and its tokens."""
        if reservation.state == DONE:
            return
        placed = reservation.state != QUEUED
        reservation.state = DONE
        with self._lock_stats:
            self._cancelled += 1
        if placed:
            self._call("cancel", reservation.member, repr(reservation.start), 0)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Store a response's ``x-ratelimit-*`` headers for every sharer (see :class:`RateLimiter`)."""
        seen = parse_rate_limits(headers)
        windows = (seen.requests, seen.tokens)
        args = [_arg(v) for w in windows for v in (w.limit, w.remaining, w.reset)]
        learned_rpm, learned_tpm = self._call("observe", *args)
        if self.on_learned is not None:
            self.on_learned(_num(learned_rpm), _num(learned_tpm),
                            seen.requests.limit is not None or seen.tokens.limit is not None)  # fmt: skip

    def pause(self, seconds: float) -> None:
        """After a 429: no sharer, on any machine, starts before ``seconds`` from now."""
        if not (seconds == seconds and 0 < seconds < float("inf")):
            seconds = 0.0
        (delta,) = self._call("pause", repr(float(seconds)))
        with self._lock_stats:
            self._pauses += 1
            self._paused_seconds += float(delta)

    # -- sharing ----------------------------------------------------------------------

    @property
    def sharers(self) -> int:
        """How many sharers hold a lease now (this one included)."""
        return int(self._client.zcard(self._keys[2]))

    def close(self) -> None:
        """Leave the quota: this sharer's waiting reservations go back at once."""
        if self._beat_stop is not None:
            self._beat_stop.set()
            self._beat_stop = None
        _LIVE.discard(self)
        try:
            self._call("leave")
        finally:
            self._client.close()

    def _after_fork(self) -> None:
        """In a forked child: the parent's lease is the parent's; be a sharer of its own
        (its first step takes the lease: no network call while forking)."""
        self._token = secrets.token_hex(8)
        if self._beat_stop is not None:  # the parent's thread does not run here
            self._start_heartbeat()

    @property
    def stats(self) -> LimiterStats:
        """What this sharer did (counts) and what holds for all (limits, probing)."""
        with self._lock_stats:
            return LimiterStats(
                rpm=self.rpm, tpm=self.tpm, requests=self._granted, cancelled=self._cancelled,
                waited_seconds=self._waited, longest_wait_seconds=self._longest_wait, pauses=self._pauses,
                paused_seconds=self._paused_seconds, probing=self._probing, learned_from_headers=self._learned,
                reset_requests_seconds=self._resets[0], reset_tokens_seconds=self._resets[1],
            )  # fmt: skip

    def __repr__(self) -> str:
        return f"RedisLimiter(rpm={self.rpm}, tpm={self.tpm}, redis={redacted(self._url)!r})"


def _heartbeat(ref: weakref.ref[RedisLimiter], stop: threading.Event, every: float) -> None:
    """Renew the lease until the limiter closes or is gone; a failed renewal is retried."""
    while not stop.wait(every):
        limiter = ref()
        if limiter is None:
            return
        with contextlib.suppress(Exception):  # Redis away for a moment: the next beat tries again
            limiter._beat()
        del limiter


_LIVE: weakref.WeakSet[RedisLimiter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for limiter in list(_LIVE):
        limiter._after_fork()


def _close_all() -> None:
    for limiter in list(_LIVE):
        with contextlib.suppress(Exception):  # Redis gone at exit: the lease runs out instead
            limiter.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all)
