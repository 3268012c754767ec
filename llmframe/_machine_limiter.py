"""One RPM + TPM quota for every process on the machine: the limiter, its state in a file.

Several processes or kernels on one key each run their own
:class:`~llmframe._limiter.RateLimiter` and together overrun the quota.
:class:`MachineLimiter` is that same limiter, with its lock widened to the
machine: each of its transactions takes the thread lock, then an exclusive
``flock`` on one small file per endpoint (:mod:`._machine_state`), loads what
the file holds, runs the very code of the in-process limiter, and writes the
result back. What is shared is what decides when a request may start:

- the schedule (:mod:`._schedule`): both buckets' levels, the FIFO anchor (the
  latest start handed out), the pause and its shift, the count of waiters;
- what the headers taught (:mod:`._quota`), so any process's headers set the
  limits of all, and a 429 in one process pauses every sharer;
- who holds the probe, while the limits are unknown;
- one row per sharer: its given limits (the lowest any sharer gives holds for
  all, as they share one quota), the reservations it placed that have not
  started yet, and its requests in flight (what the server may not have counted
  yet when a reply says what it has left: :meth:`RateLimiter.observe`).

Each process computes its own start times under the lock, so FIFO order holds
across processes, and sleeps in its own event loop. A process that dies (even
``kill -9``) leaves its row behind; within ``RECLAIM_SECONDS`` another sharer
finds its owner file unlocked (:func:`~llmframe._machine_state.owner_alive`)
and gives its waiting reservations, and the probe if it held one, back to
everyone (sooner, every ``EAGER_LOOK_SECONDS``, while the dead one's queue
would hold a newcomer back). Its requests already in flight keep their charge:
the server may well have counted them. Starts already handed out to the
others stand; what the dead one held goes to whoever is placed next.

Times are ``time.monotonic()``, one clock for every process on a machine; a
state written before the machine restarted is started afresh.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

from ._limiter import RateLimiter
from ._machine_state import (
    Holding,
    Owner,
    StateFile,
    clock_domain,
    decode_state,
    encode_state,
    owner_alive,
)
from ._quota import Quota
from ._schedule import ACTIVE, SCHEDULED, Reservation, Schedule

__all__ = ["EAGER_LOOK_SECONDS", "RECLAIM_SECONDS", "MachineLimiter"]

#: How often a sharer looks for dead ones (one ``flock`` attempt per other sharer).
RECLAIM_SECONDS = 1.0
#: How often it looks while other sharers' waiting reservations hold the schedule more
#: than ``RECLAIM_SECONDS`` ahead: a start handed out stands, so it should not be
#: handed out behind the reservations of a sharer that has just died.
EAGER_LOOK_SECONDS = 0.05


#: Stands for a probe that another process holds.
_REMOTE_PROBE = Reservation(0, -math.inf)


class _OwnedSchedule(Schedule):
    """A :class:`Schedule` that also keeps each sharer's row up to date."""

    __slots__ = ("holdings", "mine")

    def __init__(self, mine: Holding) -> None:
        super().__init__()
        self.mine = mine
        self.holdings: dict[str, Holding] = {}

    def place(self, reservation: Reservation, now: float) -> None:
        super().place(reservation, now)
        mine = self.mine
        mine.count += 1
        mine.requests += float(reservation._charged_request)
        mine.tokens += reservation.tokens if reservation._charged_tokens else 0
        mine.latest = max(mine.latest, reservation.start or -math.inf)

    def delay(self, reservation: Reservation, now: float) -> float:
        delay = super().delay(reservation, now)
        if reservation.state == ACTIVE:
            self._started(reservation)
        return delay

    def release(self, reservation: Reservation, now: float) -> None:
        if reservation.state == SCHEDULED:
            self._started(reservation)
        super().release(reservation, now)

    def _started(self, reservation: Reservation) -> None:
        """``reservation`` no longer waits (it started, or was given back)."""
        mine = self.mine
        mine.count = max(0, mine.count - 1)
        mine.requests = max(0.0, mine.requests - float(reservation._charged_request))
        mine.tokens = max(
            0.0, mine.tokens - (reservation.tokens if reservation._charged_tokens else 0)
        )
        if not mine.count:
            mine.latest = -math.inf

    def pause(self, seconds: float, now: float) -> float:
        before = self._last_start
        delta = super().pause(seconds, now)
        moved = self._last_start - before
        if moved:  # the waiting reservations moved back: so did every sharer's latest
            for holding in self.holdings.values():
                if holding.count and holding.latest > now:
                    holding.latest += moved
        return delta

    def bury(self, dead: Holding, now: float) -> None:
        """A sharer died: its waiting reservations will never start."""
        waiting = [h.latest for h in self.holdings.values() if h.count]
        self.forget(dead.count, dead.requests, dead.tokens, now, max(waiting, default=-math.inf))


class _Transaction:
    """The limiter's lock: the thread lock, then the file; state loaded on entry, stored on exit."""

    __slots__ = ("_limiter", "_thread_lock")

    def __init__(self, limiter: MachineLimiter) -> None:
        self._limiter = limiter
        self._thread_lock = threading.Lock()

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            self._limiter._begin()
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._limiter._commit()
        finally:
            self._thread_lock.release()


class MachineLimiter(RateLimiter):
    """A :class:`RateLimiter` whose quota every process using ``path`` shares.

    >>> limiter = MachineLimiter(Path("~/.cache/llmframe/limiters/x.json"), rpm=500)  # doctest: +SKIP

    ``owners`` is the folder of the sharers' lock files; ``alive(token)`` says
    whether a sharer lives (default: its owner file is locked). ``clock`` and
    ``sleep`` are injectable as for :class:`RateLimiter`; every sharer of one
    file must use the same clock.
    """

    opens = False  # see RateLimiter.opens

    __slots__ = (
        "__weakref__", "_alive", "_clock_domain", "_file", "_last_look", "_owner", "_path",
        "_probe_owner", "_raw", "_token",
    )  # fmt: skip

    def __init__(
        self,
        path: Path,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        owners: Path | None = None,
        alive: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        burst_seconds: float = 1.0,
        clock_id: str | None = None,
    ) -> None:
        super().__init__(rpm, tpm, clock=clock, sleep=sleep, burst_seconds=burst_seconds)
        self._path = path
        folder = owners if owners is not None else path.parent / "owners"
        self._alive = alive or (lambda token: owner_alive(folder, token))
        self._clock_domain = clock_id if clock_id is not None else clock_domain()
        self._join(folder)
        _LIVE.add(self)

    def _join(self, folder: Path) -> None:
        """Become a sharer of the file: a new owner, a fresh local view, then the file's state."""
        self._file = StateFile(self._path)
        self._owner: Owner | None = Owner(folder)
        self._token = self._owner.token
        given_rpm, given_tpm = self._quota.given
        owned = self._schedule = _OwnedSchedule(Holding(os.getpid(), given_rpm, given_tpm))
        owned.holdings[self._token] = owned.mine
        self._configure(self._clock())
        self._probe = None
        self._queue.clear()
        self._in_flight = [0, 0]  # a forked child's are the parent's
        self._probe_owner: str | None = None
        self._raw = b""
        self._last_look = -math.inf
        self._lock = _Transaction(self)
        with self._lock:
            pass  # the first transaction loads what others left, and adds this sharer's row

    # -- one transaction ---------------------------------------------------------------

    @property
    def _owned(self) -> _OwnedSchedule:
        schedule = self._schedule
        assert isinstance(schedule, _OwnedSchedule)
        return schedule

    def _begin(self) -> None:
        raw = self._file.lock()
        try:
            now = self._clock()
            if raw != self._raw:  # another process wrote since this one did
                self._raw = raw
                self._load(raw)
            since = now - self._last_look
            if since >= RECLAIM_SECONDS or (since >= EAGER_LOOK_SECONDS and self._held_back(now)):
                self._last_look = now
                self._reclaim(now)
            self._configure(now)  # to the limits just loaded, if they changed
            self._admit_queued(now)
        except BaseException:
            self._file.unlock(None)
            raise

    def _commit(self) -> None:
        raw = self._encode()
        self._file.unlock(raw if raw != self._raw else None)  # self._raw: what the file holds
        self._raw = raw

    def _load(self, raw: bytes) -> None:
        owned = self._owned
        try:
            domain, holder, quota, schedule, holdings = decode_state(raw)
        except ValueError:
            return  # empty, or unreadable (a writer killed mid-write): this view becomes the state
        self._quota.load(quota)
        if domain != self._clock_domain:
            return  # written before a restart: its times mean nothing now
        owned.load(schedule)
        token = self._token
        if token in holdings:  # others may have moved its latest start (a pause)
            owned.mine.latest = holdings[token].latest
        holdings[token] = owned.mine
        owned.holdings = holdings
        if holder is None or holder not in holdings:
            holder = None
            if self._probe is _REMOTE_PROBE:
                self._probe = None
        elif holder != token:
            self._probe = _REMOTE_PROBE
        self._probe_owner = holder if holder != token else None
        self._merge_given()

    def _encode(self) -> bytes:
        if self._probe is None:
            probe = None
        elif self._probe is _REMOTE_PROBE:
            probe = self._probe_owner
        else:
            probe = self._token
        owned = self._owned
        owned.mine.flying, owned.mine.flying_tokens = self._in_flight
        return encode_state(
            self._clock_domain, probe, self._quota.shared(), owned.shared(), owned.holdings
        )

    def _flying(self) -> tuple[float, float]:
        """Requests in flight on the whole machine, and their tokens (lock held)."""
        others = [h for h in self._owned.holdings.values() if h is not self._owned.mine]
        return (self._in_flight[0] + sum(h.flying for h in others),
                self._in_flight[1] + sum(h.flying_tokens for h in others))  # fmt: skip

    def _held_back(self, now: float) -> bool:
        """Do other sharers' waiting reservations reach more than ``RECLAIM_SECONDS`` ahead?"""
        horizon = now + RECLAIM_SECONDS
        mine = self._owned.mine
        return any(h.count and h.latest > horizon for h in self._owned.holdings.values() if h is not mine)

    def _reclaim(self, now: float) -> None:
        """Give back what dead sharers held (see the module docstring)."""
        owned = self._owned
        for token in [t for t in owned.holdings if t != self._token]:
            if self._alive(token):
                continue
            dead = owned.holdings.pop(token)
            owned.bury(dead, now)
            if self._probe is _REMOTE_PROBE and self._probe_owner == token:
                self._probe = None
                self._probe_owner = None
            self._merge_given()

    def _merge_given(self) -> None:
        """The lowest limit any sharer gave holds for all: they share one quota."""
        rows = self._owned.holdings.values()
        rpms = [h.rpm for h in rows if h.rpm is not None]
        tpms = [h.tpm for h in rows if h.tpm is not None]
        self._quota.given = (min(rpms, default=None), min(tpms, default=None))

    # -- what differs from the in-process limiter ----------------------------------------

    def set_limits(self, rpm: float | None = None, tpm: float | None = None) -> None:
        """This sharer's given limits; the lowest any sharer gives holds for all of them."""
        checked = Quota(rpm, tpm)  # validates both before anything changes
        with self._lock:
            mine = self._owned.mine
            mine.rpm = checked.rpm if rpm is not None else mine.rpm
            mine.tpm = checked.tpm if tpm is not None else mine.tpm
            self._merge_given()
            now = self._clock()
            self._configure(now)
            self._admit_queued(now)  # giving both limits ends probing

    @property
    def sharers(self) -> int:
        """How many limiters share this quota now (this one included), dead ones not yet found."""
        with self._lock:
            return len(self._owned.holdings)

    def close(self) -> None:
        """Leave the quota: this sharer's waiting reservations and row go back at once."""
        if self._owner is None:
            return
        with self._lock:
            owned = self._owned
            mine = owned.holdings.pop(self._token, owned.mine)
            owned.bury(mine, self._clock())
            owned.mine = Holding(os.getpid())
            if self._probe is not None and self._probe is not _REMOTE_PROBE:
                self._probe = None
            self._owner.release()
            self._owner = None
        self._file.close()
        _LIVE.discard(self)

    def _after_fork(self) -> None:
        """In a forked child: the parent's lock, file and row are the parent's; join anew."""
        self._file.close()
        if self._owner is None:
            return  # closed before the fork
        self._owner.abandon()  # the child's copy of the descriptor only: the parent keeps its lock
        self._join(self._owner.folder)

    def __repr__(self) -> str:
        return f"MachineLimiter(rpm={self.rpm}, tpm={self.tpm}, state={str(self._path)!r})"


_LIVE: weakref.WeakSet[MachineLimiter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for limiter in list(_LIVE):
        limiter._after_fork()


def _close_all() -> None:
    for limiter in list(_LIVE):
        limiter.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all)
