"""The worker pool: ``n`` workers take the next batch whenever they are free.

Batches are formed lazily, at the moment a worker is free (so they see the
latest batch size and resends). A worker that finds nothing to take waits
while others are busy, since their replies may queue resends; the pool ends
when nothing is left, nothing is in flight and nothing waits ``outside``
(rows another process is answering, :mod:`._claims_run`), whose ``watch`` runs
beside the workers and wakes them when it hands work back. Cancelling the pool
(Ctrl-C) cancels every worker, not just the one that saw it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

__all__ = ["Outside", "drain", "every", "stopped"]

T = TypeVar("T")


class Outside(Protocol):
    """Work held outside the pool: it does not end while ``waiting()``."""

    def waiting(self) -> bool: ...

    async def watch(self, wake: Callable[[], Awaitable[None]]) -> None:
        """Run until cancelled; await ``wake()`` when ``take`` may have more, or ``waiting`` changed."""


async def drain(
    take: Callable[[], T | None],
    process: Callable[[T], Awaitable[None]],
    workers: int,
    outside: Outside | None = None,
) -> None:
    cond = asyncio.Condition()
    in_flight = 0

    async def wake() -> None:
        async with cond:
            cond.notify_all()

    async def worker() -> None:
        nonlocal in_flight
        while True:
            async with cond:
                while True:
                    item = take()
                    if item is not None:
                        in_flight += 1
                        break
                    if in_flight == 0 and (outside is None or not outside.waiting()):
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
    watcher = asyncio.ensure_future(outside.watch(wake)) if outside is not None else None
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        await stopped(watcher)


def every(seconds: float, action: Callable[[], None], sleep: Callable[[float], Awaitable[None]]) -> asyncio.Task[None]:
    """A task that calls ``action`` every ``seconds`` of the (injectable) ``sleep`` until cancelled."""

    async def loop() -> None:
        while True:
            await sleep(seconds)
            await asyncio.sleep(0)  # an injected sleep may return at once: still yield
            action()

    return asyncio.ensure_future(loop())


async def stopped(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has ended.

    How ``task`` ended is not the caller's: its error or cancellation is not raised. The
    caller's own cancellation (Ctrl-C while a run stops its flusher) is: it is raised once
    ``task`` has ended, never swallowed as ``task``'s would be by ``await task``.
    """
    if task is None:
        return
    task.cancel()
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError as exc:
            cancelled = exc
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" log later
    if cancelled is not None:
        raise cancelled
