"""Run a coroutine from synchronous code, including inside a running event loop.

In a script there is no running loop and ``asyncio.run`` does it. In Jupyter a
loop is already running in the kernel's thread, so ``asyncio.run`` refuses;
there the loop is patched with nest-asyncio, which keeps the run on the user's
loop (an ``AsyncOpenAI`` client the user created there keeps working). Loops
that cannot be patched (uvloop and other non-asyncio loops) get the run in a
worker thread with a loop of its own; llmframe's shared state (limiters,
cache) is thread-safe, so that is equally correct.

Ctrl-C (Jupyter's stop button) cancels the run, which stores what finished, and
then raises ``KeyboardInterrupt`` at the caller, on every one of these paths:
see :class:`_CtrlC` for why Python's own handler is not enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Coroutine
from types import FrameType, TracebackType
from typing import Any, TypeVar

__all__ = ["run_sync"]

T = TypeVar("T")


class _CtrlC:
    """While a run goes on, Ctrl-C cancels it instead of raising wherever it lands.

    Python's default handler raises ``KeyboardInterrupt`` in whatever code the main
    thread runs when the signal is handled. Where that is a finalizer (``__del__``, a
    weakref callback; nest-asyncio's pure-Python futures run one each time one is
    freed) the exception is printed as "ignored" and dropped, and the run would go on
    to its end. This handler raises nothing on the first Ctrl-C: it cancels the run's
    task from the loop (``call_soon_threadsafe``, which also wakes a loop blocked in
    ``select``), and :func:`run_sync` raises ``KeyboardInterrupt`` once the run has
    ended, whatever it ended with. A second Ctrl-C raises at once, as Python's handler
    does, so that a run stuck in its cleanup can still be left.

    Installed only in the main thread and only over Python's default handler (as
    ``asyncio.run`` does): a handler the user installed is left alone.
    """

    def __init__(self) -> None:
        self.pressed = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Future[Any] | None = None
        self._handler = self._on_sigint  # one bound method, to recognise it when restoring

    def __enter__(self) -> _CtrlC:
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if signal.getsignal(signal.SIGINT) is self._handler:  # installed, so in the main thread
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def attach(self, loop: asyncio.AbstractEventLoop, task: asyncio.Future[Any]) -> None:
        """The run's task, once it exists; cancelled now if Ctrl-C came before it did."""
        self._loop, self._task = loop, task
        if self.pressed:  # the handler saw no task: cancel it here (both may: cancel is idempotent)
            self.cancel()

    async def run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """``make()``'s coroutine as a task of the running loop, attached."""
        task = asyncio.ensure_future(make())
        self.attach(asyncio.get_running_loop(), task)
        return await task

    def cancel(self) -> None:
        """Cancel the run from any thread (a no-op before :meth:`attach`)."""
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop may have just closed
                loop.call_soon_threadsafe(task.cancel)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.pressed += 1
        if self.pressed > 1:
            raise KeyboardInterrupt
        self.cancel()

    def raise_if_pressed(self) -> None:
        """After the run: Ctrl-C was pressed, so the caller gets ``KeyboardInterrupt``
        (not the ``CancelledError`` it ended with, nor its result if it finished anyway)."""
        if self.pressed:
            raise KeyboardInterrupt from None


def _in_thread(make: Callable[[], Coroutine[Any, Any, T]], ctrl_c: _CtrlC) -> T:
    result: list[T] = []
    error: list[BaseException] = []
    loop = asyncio.new_event_loop()
    # Waited on instead of thread.join(): a Ctrl-C inside join() can mark a thread that is
    # still running as stopped (CPython issue 90882), and join() then returns at once.
    finished = threading.Event()

    def target() -> None:
        try:
            result.append(loop.run_until_complete(ctrl_c.run(make)))
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
        # A second Ctrl-C, or one under a handler of the user's: cancel the run so that it
        # stores what finished, then re-raise.
        ctrl_c.pressed += 1
        ctrl_c.cancel()
        if thread.is_alive():  # else it never started, or starts now and sees `pressed`
            finished.wait()
        raise
    if error:
        raise error[0]
    return result[0]


def _on_the_running_loop(make: Callable[[], Coroutine[Any, Any, T]], loop: asyncio.AbstractEventLoop,
                         ctrl_c: _CtrlC) -> T:  # fmt: skip
    task = loop.create_task(make())
    ctrl_c.attach(loop, task)
    try:
        result = loop.run_until_complete(task)
    except KeyboardInterrupt:
        # Raised inside the run, or Ctrl-C under a handler of the user's: cancel the run (it
        # stores what finished) instead of leaving it running in the kernel's loop.
        task.cancel()
        with contextlib.suppress(BaseException):
            loop.run_until_complete(task)
        raise
    return result


def _in_a_new_loop(make: Callable[[], Coroutine[Any, Any, T]], ctrl_c: _CtrlC) -> T:
    """``asyncio.run`` (which, seeing the handler is not Python's, leaves it to ``ctrl_c``)."""
    return asyncio.run(ctrl_c.run(make))


def _run(make: Callable[[], Coroutine[Any, Any, T]], ctrl_c: _CtrlC) -> T:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # a script: no loop (run outside this block, or every error the run
        loop = None  # raises would show "no running event loop" as what it happened during)
    if loop is None:
        return _in_a_new_loop(make, ctrl_c)
    if not isinstance(loop, asyncio.BaseEventLoop):
        return _in_thread(make, ctrl_c)
    try:
        import nest_asyncio

        nest_asyncio.apply(loop)
        nested = True
    except Exception:  # the run goes outside this block, as above
        nested = False
    return _on_the_running_loop(make, loop, ctrl_c) if nested else _in_thread(make, ctrl_c)


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine that ``make()`` returns to completion and return its result."""
    with _CtrlC() as ctrl_c:
        try:
            result = _run(make, ctrl_c)
        except BaseException:
            ctrl_c.raise_if_pressed()
            raise
        ctrl_c.raise_if_pressed()
        return result
