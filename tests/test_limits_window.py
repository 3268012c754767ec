"""The server's window remembered between processes: the first burst of a new process is its
share of that window; a stale memory is corrected by the first reply, or dropped on a 429.

Virtual time for the limiter's arithmetic; real HTTP to a :class:`FakeServer` for two runs in a
row, as two kernels would make them (the registry and the memory cleared in between).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from _fake_clock import FakeClock, run, start_times
from _headers_data import window_headers

from llmframe import _limits_store
from llmframe._cache_admin import default_cache_dir
from llmframe._headers import parse_rate_limits
from llmframe._machine_limiter import MachineLimiter
from llmframe._quota import Quota
from llmframe._shared_limiter import _registry, shared_limiter
from llmframe.testing import FakeServer, expected_answer


def _new_process() -> None:
    """What a new process knows: nothing in memory, only the files."""
    from llmframe._capabilities import MEMORY

    _registry.clear()
    _limits_store._known.clear()
    MEMORY.clear()


def _stored() -> dict[str, Any]:
    return dict(json.loads((default_cache_dir() / _limits_store.LIMITS_FILE).read_text()))


# -- the quota ---------------------------------------------------------------------------------


def test_a_remembered_window_holds_until_a_response_speaks() -> None:
    quota = Quota(None, None)
    quota.remember(1200, 300_000, (60.0, 1.0))
    assert quota.windows == (1200.0, 5000.0)  # the seconds, as amounts of each limit
    assert quota.window_seconds == (None, None)  # not this process's own reading
    quota.learn(parse_rate_limits(window_headers(1200, 0, "1s")))
    assert quota.windows == (pytest.approx(20.0), None)  # the server's reading replaces the memory
    assert quota.window_seconds == (pytest.approx(1.0), None)


def test_a_429_drops_the_remembered_windows_but_not_the_limits() -> None:
    quota = Quota(None, None)
    quota.remember(1200, None, (60.0, None))
    assert quota.distrust() and quota.windows == (None, None) and quota.rpm == 1200
    assert not quota.distrust()  # nothing left to drop
    quota.remember(600, None, (float("nan"), -1.0))  # observed already: ignored
    assert quota.rpm == 1200


# -- the limiter, on virtual time --------------------------------------------------------------


def test_the_first_burst_is_the_opening_of_the_remembered_window() -> None:
    clock = FakeClock()
    limiter = clock.limiter(probe=True, burst_seconds=0.5)
    limiter.remember(1200, None, (60.0, None))
    assert run(lambda: start_times(limiter, clock, [0] * 900)) == [0.0] * 900  # 3/4 of the minute

    clock = FakeClock()
    limiter = clock.limiter(probe=True, burst_seconds=0.5)
    limiter.remember(1200, None, (1.0, None))  # a window of 20: 15 at once, as a first reply would open it
    starts = run(lambda: start_times(limiter, clock, [0] * 17))
    assert starts == pytest.approx([0.0] * 15 + [0.05, 0.10])
    assert limiter._schedule.requests.capacity == 10  # spent: back to half the window

    clock = FakeClock()
    limiter = clock.limiter(probe=True, burst_seconds=0.5)
    limiter.remember(1200, None)  # the limits alone: the 0.5 s burst, then 20 per second
    starts = run(lambda: start_times(limiter, clock, [0] * 12))
    assert starts == pytest.approx([0.0] * 10 + [0.05, 0.10])


def test_a_smaller_window_in_the_first_reply_lowers_the_bucket_at_once() -> None:
    clock = FakeClock()
    limiter = clock.limiter(probe=True, burst_seconds=0.5)
    limiter.remember(1200, None, (60.0, None))

    async def main() -> list[float]:
        sent = [await limiter.acquire(0) for _ in range(30)]  # the first burst, from the memory
        limiter.observe(window_headers(1200, 0, "1s"))  # the server holds 1 s now, and is out
        limiter.settle(sent[0], 0)
        return await start_times(limiter, clock, [0] * 3)

    assert run(main) == pytest.approx([0.05, 0.10, 0.15])
    assert limiter._schedule.requests.capacity == 10  # half of the server's 20


def test_the_first_reply_ends_the_remembered_opening_and_its_own_headers_decide() -> None:
    clock = FakeClock()
    limiter = clock.limiter(probe=True, burst_seconds=0.5)
    limiter.remember(1200, None, (60.0, None))  # open at 900

    async def smaller() -> list[float]:
        sent = [await limiter.acquire(0) for _ in range(30)]
        limiter.observe(window_headers(1200, 20, "0s"))  # the server holds 20 now, 30 in flight
        limiter.settle(sent[0], 0)
        return await start_times(limiter, clock, [0] * 13)

    # the opening of 900 is gone: half of the 20 now, then 20 per second
    assert run(smaller) == pytest.approx([0.0] * 10 + [0.05, 0.10, 0.15])
    assert limiter._schedule.requests.capacity == 10

    clock = FakeClock()
    limiter = clock.limiter(probe=True, burst_seconds=0.5)
    limiter.remember(1200, None, (1.0, None))  # open at 15 of a remembered 20

    async def larger() -> list[float]:
        sent = [await limiter.acquire(0) for _ in range(5)]
        limiter.observe(window_headers(1200, 1195, "250ms"))  # a minute's window: 1,200, 1,195 left
        limiter.settle(sent[0], 0)
        return await start_times(limiter, clock, [0] * 901)

    # the reply opens the bucket as a first process's would: 3/4 of 1,200 at once
    assert run(larger) == pytest.approx([0.0] * 900 + [0.05])


def test_a_remembered_opening_counts_what_went_before_it_and_comes_once() -> None:
    clock = FakeClock()
    limiter = clock.limiter(1200, 10**9, probe=True, burst_seconds=0.5)  # given: no probe

    async def main() -> list[float]:
        before = await start_times(limiter, clock, [0] * 10)  # the given limits' 0.5 s burst
        limiter.remember(1200, None, (60.0, None))  # 900 at once, of which 10 went already
        middle = await start_times(limiter, clock, [0] * 400)
        limiter.remember(1200, None, (60.0, None))  # recalled again before any reply: no new opening
        return before + middle + await start_times(limiter, clock, [0] * 491)

    assert run(main) == pytest.approx([0.0] * 900 + [0.05])


def test_a_429_as_the_first_reply_to_a_remembered_opening_opens_nothing_again() -> None:
    clock = FakeClock()
    limiter = clock.limiter(probe=True, burst_seconds=0.5)
    limiter.remember(1200, None, (1.0, None))  # open at 15 of a remembered 20

    async def main() -> list[float]:
        for _ in range(15):
            await limiter.acquire(0)
        limiter.pause(1.0)  # the first reply is a 429, then its headers: the server has a minute
        limiter.observe(window_headers(1200, 1200, "0s"))
        await clock.sleep(60.0)
        return await start_times(limiter, clock, [0] * 601)

    # headers after a 429 never open the bucket: half the minute (not 3/4), then 20 per second
    assert run(main) == pytest.approx([60.0] * 600 + [60.05])


def test_a_memory_recalled_after_a_reply_opens_nothing() -> None:
    clock = FakeClock()
    limiter = clock.limiter(probe=True, burst_seconds=0.5)

    async def main() -> list[float]:
        limiter.observe(window_headers(1200, 0, "1s"))  # this process's own reading: nothing left
        first = await start_times(limiter, clock, [0])
        limiter.remember(1200, None, (60.0, None))  # staler than the reply: ignored, opens nothing
        return first + await start_times(limiter, clock, [0] * 3)

    assert run(main) == pytest.approx([0.05, 0.10, 0.15, 0.20])


def test_a_429_before_any_reply_leaves_the_usual_burst() -> None:
    clock = FakeClock()
    limiter = clock.limiter(probe=True, burst_seconds=0.5)
    limiter.remember(1200, None, (60.0, None))

    async def main() -> list[float]:
        for _ in range(30):
            await limiter.acquire(0)
        limiter.pause(1.0)  # a 429 without headers: the memory was stale
        await clock.sleep(60.0)  # a minute later the bucket is full again: of the usual burst
        return await start_times(limiter, clock, [0] * 12)

    starts = run(main)
    assert starts == pytest.approx([60.0] * 10 + [60.05, 60.10])
    assert limiter.rpm == 1200 and limiter.stats.pauses == 1


def test_machine_sharers_start_from_one_memory_and_drop_it_together(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = (MachineLimiter(tmp_path / "quota.state", clock=clock, sleep=clock.sleep, burst_seconds=0.5)
            for _ in range(2))  # fmt: skip
    a.remember(1200, None, (60.0, None))
    b.remember(600, None, (1.0, None))  # the second sharer's recall comes too late: a's holds

    async def main() -> list[float]:
        first = await start_times(b, clock, [0] * 100)  # b spends from the window a remembered
        assert first == [0.0] * 100
        b.pause(0.5)  # b's 429: every sharer drops the memory
        await clock.sleep(60.0)
        return await start_times(a, clock, [0] * 12)

    assert run(main) == pytest.approx([60.0] * 10 + [60.05, 60.10])
    a.close()
    b.close()


# -- limits.json -------------------------------------------------------------------------------


def test_the_window_seconds_are_stored_two_digits_rounded_down() -> None:
    _new_process()
    _limits_store.remember("k", 1200.0, 300_000.0, True, (1.0187, 59.99))
    entry = _stored()["k"]
    assert (entry["rpm_window_seconds"], entry["tpm_window_seconds"]) == (1.0, 59.0)
    _limits_store.remember("k", 1200.0, 300_000.0, True, (0.4999, None))
    entry = _stored()["k"]
    assert (entry["rpm_window_seconds"], entry["tpm_window_seconds"]) == (0.49, None)
    assert _limits_store.window_seconds({"rpm_window_seconds": "60", "tpm_window_seconds": True}) == (None, None)


def test_a_reply_that_repeats_what_is_stored_costs_no_path_and_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    _new_process()
    _limits_store.remember("k", 1200.0, None, True, (60.0, None))
    looked: list[int] = []
    real = _limits_store._path
    monkeypatch.setattr(_limits_store, "_path", lambda: looked.append(1) or real())
    for _ in range(100):
        _limits_store.remember("k", 1200.0, None, True, (60.0, None))
    assert looked == []
    _limits_store.remember("k", 1200.0, None, True, (1.0, None))  # the window changed: written
    assert looked == [1] and _stored()["k"]["rpm_window_seconds"] == 1.0
    _new_process()
    assert _limits_store.recall("k") is not None
    _limits_store.remember("k", 1200.0, None, True, (1.0, None))  # what was just read: no write
    assert looked == [1, 1]  # recall's own look only


def test_a_new_process_starts_from_the_stored_window() -> None:
    url = "https://remember-window.example.com/v1"
    _new_process()
    shared_limiter(url, "sk-window", "m").observe(window_headers(1200, 1199, "50ms"))  # a minute
    assert _stored()[next(iter(_stored()))]["rpm_window_seconds"] == 60.0
    _new_process()
    second = shared_limiter(url, "sk-window", "m")
    assert second._schedule.requests.capacity == 900  # open at 3/4 of the minute, before any reply


# -- two runs over HTTP ------------------------------------------------------------------------


def _apply(server: FakeServer, template: str, n: int, key: str) -> pd.Series:
    reviews = [f"review {i} {uuid.uuid4().hex[:6]}" for i in range(n)]
    out = pd.DataFrame({"review": reviews}).llm.apply(
        template, model="m", base_url=server.base_url, api_key=key, batch_size=1,
        cache=default_cache_dir() / "answers", progress=False,  # the endpoint's verdicts kept: no probe
    )  # fmt: skip
    assert out["answer"].tolist() == [expected_answer(template.format(review=r)) for r in reviews]
    return out["answer"]


def _second_run(server: FakeServer, template: str, n: int, key: str) -> tuple[int, float, list[Any]]:
    """A new process's run: how many requests the server saw before its first reply, how many
    the usual 0.5 s burst and the refill until then would have let go (at 20/s), and the log."""
    _new_process()
    server.reset_stats()
    _apply(server, template, n, key)
    log = server.stats.snapshot()["log"]
    first_start, first_reply = min(r.t_start for r in log), min(r.t_end for r in log)
    usual = 10 + 20 * (first_reply - first_start)
    return sum(r.t_start < first_reply for r in log), usual, log


def test_a_second_process_sends_its_first_burst_from_the_remembered_window(fake_server_factory: Any) -> None:
    # RPM 1,200 over the fake server's minute-long window: 0.5 s worth is 10 requests
    server = fake_server_factory(rpm=1200, latency=0.2)
    key = f"key-{uuid.uuid4().hex}"
    _new_process()
    _apply(server, "A {review}", 40, key)
    entry = next(iter(_stored().values()))
    assert entry["rpm"] == 1200 and entry["rpm_window_seconds"] == 60.0

    remembered, usual, _ = _second_run(server, "B {review}", 40, key)
    # the window: as many as the run lets go at once (32 at a time), before any reply
    assert remembered >= 24 and remembered > usual + 4, (remembered, usual)

    for stored in (data := _stored()).values():  # the same memory without the window
        stored["rpm_window_seconds"] = stored["tpm_window_seconds"] = None
    (default_cache_dir() / _limits_store.LIMITS_FILE).write_text(json.dumps(data))
    limits_only, usual, _ = _second_run(server, "C {review}", 40, key)
    # the limits alone: 10 at once, then 20/s until the first reply (0.2 s, more on a busy machine)
    assert limits_only <= usual + 2, (limits_only, usual)


def test_a_second_process_opens_a_remembered_one_second_window_at_once(fake_server_factory: Any) -> None:
    # the server holds one second of RPM 1,200: 20 requests; the opening is 15 of them
    server = fake_server_factory(rpm=1200, latency=0.1, burst_seconds=1.0)  # ~2 paced ones before a reply
    key = f"key-{uuid.uuid4().hex}"
    _new_process()
    _apply(server, "A {review}", 40, key)
    assert next(iter(_stored().values()))["rpm_window_seconds"] == pytest.approx(1.0, abs=0.1)
    server.configure(rpm=None)
    server.configure(rpm=1200)  # a new limit starts full: the next process meets a whole window
    remembered, usual, log = _second_run(server, "B {review}", 40, key)
    # 15 at once where the half window alone let 10 go, then 20/s until the first reply either way
    # (+5; +3 even if a loaded machine sends none of the paced ones before the reply)
    assert remembered >= usual + 3, (remembered, usual)
    assert not [r for r in log if r.status == 429]


def test_a_stale_remembered_window_costs_one_wave_of_429s_at_most(fake_server_factory: Any) -> None:
    server = fake_server_factory(rpm=1500, latency=0.2)
    key = f"key-{uuid.uuid4().hex}"
    _new_process()
    _apply(server, "A {review}", 20, key)
    assert next(iter(_stored().values()))["rpm_window_seconds"] == 60.0
    server.configure(burst_seconds=1.0)  # the server now holds one second: 25 requests
    _, _, log = _second_run(server, "B {review}", 80, key)  # every answer checked
    first_answer = min(r.t_end for r in log if r.status == 200)
    refused = [r for r in log if r.status == 429]
    # the memory lets the run's 32 go at once and the server takes its 25 (7 refused when
    # measured; 2 more for its refill while they arrive); the refusals' own headers say
    # what it holds, so none comes after the first wave
    assert len(refused) <= 32 - 25 + 2, len(refused)
    assert all(r.t_start < first_answer for r in refused)
    assert next(iter(_stored().values()))["rpm_window_seconds"] == pytest.approx(1.0, abs=0.1)


def test_a_remembered_window_smaller_than_the_burst_keeps_the_burst() -> None:
    clock = FakeClock()
    limiter = clock.limiter(probe=True, burst_seconds=0.5)
    limiter.remember(1200, None, (0.1, None))
    starts = run(lambda: start_times(limiter, clock, [0] * 11))
    assert starts == pytest.approx([0.0] * 10 + [0.05])
