"""The machine-wide limiter on virtual time: limiters on one state file behave as one.

Each test puts two (or three) :class:`MachineLimiter` objects on one file, as
two processes would, on one :class:`FakeClock`. Nothing sleeps for real.
Real processes are in ``test_limiter_processes.py``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from _fake_clock import FakeClock, run, settle_tasks, start_times
from _headers_data import OPENAI_HEADERS

import llmframe
from llmframe._config import resolve
from llmframe._endpoint import Endpoint
from llmframe._errors import ConfigError
from llmframe._limiter import PROBE_POLL_SECONDS, RateLimiter
from llmframe._machine_limiter import EAGER_LOOK_SECONDS, RECLAIM_SECONDS, MachineLimiter
from llmframe._machine_state import owner_alive
from llmframe._shared_limiter import shared_limiter
from llmframe.testing import FakeServer, expected_answer


def sharers(tmp_path: Path, clock: FakeClock, n: int = 2, *, probe: bool = False,
            **kw: Any) -> list[MachineLimiter]:  # fmt: skip
    """``n`` limiters on one state file and clock, as ``n`` processes would have."""
    limiters = [
        MachineLimiter(tmp_path / "quota.state", clock=clock, sleep=clock.sleep, **kw) for _ in range(n)
    ]
    if not probe:
        limiters[0].observe({})  # the server sends no rate-limit headers: given limits only
    return limiters


class _Killed:
    """The state file of a sharer that was killed: it never touches the file again."""

    def lock(self) -> bytes:
        raise ProcessLookupError("killed")

    def unlock(self, data: bytes | None) -> None:
        raise ProcessLookupError("killed")

    def close(self) -> None:
        pass


def kill(limiter: MachineLimiter) -> None:
    """What ``kill -9`` does to a sharer: its owner lock goes, its state stays as it was."""
    limiter._owner.abandon()  # type: ignore[union-attr]
    limiter._file = _Killed()  # type: ignore[assignment]


async def never(dt: float) -> None:
    """A sleep that does not end: the waiters of a sharer that is about to die."""
    await asyncio.get_running_loop().create_future()


# -- one quota -------------------------------------------------------------------------


def test_two_limiters_on_one_file_share_the_burst_and_the_pace(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = sharers(tmp_path, clock, rpm=600)

    async def main() -> tuple[list[float], list[float]]:
        return await start_times(a, clock, [0] * 10), await start_times(b, clock, [0] * 5)

    first, second = run(main)
    assert first == [0.0] * 10  # a takes the whole burst
    assert second == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])  # b waits as a's own requests would
    assert (a.stats.requests, b.stats.requests) == (10, 5)


def test_waiters_of_both_limiters_start_in_arrival_order(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = sharers(tmp_path, clock, tpm=6000)  # 100 tokens/s, a bucket of 100
    one = clock.limiter(tpm=6000)  # the in-process limiter, for the same arrivals
    sizes = [90, 100, 5, 5, 100, 1, 80, 2]

    async def arrivals(limiters: list[RateLimiter]) -> list[tuple[int, float]]:
        granted: list[tuple[int, float]] = []

        async def go(i: int, tokens: int) -> None:
            await limiters[i % len(limiters)].acquire(tokens)
            granted.append((i, clock.now))

        tasks = []
        for i, tokens in enumerate(sizes):
            tasks.append(asyncio.create_task(go(i, tokens)))
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return granted

    shared = run(lambda: arrivals([a, b]))
    clock.now = 0.0
    alone = run(lambda: arrivals([one]))
    assert [i for i, _ in shared] == list(range(len(sizes)))  # FIFO across the two
    assert [t for _, t in shared] == pytest.approx([t for _, t in alone])


def test_a_refund_in_one_limiter_lets_the_other_go_earlier(tmp_path: Path) -> None:
    async def main(refund: bool) -> float:
        clock = FakeClock()
        a, b = sharers(tmp_path / str(refund), clock, tpm=6000)
        first = await a.acquire(100)
        if refund:
            a.settle(first, 40)
        await b.acquire(100)
        return clock.now

    assert run(lambda: main(False)) == pytest.approx(1.0)
    assert run(lambda: main(True)) == pytest.approx(0.4)


def test_a_cancel_in_one_limiter_gives_the_slot_to_the_other(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = sharers(tmp_path, clock, rpm=60, tpm=6000)

    async def main() -> float:
        first = await a.acquire(100)
        a.cancel(first)
        await b.acquire(100)
        return clock.now

    assert run(main) == 0.0


def test_a_429_in_one_limiter_pauses_the_other(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = sharers(tmp_path, clock, rpm=600, tpm=6000)

    async def main() -> list[float]:
        await b.acquire(100)  # goes at once; a's next one would have to wait a second
        a.pause(2.0)  # a's request got a 429: b starts nothing before 2.0 either
        return await start_times(b, clock, [100, 100])

    # the drained bucket refills while the pause lasts: b's next goes at 2.0, then 1 s later
    assert run(main) == pytest.approx([2.0, 3.0])
    assert a.stats.pauses == 1 and b.stats.pauses == 0


def test_headers_learned_by_one_limiter_set_the_limits_of_the_other(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = sharers(tmp_path, clock, probe=True)
    assert a.stats.probing and b.stats.probing

    async def main() -> list[float]:
        probe = await a.acquire(10)  # a's probe: b waits behind it
        waiters = [asyncio.create_task(b.acquire(100)) for _ in range(2)]
        await clock.sleep(2.0)
        assert not any(w.done() for w in waiters)
        # Without the reset headers: they would also say how much the server's window holds
        a.observe({k: v for k, v in OPENAI_HEADERS.items() if "reset" not in k})
        a.settle(probe, 10)
        done = await asyncio.gather(*waiters)
        return [r.start or 0.0 for r in done]

    starts = run(main)
    assert (b.rpm, b.tpm) == (600, 6000)
    assert not b.stats.probing and b.stats.learned_from_headers
    # b's queued waiters notice within one poll; the remaining header (5990) leaves the bucket
    # nearly full: the first goes, the second 1 s later (6000 TPM = 100 tokens/s)
    assert 2.0 <= starts[0] <= 2.0 + PROBE_POLL_SECONDS + 1e-9
    assert starts[1] == pytest.approx(starts[0] + 1.0)


def test_the_lowest_limit_any_sharer_gives_holds_for_all(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = sharers(tmp_path, clock, rpm=600)
    b.set_limits(rpm=300)
    assert (a.stats.rpm, b.rpm) == (300, 300)  # a reads it at its next transaction
    with pytest.raises(ConfigError, match="rpm"):
        b.set_limits(rpm=-1)
    b.close()
    assert a.stats.rpm == 600  # b left: a's own limit holds again
    assert a.sharers == 1


# -- dead sharers -----------------------------------------------------------------------


def test_a_dead_sharers_waiting_reservations_come_back(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = sharers(tmp_path, clock, rpm=60)  # one request per second, a burst of one
    a._sleep = never  # a's waiters sleep until a dies

    async def main() -> float:
        doomed = [asyncio.create_task(a.acquire(0)) for _ in range(10)]  # 0.0, then 1.0 .. 9.0
        await settle_tasks()
        kill(a)
        await clock.sleep(EAGER_LOOK_SECONDS)  # a's queue reaches 9 s ahead: b looks soon
        await b.acquire(0)  # without the reclaim: at 10.0, after a's nine ghosts
        for task in doomed:
            task.cancel()
        await asyncio.gather(*doomed, return_exceptions=True)
        return clock.now

    assert run(main) == pytest.approx(1.0)  # a's one request that went still counts
    assert b.sharers == 1
    assert not (tmp_path / "owners" / a._token).exists()  # the reclaim removed its owner file


def test_a_dead_sharers_probe_is_given_back(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = sharers(tmp_path, clock, probe=True)

    async def main() -> float:
        await a.acquire(10)  # the probe, never settled: a dies with it
        kill(a)
        await b.acquire(10)  # queued behind the probe until the reclaim finds a dead
        return clock.now

    now = run(main)
    assert RECLAIM_SECONDS <= now <= RECLAIM_SECONDS + 2 * PROBE_POLL_SECONDS
    assert b.stats.probing  # b holds the probe now; its answer's headers end probing


def test_a_live_sharer_is_never_reclaimed(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = sharers(tmp_path, clock, rpm=60)
    assert owner_alive(tmp_path / "owners", a._token)

    async def main() -> float:
        await a.acquire(0)
        await clock.sleep(0.5)
        await b.acquire(0)  # a is alive: its request stands, b waits for the next second
        await clock.sleep(2 * RECLAIM_SECONDS)
        await start_times(b, clock, [0])
        return clock.now

    assert run(main) == pytest.approx(3.0)
    assert a.sharers == b.sharers == 2


def test_close_gives_back_what_was_waiting(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = sharers(tmp_path, clock, rpm=60)
    a._sleep = never

    async def main() -> float:
        doomed = [asyncio.create_task(a.acquire(0)) for _ in range(5)]
        await settle_tasks()
        a.close()  # a clean exit, at once: no need to wait for a reclaim
        await b.acquire(0)
        for task in doomed:
            task.cancel()
        await asyncio.gather(*doomed, return_exceptions=True)
        return clock.now

    assert run(main) == pytest.approx(1.0)  # behind a's one request that went, not its four waiters


# -- the file ----------------------------------------------------------------------------


def test_a_state_from_before_a_restart_keeps_the_limits_not_the_times(tmp_path: Path) -> None:
    clock = FakeClock(start=1000.0)
    [a] = sharers(tmp_path, clock, 1, clock_id="boot-1", probe=True)
    a.observe(OPENAI_HEADERS)
    run(lambda: start_times(a, clock, [6000]))  # the token bucket in debt for a minute
    a._owner.abandon()  # type: ignore[union-attr]  # the machine went down
    clock.now = 5.0  # monotonic time restarts with the machine
    b = MachineLimiter(tmp_path / "quota.state", clock=clock, sleep=clock.sleep, clock_id="boot-2")
    assert (b.rpm, b.tpm) == (600, 6000)
    assert not b.stats.probing
    run(lambda: start_times(b, clock, [100]))
    assert clock.now == 5.0


def test_an_unreadable_state_starts_afresh(tmp_path: Path) -> None:
    (tmp_path / "quota.state").write_bytes(b"LFQ1 not a state at all")
    clock = FakeClock()
    a, b = sharers(tmp_path, clock, rpm=600)
    assert run(lambda: start_times(b, clock, [0] * 10)) == [0.0] * 10
    assert run(lambda: start_times(a, clock, [0])) == pytest.approx([0.1])


# -- the option ---------------------------------------------------------------------------

SECRET = "sk-machine-DO-NOT-LEAK-0123456789"


def test_limiter_option_accepts_process_and_machine_and_names_them(monkeypatch: Any) -> None:
    assert resolve(model="m").limiter is None  # the process's own limiter
    assert resolve(model="m", limiter="machine").limiter == "machine"
    monkeypatch.setenv("LLMFRAME_LIMITER", "machine")
    assert resolve(model="m").limiter == "machine"
    assert resolve(model="m", limiter="process").limiter == "process"  # the call wins
    for bad in ("machines", "redis:/localhost:6379", 1):
        with pytest.raises(ConfigError, match=r"'process'.*'machine'"):
            llmframe.configure(limiter=bad)
    monkeypatch.setenv("LLMFRAME_LIMITER", "cluster")
    with pytest.raises(ConfigError, match="LLMFRAME_LIMITER"):
        resolve(model="m")


def test_shared_limiter_machine_keeps_its_state_in_the_cache_folder_without_the_key() -> None:
    from llmframe._cache_admin import default_cache_dir

    url = "https://machine.example.com/v1"
    limiter = shared_limiter(url, SECRET, "m", rpm=100, kind="machine")
    assert isinstance(limiter, MachineLimiter)
    assert shared_limiter(url + "/", SECRET, "m", kind="machine") is limiter
    assert shared_limiter(url, SECRET, "m") is not limiter  # the process's own is another
    limiter.observe(OPENAI_HEADERS)
    folder = default_cache_dir() / "limiters"
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert len([p for p in files if p.suffix == ".state"]) == 1
    for path in files:
        assert SECRET.encode() not in path.read_bytes() and SECRET not in str(path)
    assert SECRET not in repr(limiter) and SECRET not in repr(limiter.stats)
    with pytest.raises(ConfigError, match="limiter must be one of"):
        shared_limiter(url, SECRET, "m", kind="cluster")


def test_apply_with_the_machine_limiter(fake_server: FakeServer, tmp_path: Path) -> None:
    import pandas as pd

    fake_server.configure(rpm=600, tpm=100_000)
    df = pd.DataFrame({"review": [f"review {i}" for i in range(12)]})
    out = df.llm.apply("Sentiment of {review}", output="answer", model="m", base_url=fake_server.base_url,
                       api_key=fake_server.api_key, limiter="machine", batch_size=1, cache=False,
                       progress=False)  # fmt: skip
    assert out["answer"].tolist() == [expected_answer(f"Sentiment of review {i}") for i in range(12)]
    endpoint = Endpoint.of(model="m", base_url=fake_server.base_url, api_key=fake_server.api_key)
    limiter = endpoint.limiter(kind="machine")
    assert isinstance(limiter, MachineLimiter)
    assert limiter.stats.requests == 12 and (limiter.rpm, limiter.tpm) == (600, 100_000)
    assert fake_server.stats.rate_limited == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_joins_as_a_sharer_of_its_own(tmp_path: Path) -> None:
    import warnings

    parent = MachineLimiter(tmp_path / "quota.state", rpm=600)
    parent.observe({})
    token = parent._token
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, on 3.12+
        pid = os.fork()
    if pid == 0:  # the child: a new owner, the parent still a sharer
        ok = parent._token != token and parent.sharers == 2 and parent.stats.requests == 0
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert owner_alive(tmp_path / "owners", token)  # the child's exit left the parent's lock alone
    assert parent._token == token
