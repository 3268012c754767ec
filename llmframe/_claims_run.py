"""Claims during one run: claim rows as the planner takes them, wait for rows another process answers.

The planner asks :meth:`RunClaims.top_up` for more rows whenever it runs low; the
next chunk of keys is claimed in the store (:mod:`._claims`) at once: :data:`CLAIM_CHUNK`
keys, twice as many each time the last chunk was sent in under half of
:data:`CLAIM_SECONDS`, half as many when it took more than twice that (within
:data:`CLAIM_CHUNK` and :data:`MAX_CLAIM_CHUNK`). One claim costs per key, and more per
key the more keys the store holds (its index pages are rewritten by every transaction),
so a fast run claims about :data:`CLAIM_SECONDS` of sending at a time, and a slow one
still splits its rows finely with a sharer.
Keys this run got go to the planner; keys another live run holds wait here, so two
processes running the same frame split it chunk by chunk instead of one waiting
for all. :meth:`RunClaims.watch` runs beside the workers (the pool does not end
while a key waits) and every :data:`POLL_SECONDS`:

- looks the waiting keys up in the cache: a key that landed is answered from it
  (counted as cached and as answered elsewhere: no tokens, no cost);
- claims the rest again: a key whose owner released it (it failed there, or the
  run ended), died, or let its lease expire is this run's now and goes to the
  planner, after one more look in the cache; a key still held after
  :data:`MAX_WAIT_SECONDS` is taken anyway (paying twice beats waiting forever);
- every :data:`~._claims.REFRESH_SECONDS`, refreshes the lease and releases the
  keys this run is done with, after a cache flush so that their answers are in
  the folder before anyone may claim them.

When the pool ends (every row sent, the run stopped or cancelled), the watch
flushes the cache and releases every claim, failed keys too.

A key claimed by this run may have been answered by another after this run
looked the cache up (it finished and released it, or died after a flush): when
the store's release counter moved since, or the claim took a key over, the keys
just claimed are looked up once more before they are sent.

If the store fails (a locked or unwritable folder), the run warns once and goes on
without claims: every row it has is sent, as it would be without a store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _claims
from ._cache_fs import CacheLocation
from ._cache_reader import CacheReader
from ._claims import STORE_ERRORS, Claims, ClaimStore
from ._jobs import Job
from ._redis_limiter import is_redis_url, redacted
from ._report import RunReport
from ._todo import JobQueue
from ._warn import warn_user

if TYPE_CHECKING:
    from ._answers import Answers
    from ._cache import AnswerCache
    from ._engine import Run

__all__ = ["CLAIM_CHUNK", "CLAIM_SECONDS", "MAX_CLAIM_CHUNK", "MAX_WAIT_SECONDS", "POLL_SECONDS", "RunClaims", "open_claims", "open_store"]

log = logging.getLogger("llmframe")

#: Keys claimed at a time: a few requests' worth, so that sharers split a frame finely,
#: while one claim (a few ms) serves hundreds of rows.
CLAIM_CHUNK = 256
#: The most keys claimed at a time (a window of rows made at once, :mod:`._todo`).
MAX_CLAIM_CHUNK = 2048
#: About how long the rows of one claim take to send, when the run is fast enough.
CLAIM_SECONDS = 1.0
#: Held jobs at which the done ones are swept out (their keys kept for the next release).
HELD_SWEEP = 2048
#: How often waiting keys are looked up in the cache (answers land at each 2 s flush).
POLL_SECONDS = 0.5
#: The longest a key waits for a live owner before this run sends it itself.
MAX_WAIT_SECONDS = 300.0


def open_claims(where: CacheLocation | None, limiter: str | None) -> Claims | None:
    """The claim store of a run's cache: in Redis for a cache at a URL with
    ``limiter="redis://..."`` (shared by every machine), else the folder's (for a URL,
    this machine's folder for it); ``None`` without a cache or when it cannot open."""
    if where is None:
        return None
    if where.remote and is_redis_url(limiter):
        from ._claims_redis import RedisClaimStore

        try:
            return RedisClaimStore(str(limiter), where.cache_id)
        except Exception as exc:  # redis missing or unreachable: the run goes on with this machine's
            warn_user(f"llmframe: cannot keep claims in {redacted(str(limiter))} ({type(exc).__name__}); "
                      "claims are this machine's only, so runs on other machines may pay for the same rows")  # fmt: skip
    return open_store(where.local)


def open_store(folder: Path | None, **kwargs: Any) -> ClaimStore | None:
    """The claim store of a cache folder, or ``None`` (no folder, or the store cannot open)."""
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return ClaimStore(folder, **kwargs)
    except (OSError, sqlite3.Error) as exc:
        warn_user(f"llmframe: cannot use the claim store in {folder} ({exc}); runs sharing this "
                  "cache folder at the same time may pay for the same rows")  # fmt: skip
        return None


class RunClaims:
    """One run's claims. ``landed(keys)`` reads the cache afresh (an answer or ``None``
    per key); ``forget()`` frees what it holds; ``flush()`` writes this run's answers."""

    def __init__(
        self, store: Claims, pending: JobQueue, *, report: RunReport, answers: Answers,
        progress: Any, landed: Callable[[Sequence[str]], list[str | None]], forget: Callable[[], None],
        flush: Callable[[], None], sleep: Callable[[float], Awaitable[None]], stopped: Callable[[], bool],
        clock: Callable[[], float] = time.time, chunk: int = CLAIM_CHUNK, max_chunk: int = MAX_CLAIM_CHUNK,
        max_wait: float = MAX_WAIT_SECONDS, refresh: float | None = None,
    ) -> None:  # fmt: skip
        self.store: Claims | None = store
        self.unclaimed = pending.detach()  # not claimed yet: the planner gets them through top_up
        self.pending = pending
        self.report, self.answers, self.progress = report, answers, progress
        self.landed, self.forget, self.flush = landed, forget, flush
        self.sleep, self.stopped, self.clock = sleep, stopped, clock
        self.chunk, self.max_wait = chunk, max_wait
        self.min_chunk, self.max_chunk = chunk, max(chunk, max_chunk)
        self.claimed_at: float | None = None  # when top_up last claimed
        self.refresh_every = _claims.REFRESH_SECONDS if refresh is None else refresh
        self.held: list[Job] = []  # claimed by this run, not released yet
        self.done_keys: list[str] = []  # of held jobs answered since: released at the next renew
        self.sweep_at = HELD_SWEEP
        self.waits: dict[str, tuple[Job, float]] = {}  # key -> (job, waiting since)
        self.seen = store.releases_at_open  # the release counter when the cache was looked up
        self.next_refresh = clock() + self.refresh_every
        self.last_tick = clock()

    @classmethod
    def of(
        cls, store: Claims | None, run: Run | None, cache: AnswerCache | None, *,
        sleep: Callable[[float], Awaitable[None]],
    ) -> RunClaims | None:  # fmt: skip
        """The claims of ``run``, wired: the planner gets its rows through :meth:`top_up`.
        ``None`` without a store, or with no cache or no run (nothing to send): the store
        is closed then."""
        if store is None or run is None or cache is None:
            if store is not None:
                store.close()
            return None
        reader = CacheReader(cache.location)  # keeps its index while rows wait: each poll reads what is new
        claims = cls(store, run.planner.pending, report=run.report, answers=run.outcomes.answers,
                     progress=run.outcomes.progress, landed=reader.lookup, forget=reader.drop_index,
                     flush=cache.flush, sleep=sleep, stopped=lambda: run.endpoint.fatal is not None)  # fmt: skip
        run.planner.feed = claims.top_up
        return claims

    # ---- the planner's side -------------------------------------------------------------
    def top_up(self, want: int) -> None:
        """Claim rows until the planner has ``want`` to send, or none is left to claim."""
        if len(self.pending) >= want or not self.unclaimed:
            return
        now = self.clock()
        if self.claimed_at is not None:  # the rows of the last claim were sent in `now - claimed_at`
            if now - self.claimed_at < CLAIM_SECONDS / 2:
                self.chunk = min(2 * self.chunk, self.max_chunk)
            elif now - self.claimed_at > 2 * CLAIM_SECONDS:
                self.chunk = max(self.chunk // 2, self.min_chunk)
        self.claimed_at = now
        while len(self.pending) < want and self.unclaimed:
            chunk = [self.unclaimed.popleft() for _ in range(min(self.chunk, len(self.unclaimed)))]
            self.pending.extend(self.claim(chunk))

    def claim(self, jobs: list[Job], *, force: bool = False) -> list[Job]:
        """Claim ``jobs``; those held by another run wait; returns the ones to send."""
        if self.store is None:
            return jobs
        try:
            got = self.store.claim([j.key for j in jobs], force=force)
        except STORE_ERRORS as exc:
            self.broken(exc)
            return jobs
        now = self.clock()
        mine = [j for j in jobs if j.key not in got.theirs]
        for job in jobs:
            if job.key in got.theirs:
                self.waits.setdefault(job.key, (job, now))
            else:
                self.waits.pop(job.key, None)
        self.held.extend(mine)
        if len(self.held) >= self.sweep_at:
            self.sweep()
        self.report.taken_over_rows += sum(len(j.rows) for j in mine if j.key in got.taken)
        if got.taken or got.releases != self.seen:
            try:
                mine = self.answer_landed(mine)
                self.seen = got.releases
            except Exception as exc:  # the cache could not be read: send them (paid twice at worst)
                log.debug("llmframe: could not look claimed keys up again: %s", exc)
        return mine

    # ---- the pool's side ----------------------------------------------------------------
    def waiting(self) -> bool:
        """Whether rows wait for another process (the pool must not end yet)."""
        return bool(self.waits) and not self.stopped()

    async def watch(self, wake: Callable[[], Awaitable[None]]) -> None:
        """Poll until cancelled (the pool ended: nothing more is sent), then :meth:`close`;
        ``wake`` the pool when rows were answered or are to send."""
        try:
            while True:
                await self.sleep(POLL_SECONDS)
                await asyncio.sleep(0)  # an injected sleep may return at once: still yield
                try:
                    moved = self.tick()
                except Exception as exc:  # a bug must not leave rows waiting forever
                    self.broken(exc)
                    moved = True
                if moved:
                    await wake()
        finally:
            self.close()

    def tick(self) -> bool:
        """One poll; whether any waiting row was answered or handed to the planner."""
        now = self.clock()
        if self.waits:
            self.report.waited_seconds += now - self.last_tick
        self.last_tick = now
        if now >= self.next_refresh:
            self.next_refresh = now + self.refresh_every
            self.renew()
        if not self.waits or self.store is None:
            return False
        before = len(self.waits)
        self.answer_landed([job for job, _ in self.waits.values()])
        overdue = [job for job, since in self.waits.values() if now - since >= self.max_wait]
        rest = [job for job, since in self.waits.values() if now - since < self.max_wait]
        # claim() looks a key up once more when it was released or taken over since.
        ready = (self.claim(rest) if rest else []) + (self.claim(overdue, force=True) if overdue else [])
        self.pending.extendleft(reversed(ready))
        if not self.waits:
            self.forget()
        return len(self.waits) != before or bool(ready)

    def answer_landed(self, jobs: list[Job]) -> list[Job]:
        """Answer from the cache the ``jobs`` whose answers landed; returns the others."""
        if not jobs:
            return jobs
        found = self.landed([j.key for j in jobs])
        rest: list[Job] = []
        for job, answer in zip(jobs, found, strict=True):
            if answer is None:
                rest.append(job)
                continue
            self.waits.pop(job.key, None)
            job.done = True
            for row in job.rows:
                self.answers[row] = answer
            n = len(job.rows)
            self.report.cached_rows += n
            self.report.answered_elsewhere_rows += n
            self.progress.update(n)
        return rest

    def renew(self) -> None:
        """Refresh the lease; release the keys this run is done with, once written."""
        if self.store is None:
            return
        self.sweep()
        try:
            self.store.refresh()
            if self.done_keys:
                self.flush()
                self.seen = self.store.release(self.done_keys, seen=self.seen)
                self.done_keys = []
        except STORE_ERRORS as exc:
            self.broken(exc)
        except Exception as exc:  # the flush failed: keep the claims, try again next time
            log.debug("llmframe: keeping claims, the cache flush failed: %s", exc)

    def sweep(self) -> None:
        """Keep only the keys of held jobs that are done: a job is not held in memory until
        the next renew (at thousands of rows a second, that was tens of thousands of jobs)."""
        self.done_keys.extend(j.key for j in self.held if j.done)
        self.held = [j for j in self.held if not j.done]
        self.sweep_at = max(HELD_SWEEP, 2 * len(self.held))  # in flight, mostly: not swept again at once

    def broken(self, exc: BaseException) -> None:
        """Go on without claims: every row this run has is sent by it."""
        if self.store is None:
            return
        warn_user(f"llmframe: the claim store {self.store.path} failed ({type(exc).__name__}: {exc}); "
                  "this run sends its remaining rows without claiming them")  # fmt: skip
        store, self.store = self.store, None
        self.pending.extendleft(reversed([job for job, _ in self.waits.values()]))
        self.pending.extend(self.unclaimed)
        self.waits.clear()
        self.unclaimed.clear()
        with contextlib.suppress(*STORE_ERRORS):
            store.close()

    def close(self) -> None:
        """Write the cache, then end the lease and release every claim, so that a waiter
        then finds every answer this run got. Safe to call twice."""
        self.forget()
        if self.store is not None:
            store, self.store = self.store, None
            try:
                self.flush()
            except Exception as exc:  # its rows may be paid again elsewhere: never wrong
                log.debug("llmframe: releasing claims, the cache flush failed: %s", exc)
            try:
                store.close()
            except STORE_ERRORS as exc:  # the lease expires by itself
                log.debug("llmframe: could not release claims: %s", exc)
