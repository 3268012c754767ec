"""Virtual time for the limiter's tests: nothing sleeps for real, and times come out exact.

``FakeClock.sleep`` waits on a future; once every task is blocked, the clock
jumps to the earliest wake-up.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from llmframe._limiter import RateLimiter

T = TypeVar("T")


class FakeClock:
    """Virtual time for one event loop.

    ``sleep(dt)`` parks the caller until ``now + dt``; when every task is
    blocked, the clock jumps to the earliest wake-up and wakes those sleepers
    in the order they went to sleep.
    """

    def __init__(self, start: float = 0.0):
        self.now = start
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._driver: asyncio.Task[None] | None = None

    def __call__(self) -> float:
        return self.now

    async def sleep(self, dt: float) -> None:
        self.sleeps.append(dt)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(dt, 0.0), next(self._order), future))
        if self._driver is None or self._driver.done():
            self._driver = asyncio.create_task(self._drive())
        await future

    async def _drive(self) -> None:
        while True:
            for _ in range(20):  # let every runnable task run until it blocks
                await asyncio.sleep(0)
            while self._sleepers and self._sleepers[0][2].done():  # cancelled sleepers
                heapq.heappop(self._sleepers)
            if not self._sleepers:
                return
            self.now = max(self.now, self._sleepers[0][0])
            while self._sleepers and self._sleepers[0][0] <= self.now:
                future = heapq.heappop(self._sleepers)[2]
                if not future.done():
                    future.set_result(None)

    def limiter(
        self, rpm: float | None = None, tpm: float | None = None, *, probe: bool = False, **kw: Any
    ) -> RateLimiter:
        """A limiter on this clock. Unless ``probe``, a limit not given means "no limit":
        the limiter is told that the server sends no rate-limit headers."""
        limiter = RateLimiter(rpm, tpm, clock=self, sleep=self.sleep, **kw)
        if not probe:
            limiter.observe({})
        return limiter


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def wrapper() -> T:
        return await main()

    return asyncio.run(wrapper())


async def settle_tasks() -> None:
    """Let freshly created tasks reach their first real wait."""
    for _ in range(20):
        await asyncio.sleep(0)


async def start_times(limiter: RateLimiter, clock: FakeClock, sizes: list[int]) -> list[float]:
    """Acquire one after another; the clock reading when each acquire returns."""
    starts = []
    for tokens in sizes:
        await limiter.acquire(tokens)
        starts.append(clock.now)
    return starts
