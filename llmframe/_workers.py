"""The worker pool: ``n`` workers take the next batch whenever they are free.

Batches are formed lazily, at the moment a worker is free (so they see the
latest batch size and resends). A worker that finds nothing to take waits
while others are busy, since their replies may queue resends; the pool ends
when nothing is left and nothing is in flight. Cancelling the pool (Ctrl-C)
cancels every worker, not just the one that saw it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["drain"]

T = TypeVar("T")


async def drain(take: Callable[[], T | None], process: Callable[[T], Awaitable[None]], workers: int) -> None:
    cond = asyncio.Condition()
    in_flight = 0

    async def worker() -> None:
        nonlocal in_flight
        while True:
            async with cond:
                while True:
                    item = take()
                    if item is not None:
                        in_flight += 1
                        break
                    if in_flight == 0:
                        cond.notify_all()
                        return
                    await cond.wait()
            try:
                await process(item)
            finally:
                async with cond:
                    in_flight -= 1
                    cond.notify_all()

    tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, workers))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
