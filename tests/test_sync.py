"""llmframe._sync.run_sync: a coroutine to completion from a script, from inside a
running loop (nest-asyncio, as in Jupyter) and in a worker thread (loops that cannot
be patched), with its result, its exceptions and Ctrl-C all reaching the caller."""

from __future__ import annotations

import _thread
import asyncio
import asyncio.selector_events
import gc
import signal
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import nest_asyncio
import pytest

from llmframe._sync import run_sync

Make = Callable[[], Coroutine[Any, Any, Any]]


class Probe:
    """What a coroutine run by run_sync saw: its loop and thread, and whether it was cancelled."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.cancelled = False

    def note(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread = threading.current_thread()

    async def answer(self) -> int:
        self.note()
        await asyncio.sleep(0)  # a real suspension, as an HTTP call would be
        return 42

    async def fail(self) -> None:
        self.note()
        await asyncio.sleep(0)
        raise ValueError("row 3 is wrong")

    async def interrupted(self) -> None:
        """Raise KeyboardInterrupt at the caller as Ctrl-C would, then wait to be cancelled."""
        self.note()
        if threading.current_thread() is threading.main_thread():
            # A Ctrl-C lands in whatever the loop runs next: here, a callback.
            asyncio.get_running_loop().call_soon(_raise_keyboard_interrupt)
        else:
            _thread.interrupt_main()  # the main thread is starting or waiting for this worker
        try:
            await asyncio.Event().wait()  # "a long run"
        except asyncio.CancelledError:
            self.cancelled = True
            raise


    async def interrupted_in_a_finalizer(self) -> str:
        """Ctrl-C handled while the run's thread is in a finalizer, then "a long run"."""
        self.note()
        _PressesCtrlCWhenFreed()  # freed at once: Ctrl-C is handled inside its __del__
        try:
            await asyncio.wait_for(asyncio.Event().wait(), 10)  # over at once if cancelled
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        except asyncio.TimeoutError:
            return "finished: the Ctrl-C was lost"
        raise AssertionError("unreachable")

    async def answer_after_a_finalizer(self) -> int:
        self.note()
        _PressesCtrlCWhenFreed()
        await asyncio.sleep(0)
        return 42


class _PressesCtrlCWhenFreed:
    """nest-asyncio's pure-Python futures run a ``__del__`` each time one is freed, so a
    Ctrl-C often lands in one; Python's own handler raises there, and the exception is
    printed as "ignored" and dropped."""

    def __del__(self) -> None:
        _thread.interrupt_main()  # handled before the next call returns, still inside __del__
        len(())


def _raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


Runner = Callable[[Make], Any]


@pytest.fixture
def collect_abandoned_tasks() -> Iterator[None]:
    """A task that ended in KeyboardInterrupt is never awaited. Collected at some later
    moment, its "exception was never retrieved" log runs Python code inside whatever runs
    then, and on CPython 3.11 inside an ast.parse() that makes the parse fail (pytest
    parses modules as it imports them). Collect such tasks in the test that made them."""
    yield
    gc.collect()


def from_a_script(make: Make) -> Any:
    return run_sync(make)


def kernel_loop() -> asyncio.AbstractEventLoop:
    """A loop like a Jupyter kernel's, run without asyncio.run's SIGINT handler.

    Of a class of its own: nest-asyncio patches the *class* of the loop it is given,
    and a test on the default class would leave every later loop in the process patched.
    """
    cls = type("KernelLoop", (asyncio.selector_events.BaseSelectorEventLoop,), {})
    return cls()  # type: ignore[no-any-return]


def from_a_notebook_cell(make: Make) -> Any:
    """run_sync inside a running loop, which nest-asyncio patches (or refuses to)."""

    async def cell() -> Any:
        return run_sync(make)

    loop = kernel_loop()
    try:
        return loop.run_until_complete(cell())
    finally:
        loop.close()


@pytest.fixture
def unpatchable(monkeypatch: pytest.MonkeyPatch) -> None:
    """nest-asyncio refusing the loop, as it does for uvloop."""

    def refuse(loop: Any = None) -> None:
        raise ValueError("Can't patch loop of type <class 'uvloop.Loop'>")

    monkeypatch.setattr(nest_asyncio, "apply", refuse)


@pytest.fixture(params=["script", "notebook", "worker thread"])
def where(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "worker thread":
        request.getfixturevalue("unpatchable")
    yield str(request.param)


def runner(where: str) -> Runner:
    return from_a_script if where == "script" else from_a_notebook_cell


def test_result_comes_back(where: str) -> None:
    probe = Probe()
    assert runner(where)(probe.answer) == 42
    in_worker = probe.thread is not threading.main_thread()
    assert in_worker == (where == "worker thread")


def test_notebook_runs_on_the_cells_own_loop() -> None:
    """So that an AsyncOpenAI client created in the notebook keeps working in the run."""
    probe = Probe()
    seen: list[asyncio.AbstractEventLoop] = []

    async def cell() -> Any:
        seen.append(asyncio.get_running_loop())
        return run_sync(probe.answer)

    loop = kernel_loop()
    try:
        assert loop.run_until_complete(cell()) == 42
    finally:
        loop.close()
    assert probe.loop is seen[0] and probe.thread is threading.main_thread()


def test_exception_reaches_the_caller_as_itself(where: str) -> None:
    probe = Probe()
    with pytest.raises(ValueError, match="row 3 is wrong") as info:
        runner(where)(probe.fail)
    assert info.traceback[-1].name == "fail"  # the original exception, not a wrapper
    # Nor raised during the handling of how the run found its loop (none; nest-asyncio refused).
    assert info.value.__context__ is None, repr(info.value.__context__)


@pytest.mark.usefixtures("collect_abandoned_tasks")
def test_ctrl_c_cancels_the_run_and_reaches_the_caller(where: str) -> None:
    probe = Probe()
    with pytest.raises(KeyboardInterrupt):
        runner(where)(probe.interrupted)
    # The run was cancelled, so it could store what finished; it is not left running.
    assert probe.cancelled
    assert not any(t.name == "llmframe-run" and t.is_alive() for t in threading.enumerate())


def test_ctrl_c_landing_in_a_finalizer_still_stops_the_run(where: str) -> None:
    probe = Probe()
    with pytest.raises(KeyboardInterrupt):
        runner(where)(probe.interrupted_in_a_finalizer)
    assert probe.cancelled
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_a_handler_of_the_users_is_left_alone(where: str) -> None:
    seen: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        assert runner(where)(Probe().answer_after_a_finalizer) == 42
        assert seen == [signal.SIGINT]  # theirs ran, and llmframe's did not cancel the run
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("collect_abandoned_tasks")
def test_keyboard_interrupt_raised_inside_the_run_reaches_the_caller(where: str) -> None:
    async def stop() -> None:
        await asyncio.sleep(0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner(where)(stop)


def test_the_coroutine_is_made_where_it_runs(where: str) -> None:
    """run_sync takes a factory, so no coroutine is created on one loop and run on another."""
    made_in: list[threading.Thread] = []
    probe = Probe()

    def make() -> Coroutine[Any, Any, int]:
        made_in.append(threading.current_thread())
        return probe.answer()

    assert runner(where)(make) == 42
    assert made_in == [probe.thread]
