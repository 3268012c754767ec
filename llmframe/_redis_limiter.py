"""One RPM + TPM quota for every process on every machine: the limiter, its state in Redis.

Dask workers on several machines each run their own limiter and together overrun
the quota; ``limiter="machine"`` shares a file, which other machines cannot see.
:class:`RedisLimiter` (``limiter="redis://host:port/db"``, or ``rediss://``) keeps
it in Redis, as LiteLLM's Router keeps its counters, under keys named by a hash
of the endpoint key (:mod:`._redis_names`; never the API key).

Design: each step is one call of a Lua script (:mod:`._redis_script`) that does
the bucket arithmetic inside Redis. ``reserve`` places the request in the FIFO
schedule and returns its start time; the worker sleeps until then in its own
event loop; ``settle`` refunds from ``usage``; a 429 sets a shared pause that
moves every waiting start back; ``observe`` stores what the ``x-ratelimit-*``
headers say, so any worker's headers set the limits of all (why a script, not
a lock: :mod:`._redis_script`). A request costs three round trips (reserve,
observe, settle) and one more if it waited (the check after its sleep, which
sees a pause or a lost reservation). ``benchmarks/processes.py`` (four processes,
600 requests): 4.4 calls per request sent, heartbeats included. On loopback, on a loaded 2-core
machine, one call takes 0.6 to 0.8 ms (a ``PING`` 0.2 to 0.5 ms, the script 0.14 ms
inside Redis), so the synchronous client is used, thread-safe through its
connection pool, called from the event loop: a request's steps cost a few
milliseconds of a loop that waits a second for the model.

Time is the Redis server's (``TIME``), one clock for every machine: each reply
is a wait in seconds, which the worker sleeps on its own clock. The local
``clock`` only measures the waits for the report.

Each sharer holds a lease (:mod:`._redis_lease`): a dead sharer's waiting
reservations go back to everyone when it runs out. Redis gone mid-run: the first
step that gets no answer warns once and hands the quota to an
:class:`~._redis_outage.Outage` (this sharer's share, locally) until Redis answers
again; then the sharer joins again (lease, given limits, the limits it knows).
No row fails for the limiter; a Redis that does not answer when the limiter is
made is a :class:`~llmframe.ConfigError`.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from ._errors import ConfigError
from ._headers import parse_rate_limits
from ._limiter import PROBE_POLL_SECONDS, LimiterStats, RateLimiter, Reservation
from ._redis_lease import start_heartbeat, track, untrack
from ._redis_names import INSTALL_HINT, is_redis_url, redacted, redis_keys
from ._redis_outage import Limits, Outage, is_outage, outage_message
from ._redis_script import SCRIPT, arg, num
from ._schedule import ACTIVE, DONE, QUEUED, SCHEDULED
from ._warn import warn_user

# The names of :mod:`._redis_names` are here too, for the modules that import them from here.
__all__ = ["INSTALL_HINT", "LEASE_SECONDS", "RedisLimiter", "RedisReservation", "is_redis_url", "redacted",
           "redis_keys"]  # fmt: skip

#: How long a sharer that stopped renewing stays in the schedule: a killed worker's
#: waiting reservations come back this long after its last heartbeat.
LEASE_SECONDS = 2.0
#: A wait this short is no wait (asyncio may wake up to a clock tick early).
_EARLY_WAKE_SECONDS = 1e-3


class RedisReservation:
    """One request's place in the shared schedule: ``start`` on the Redis server's clock
    (seconds since the shared state began); or, reserved while Redis was away, its place
    in the outage's local limiter (``local``)."""

    __slots__ = ("arrived", "local", "member", "start", "state", "tokens")

    def __init__(self, tokens: int, arrived: float) -> None:
        self.tokens = tokens
        self.arrived = arrived
        self.member = ""  # its name in the shared schedule; "" while queued behind the probe
        self.start = 0.0
        self.state = QUEUED
        self.local: tuple[RateLimiter, Reservation] | None = None

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
        "_memory", "_outage", "_probing", "_resets", "_seen_sharers", "_server_time", "_sha", "_token", "_url",
        "outages",
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
        # A step takes a millisecond: five seconds without an answer is an outage, not a slow Redis.
        self._client: Any = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._keys = redis_keys(name)
        self._sha = hashlib.sha1(SCRIPT.encode()).hexdigest()
        self._server_time = server_time
        self._lease = float(lease_seconds)
        # What the last reply said: the limits in force, probing, learned, resets, leases held.
        self._limits: Limits = (None, None)
        self._resets: Limits = (None, None)
        self._probing, self._learned, self._seen_sharers = True, False, 1
        self._memory: Limits | None = None  # the learned limits, to teach a restarted Redis
        self._outage: Outage | None = None  # the last one; over once Redis answered again
        self.outages = 0  # how many times Redis stopped answering while this limiter used it
        self._lock_stats = threading.Lock()
        self._beat_stop: threading.Event | None
        self._join(heartbeat)
        track(self)

    def _join(self, heartbeat: bool) -> None:
        self._token = secrets.token_hex(8)
        try:
            self._beat()
        except Exception as exc:
            raise ConfigError(f"limiter={redacted(self._url)!r}: cannot reach Redis ({type(exc).__name__}: "
                              f"{exc})") from None  # fmt: skip
        self._beat_stop = start_heartbeat(self, self._lease / 4) if heartbeat else None

    def tick(self) -> None:
        """The heartbeat: renew the lease, or, while Redis is away, try it again when due."""
        if self.degraded:
            self._try_redis()
        else:
            self._step("beat", *self._given())

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
        rpm, tpm, probing, learned, reset_rq, reset_tk, sharers, *rest = reply
        self._limits = (num(rpm), num(tpm))
        self._probing, self._learned = probing == b"1", learned == b"1"
        self._resets = (num(reset_rq), num(reset_tk))
        self._seen_sharers = int(sharers)
        return list(rest)

    def _step(self, op: str, *args: object) -> list[bytes] | None:
        """:meth:`_call`, or None while Redis is away (the first step to find it away starts the outage)."""
        if self.degraded:
            return None
        try:
            return self._call(op, *args)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._went_down(exc)
            return None

    def _given(self) -> tuple[str, str]:
        """This sharer's given limits, as the script takes them."""
        return arg(self._quota.given[0]), arg(self._quota.given[1])

    def _beat(self) -> None:
        self._call("beat", *self._given())

    # -- Redis away ---------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """Is Redis away, and this sharer keeping to its share of the quota on its own?"""
        return self._outage is not None and not self._outage.over

    def _went_down(self, exc: BaseException) -> None:
        """Hand the quota to a local limiter with this sharer's share of it, and warn once."""
        with self._lock_stats:
            if self.degraded:
                return
            outage = Outage(self._limits, self._quota.given, probing=self._probing, sharers=self._seen_sharers,
                            now=self._clock(), clock=self._clock, sleep=self._sleep,
                            burst_seconds=self._burst_seconds)  # fmt: skip
            outage.on_learned = self.on_learned
            self._outage = outage
            self.outages += 1
        warn_user(outage_message(redacted(self._url), exc, outage, urlsplit(self._url).password))

    def _try_redis(self) -> None:
        """While Redis is away and a try is due: join it again; the outage ends if it answers."""
        if self._outage is not None:
            self._outage.try_again(self._rejoin, self._clock)

    def _rejoin(self) -> None:
        self._beat()
        learned = self._outage.learned if self._outage is not None else None
        learned = learned or self._memory
        if learned is not None:  # a restarted Redis knows nothing: what this sharer knew
            self._call("remember", arg(learned[0]), arg(learned[1]))

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
        if self._step("beat", *self._given()) is None and self._outage is not None:
            self._outage.give(rpm, tpm)

    def remember(self, rpm: float | None, tpm: float | None, window_seconds: Limits = (None, None)) -> None:
        """Limits an earlier process learned, unless a sharer has seen the endpoint (not the windows:
        the shared bucket opens on the first reply, :mod:`._redis_script`)."""
        self._memory = (rpm or None, tpm or None)
        self._step("remember", arg(rpm or None), arg(tpm or None))

    # -- reserving --------------------------------------------------------------------

    async def acquire(self, tokens: int) -> RedisReservation:  # type: ignore[override]
        """Wait until a request of ``tokens`` estimated tokens may start, in FIFO order
        across every sharer; cancelled while waiting, it gives its reservation back."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        if self.degraded and self._beat_stop is None:  # no heartbeat thread to try Redis again: this step does
            self._try_redis()
        reservation = RedisReservation(tokens, self._clock())
        try:
            delay = self._place(reservation)
            while delay is not None and delay > _EARLY_WAKE_SECONDS:
                await self._sleep(delay)
                delay = self._place(reservation) if reservation.state == QUEUED else self._check(reservation)
            if delay is None and self._outage is not None:  # Redis away: the local share decides
                local = self._outage.limiter
                reservation.local = (local, await local.acquire(tokens))
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

    def _place(self, reservation: RedisReservation) -> float | None:
        """Reserve in the shared schedule: the seconds to wait (polling behind the probe); None: Redis is away."""
        reply = self._step("reserve", reservation.tokens, *self._given())
        if reply is None:
            return None
        if reply[0] == b"queued":
            return PROBE_POLL_SECONDS
        member, delay, start = reply
        reservation.member, reservation.start = member.decode(), float(start)
        reservation.state = SCHEDULED
        return float(delay)

    def _check(self, reservation: RedisReservation) -> float | None:
        """After a sleep: the seconds still to wait (a pause may have moved the start); None: Redis is away."""
        reply = self._step("check", reservation.member, repr(reservation.start))
        if reply is None:
            return None
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
        if reservation.local is not None:
            reservation.state = DONE
            reservation.local[0].settle(reservation.local[1], used_tokens)
            return
        if reservation.state != ACTIVE:  # never started: nothing was used
            self.cancel(reservation)
            return
        reservation.state = DONE
        self._step("settle", reservation.member, repr(reservation.start), int(used_tokens))

    def cancel(self, reservation: RedisReservation) -> None:  # type: ignore[override]
        """The request was never sent: give back its request and its tokens."""
        if reservation.state == DONE:
            return
        placed = reservation.state != QUEUED and reservation.member
        reservation.state = DONE
        with self._lock_stats:
            self._cancelled += 1
        if reservation.local is not None:
            reservation.local[0].cancel(reservation.local[1])
        elif placed:
            self._step("cancel", reservation.member, repr(reservation.start), 0)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Store a response's ``x-ratelimit-*`` headers for every sharer (see :class:`RateLimiter`)."""
        seen = parse_rate_limits(headers)
        windows = (seen.requests, seen.tokens)
        args = [arg(v) for w in windows for v in (w.limit, w.remaining, w.reset)]
        reply = self._step("observe", *args)
        if reply is None:
            if self._outage is not None:  # the local limiter learns; its share follows (and tells on_learned)
                self._outage.limiter.observe(headers)
            return
        learned_rpm, learned_tpm = reply
        if headers_said := seen.requests.limit is not None or seen.tokens.limit is not None:
            self._memory = (num(learned_rpm), num(learned_tpm))
        with self._lock_stats:  # this sharer's reading of the windows, to remember
            self._quota.learn(seen)
        if self.on_learned is not None:
            self.on_learned(num(learned_rpm), num(learned_tpm), headers_said, self._quota.window_seconds)

    def pause(self, seconds: float) -> None:
        """After a 429: no sharer, on any machine, starts before ``seconds`` from now."""
        seconds = seconds if seconds == seconds and 0 < seconds < float("inf") else 0.0
        reply = self._step("pause", repr(float(seconds)))
        if reply is None and self._outage is not None:
            self._outage.limiter.pause(seconds)
        with self._lock_stats:
            self._pauses += 1
            self._paused_seconds += float(reply[0]) if reply else seconds

    # -- sharing ----------------------------------------------------------------------

    @property
    def sharers(self) -> int:
        """How many sharers hold a lease now (this one included); while Redis is away, the last count."""
        if self.degraded:
            return self._seen_sharers
        return int(self._client.zcard(self._keys[2]))

    def close(self) -> None:
        """Leave the quota: this sharer's waiting reservations go back at once."""
        if self._beat_stop is not None:
            self._beat_stop.set()
            self._beat_stop = None
        untrack(self)
        try:
            self._step("leave")
        finally:
            self._client.close()

    def after_fork(self) -> None:
        """In a forked child: the parent's lease is the parent's; be a sharer of its own
        (its first step takes the lease: no network call while forking)."""
        self._token = secrets.token_hex(8)
        if self._beat_stop is not None:  # the parent's thread does not run here
            self._beat_stop = start_heartbeat(self, self._lease / 4)

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
