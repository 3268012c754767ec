"""The opening on virtual time: the first headers that say how much the server's window holds,
nothing waiting, let the bucket hold 3/4 of it, filled to what the server has left less what
is in flight; once spent, the bucket is back to its usual size until the server says its
window is 3/4 full again (the client paused) or the limit changes. The machine-wide limiter
does not open (see ``RateLimiter.opens``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from _fake_clock import FakeClock, run, settle_tasks, start_times
from _headers_data import window_headers

from llmframe._bucket import OPEN_SHARE, SPENT
from llmframe._limiter import RateLimiter
from llmframe._machine_limiter import MachineLimiter


async def answered(limiter: RateLimiter, clock: FakeClock, n: int) -> list[float]:
    """``n`` requests one after another, each answered at once: when each started."""
    starts = []
    for _ in range(n):
        limiter.settle(await limiter.acquire(0), 0)
        starts.append(clock.now)
    return starts


def test_the_opening_comes_again_when_the_server_says_its_window_filled_up() -> None:
    clock = FakeClock()
    limiter = clock.limiter(probe=True, burst_seconds=0.5)

    async def main() -> tuple[list[float], list[float], list[float], list[float]]:
        probe = await limiter.acquire(0)
        limiter.observe(window_headers(1200, 19, "50ms"))  # holds 20; 19 left, the probe in flight
        limiter.settle(probe, 0)
        opened = await answered(limiter, clock, 16)
        await clock.sleep(10.0)  # a pause (a check's verdict): full again, and the server says so
        limiter.observe(window_headers(1200, 20, "0s"))
        again = await answered(limiter, clock, 16)
        await clock.sleep(10.0)  # full here, but the server has only 14 left (another client)
        limiter.observe(window_headers(1200, 14, "300ms"))
        less_left = await answered(limiter, clock, 11)
        await clock.sleep(10.0)  # a new limit (the key's tier changed)
        limiter.observe(window_headers(2400, 40, "0s"))
        new_limit = await answered(limiter, clock, 31)
        return opened, again, less_left, new_limit

    opened, again, less_left, new_limit = run(main)
    assert opened == pytest.approx([0.0] * 15 + [0.05])  # 3/4 of 20 (19 left, 1 in flight: 18)
    assert again == pytest.approx([10.05] * 15 + [10.10])
    assert less_left == pytest.approx([20.1] * 10 + [20.15])  # 14 left < 15: the usual 10
    assert new_limit == pytest.approx([30.15] * round(OPEN_SHARE * 40) + [30.15 + 1 / 40])
    assert limiter._schedule.requests.opening == SPENT and limiter._schedule.requests.capacity == 20


def test_no_opening_again_after_a_429() -> None:
    """Several clients reading the same full window may open at once and run it dry: after
    a 429 the bucket keeps its usual size, whatever the headers say later."""
    clock = FakeClock()
    limiter = clock.limiter(probe=True, burst_seconds=0.5)

    async def main() -> list[float]:
        probe = await limiter.acquire(0)
        limiter.observe(window_headers(1200, 19, "50ms"))
        limiter.settle(probe, 0)
        await answered(limiter, clock, 16)  # the opening, spent
        limiter.pause(1.0)  # a 429
        await clock.sleep(10.0)
        limiter.observe(window_headers(1200, 20, "0s"))  # full again: without the 429 it would open
        return await answered(limiter, clock, 11)

    assert run(main) == pytest.approx([10.05] * 10 + [10.10])
    assert not limiter._schedule.requests.reopens and limiter._schedule.requests.capacity == 10


def test_no_opening_when_the_first_headers_come_with_a_429() -> None:
    """Other clients of the key ran its window dry: the probe's answer is a 429 whose headers
    say the window holds 20. The bucket keeps the usual burst (10), not an opening of 15."""
    clock = FakeClock()
    limiter = clock.limiter(probe=True, burst_seconds=0.5)

    async def main() -> list[float]:
        probe = await limiter.acquire(0)
        limiter.pause(1.0)  # as Slot.settle handles a 429: the pause, then its headers
        limiter.observe(window_headers(1200, 0, "1s"))
        limiter.cancel(probe)
        await clock.sleep(10.0)  # the window has long filled up again
        return await answered(limiter, clock, 11)

    assert run(main) == pytest.approx([10.0] * 10 + [10.05])
    assert limiter._schedule.requests.capacity == 10 and limiter._schedule.requests.opening == 0


def test_no_opening_while_reservations_wait() -> None:
    clock = FakeClock()
    limiter = clock.limiter(probe=True, burst_seconds=0.5)
    limiter.remember(1200, None)  # the usual burst of 10, then 20 per second

    async def main() -> list[float]:
        tasks = [asyncio.create_task(limiter.acquire(0)) for _ in range(14)]
        await settle_tasks()
        # four wait for their turn: the client is at the server's pace already
        limiter.observe(window_headers(1200, 19, "50ms"))
        return [r.start or 0.0 for r in await asyncio.gather(*tasks)]

    assert run(main) == pytest.approx([0.0] * 10 + [0.05, 0.10, 0.15, 0.20])
    assert limiter._schedule.requests.capacity == 10


def test_a_lower_given_limit_does_not_open() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=600, clock=clock, sleep=clock.sleep, burst_seconds=0.5)
    limiter.observe(window_headers(1200, 19, "50ms"))
    assert limiter._schedule.requests.capacity == 5 and limiter._schedule.requests.opening == 0


# -- the machine-wide limiter ------------------------------------------------------------------


def _sharers(tmp_path: Path, clock: FakeClock) -> tuple[MachineLimiter, MachineLimiter]:
    a, b = (MachineLimiter(tmp_path / "quota.state", clock=clock, sleep=clock.sleep, burst_seconds=0.5)
            for _ in range(2))  # fmt: skip
    a.remember(1200, None)  # limits known, no window: the usual burst of 10 for both
    return a, b


def test_the_machine_limiter_does_not_open(tmp_path: Path) -> None:
    """Shared by processes whose sends bunch after a stall, it keeps the usual burst (the
    opening earned 429s there): headers saying the server holds more leave it as it was."""
    clock = FakeClock()
    a, b = _sharers(tmp_path, clock)

    async def main() -> list[float]:
        sent = await b.acquire(0)
        b.observe(window_headers(1200, 19, "50ms"))  # would open an in-process limiter
        b.settle(sent, 0)
        return await start_times(a, clock, [0] * 16)

    # 9 left of the usual 10 go at once (an opening would let 15), then one per 50 ms
    assert run(main) == pytest.approx([0.0] * 9 + [0.05 * k for k in range(1, 8)])
    assert not MachineLimiter.opens and a._schedule.requests.capacity == 10
    a.close()
    b.close()


def test_what_every_sharer_has_in_flight_holds_the_machine_back(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = _sharers(tmp_path, clock)

    async def main() -> list[float]:
        await start_times(a, clock, [0] * 5)  # the whole burst in flight: 5 from each sharer
        await start_times(b, clock, [0] * 5)
        # the server holds 20 and has 14 left: the 10 in flight may not be counted yet
        b.observe(window_headers(1200, 14, "300ms"))
        return await start_times(a, clock, [0] * 5)

    # the whole burst is in flight, the server's 14 left less 10: nothing more at once
    assert run(main) == pytest.approx([0.05 * k for k in range(1, 6)])
    assert a._schedule.requests.capacity == 10
    a.close()
    b.close()
