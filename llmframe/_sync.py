"""Run a coroutine from synchronous code, including inside a running event loop.

In a script there is no running loop and ``asyncio.run`` does it. In Jupyter a
loop is already running in the kernel's thread, so ``asyncio.run`` refuses;
there the loop is patched with nest-asyncio, which keeps the run on the user's
loop (an ``AsyncOpenAI`` client the user created there keeps working). Loops
that cannot be patched (uvloop and other non-asyncio loops) get the run in a
worker thread with a loop of its own; llmframe's shared state (limiters,
cache) is thread-safe, so that is equally correct.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["run_sync"]

T = TypeVar("T")


def _in_thread(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    result: list[T] = []
    error: list[BaseException] = []
    loop = asyncio.new_event_loop()
    task_box: list[asyncio.Task[T]] = []

    interrupted = threading.Event()
    # Waited on instead of thread.join(): a Ctrl-C inside join() can mark a thread that is
    # still running as stopped (CPython issue 90882), and join() then returns at once.
    finished = threading.Event()

    async def main() -> T:
        task = asyncio.ensure_future(make())
        task_box.append(task)
        if interrupted.is_set():  # Ctrl-C came before the task existed
            task.cancel()
        return await task

    def target() -> None:
        try:
            result.append(loop.run_until_complete(main()))
        except BaseException as exc:
            error.append(exc)
        finally:
            loop.close()
            finished.set()

    thread = threading.Thread(target=target, name="llmframe-run", daemon=True)
    try:
        thread.start()  # inside the try: a Ctrl-C can land while the thread starts, too
        while not finished.wait(0.1):
            pass
    except KeyboardInterrupt:
        # Cancel the run so that it stores what finished, then re-raise.
        interrupted.set()
        if task_box:
            with contextlib.suppress(RuntimeError):  # the loop may have just closed
                loop.call_soon_threadsafe(task_box[0].cancel)
        if thread.is_alive():  # else it never started, or starts now and sees `interrupted`
            finished.wait()
        raise
    if error:
        raise error[0]
    return result[0]


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine that ``make()`` returns to completion and return its result."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    if not isinstance(loop, asyncio.BaseEventLoop):
        return _in_thread(make)
    try:
        import nest_asyncio

        nest_asyncio.apply(loop)
    except Exception:
        return _in_thread(make)
    task = loop.create_task(make())
    try:
        return loop.run_until_complete(task)
    except KeyboardInterrupt:
        # Jupyter's stop button: cancel the run (it stores what finished) instead of
        # leaving it running in the kernel's loop, sending requests for nobody.
        task.cancel()
        with contextlib.suppress(BaseException):
            loop.run_until_complete(task)
        raise
