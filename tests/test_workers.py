"""llmframe._workers.stopped: a background task is cancelled and waited for, its own
ending kept from the caller, the caller's own cancellation never swallowed."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from llmframe._workers import stopped


def test_the_tasks_own_error_is_not_the_callers() -> None:
    logged: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: logged.append(context))
        started = asyncio.Event()

        async def failing_on_cancel() -> None:
            try:
                started.set()
                await asyncio.Event().wait()
            finally:
                raise ValueError("the flush failed")

        task = asyncio.ensure_future(failing_on_cancel())
        await started.wait()
        await stopped(task)
        assert task.done() and isinstance(task.exception(), ValueError)
        await stopped(None)

    asyncio.run(main())
    gc.collect()
    assert logged == []  # retrieved: no "exception was never retrieved"


def test_the_callers_cancellation_is_raised_once_the_task_has_ended() -> None:
    async def main() -> None:
        started, release = asyncio.Event(), asyncio.Event()
        ended: list[str] = []

        async def slow_to_stop() -> None:
            try:
                started.set()
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await release.wait()  # a cleanup that takes a while (writing the cache)
                ended.append("task")
                raise

        async def caller() -> None:
            task = asyncio.ensure_future(slow_to_stop())
            await started.wait()
            await stopped(task)
            ended.append("caller went on")  # what awaiting under suppress(BaseException) allowed

        stopping = asyncio.ensure_future(caller())
        await started.wait()
        for _ in range(3):  # the caller is in stopped(), the task in its cleanup
            await asyncio.sleep(0)
        stopping.cancel()  # Ctrl-C while the caller waits for its background task
        for _ in range(3):
            await asyncio.sleep(0)
        assert not stopping.done() and ended == []  # it still waits for the task to end ...
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await stopping  # ... then is cancelled itself, instead of going on
        assert ended == ["task"]

    asyncio.run(main())
