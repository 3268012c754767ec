"""While Redis does not answer: a local limiter with a share of the quota, and when to try again.

A :class:`~llmframe._redis_limiter.RedisLimiter` whose Redis stops answering in
the middle of a run (the server restarted, the network gone) must not fail the
rows: its requests go through an :class:`Outage` instead, a local
:class:`~llmframe._limiter.RateLimiter` holding ``1/n`` of the limits that were
in force, ``n`` the number of live sharers the last answer from Redis counted
(at least 1). Each sharer then keeps to its own share, so together they stay
within the quota they shared, without talking to each other. Limits learned
from headers meanwhile are shared out the same way (the headers state the
whole account's limit), and 429s pause the local limiter as they would Redis.

The outage ends when Redis answers again: tries follow :func:`~llmframe._retry.backoff_delay`
(0.5 s doubling to 8 s, with jitter), made by the sharer's heartbeat thread (or
by its own steps when it has none). Nothing about the outage holds a secret:
the message names Redis by its URL without the password.
"""

from __future__ import annotations

import random as _random
from collections.abc import Awaitable, Callable

from ._limiter import OnLearned, RateLimiter
from ._retry import backoff_delay

__all__ = ["Outage", "is_outage", "outage_message"]

Limits = tuple[float | None, float | None]


def is_outage(exc: BaseException) -> bool:
    """Is ``exc`` Redis not answering (refused, reset, timed out), rather than a bug or a bad reply?"""
    import redis

    return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError))


def _lower(a: float | None, b: float | None) -> float | None:
    if a is not None and b is not None:
        return min(a, b)
    return a if a is not None else b


def _fmt(limit: float | None) -> str:
    return "none" if limit is None else f"{limit:g}"


class Outage:
    """One outage of Redis: the local limiter standing in for it, and when to try Redis again.

    ``limits`` are those in force at the last answer (given or learned),
    ``given`` this sharer's own, ``probing`` whether the limits were still
    unknown then (the local limiter probes too), ``sharers`` how many held a
    lease. ``on_learned`` is told what the local limiter learns from headers.
    """

    __slots__ = ("_full", "_given", "_random", "learned", "limiter", "next_try", "on_learned", "over", "sharers",
                 "tries")  # fmt: skip

    def __init__(
        self,
        limits: Limits,
        given: Limits,
        *,
        probing: bool,
        sharers: int,
        now: float,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        burst_seconds: float,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.sharers = max(1, int(sharers))
        self._given = given
        self._full = limits
        self.limiter = RateLimiter(*self._share(limits), clock=clock, sleep=sleep, burst_seconds=burst_seconds)
        if not probing:  # the endpoint is known: no probe; its next headers correct the limits
            self.limiter.remember(None, None)
        self.limiter.on_learned = self._learned
        #: What the headers said during the outage (the whole account's limits).
        self.learned: Limits | None = None
        self.on_learned: OnLearned | None = None
        self.over = False
        self._random = random
        self.tries = 0
        self.next_try = now + backoff_delay(0, random=random)

    def _share(self, limits: Limits) -> Limits:
        return (None if limits[0] is None else limits[0] / self.sharers,
                None if limits[1] is None else limits[1] / self.sharers)  # fmt: skip

    @property
    def limits(self) -> Limits:
        """This sharer's share: the limits in force divided by the sharers."""
        return self._share(self._full)

    def _learned(self, rpm: float | None, tpm: float | None, headers: bool, seconds: Limits) -> None:
        """Headers name the account's limits: keep to this sharer's share of them."""
        if headers:
            self.learned = (rpm, tpm)
            self._set_full((_lower(self._given[0], rpm) if rpm is not None else self._full[0],
                            _lower(self._given[1], tpm) if tpm is not None else self._full[1]))  # fmt: skip
        if self.on_learned is not None:
            self.on_learned(rpm, tpm, headers, seconds)

    def give(self, rpm: float | None, tpm: float | None) -> None:
        """This sharer's given limits changed (``set_limits``): a given limit always holds."""
        self._given = (rpm if rpm is not None else self._given[0], tpm if tpm is not None else self._given[1])
        self._set_full((_lower(rpm, self._full[0]), _lower(tpm, self._full[1])))

    def _set_full(self, full: Limits) -> None:
        self._full = full
        self.limiter.set_limits(*self._share(full))

    def try_again(self, join: Callable[[], None], clock: Callable[[], float]) -> bool:
        """If a try is due, ``join()`` Redis again: True when it answered (the outage is
        over); Redis still away, the next try waits longer. Other errors propagate."""
        if self.over or clock() < self.next_try:
            return self.over
        try:
            join()
        except Exception as exc:
            if not is_outage(exc):
                raise
            self.tries += 1
            self.next_try = clock() + backoff_delay(self.tries, random=self._random)
            return False
        self.over = True
        return True


def outage_message(where: str, exc: BaseException, outage: Outage, password: str | None) -> str:
    """The one warning of an outage: what failed, what holds meanwhile; never the password."""
    text = f"{type(exc).__name__}: {exc}"
    if password:
        text = text.replace(password, "***")
    rpm, tpm = outage.limits
    return (f"limiter={where!r}: Redis stopped answering ({text}). Until it answers again this process "
            f"keeps to 1/{outage.sharers} of the shared quota on its own (rpm={_fmt(rpm)}, tpm={_fmt(tpm)}), "
            "and tries Redis again with backoff; no row fails for it")  # fmt: skip
