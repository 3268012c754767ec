"""The shared RPM + TPM limiter, on virtual time.

Every test but the two-thread ones runs on :class:`FakeClock` (``_fake_clock``):
``sleep`` waits on a future, and once every task is blocked the clock jumps to
the earliest wake-up. Nothing sleeps for real, and times come out exact.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from _fake_clock import FakeClock, run, settle_tasks, start_times
from _headers_data import OPENAI_HEADERS, window_headers

from llmframe._errors import ConfigError
from llmframe._limiter import (
    PROBE_POLL_SECONDS,
    LimiterStats,
    RateLimiter,
    Reservation,
)
from llmframe._shared_limiter import shared_limiter

T = TypeVar("T")

# -- bucket math ------------------------------------------------------------------


def test_rpm_600_paces_ten_per_second_after_the_burst() -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=600)

    starts = run(lambda: start_times(limiter, clock, [0] * 40))

    # a one-second burst of 10, then one every 0.1 s: 40 requests take 3 s
    assert starts[:10] == [0.0] * 10
    assert starts[10:] == pytest.approx([0.1 * k for k in range(1, 31)])
    assert clock.now == pytest.approx((40 - 10) / 10)
    assert limiter.stats.requests == 40


def test_rpm_burst_seconds_sets_the_burst_size() -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=600, burst_seconds=0.5)
    starts = run(lambda: start_times(limiter, clock, [0] * 10))
    assert starts[:5] == [0.0] * 5
    assert starts[5:] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


def test_low_rpm_still_lets_one_request_through() -> None:
    # 6 RPM over a one-second burst would be 0.1 request: the bucket holds at least one.
    clock = FakeClock()
    limiter = clock.limiter(rpm=6)
    starts = run(lambda: start_times(limiter, clock, [0, 0, 0]))
    assert starts == pytest.approx([0.0, 10.0, 20.0])


def test_tpm_binds_with_varied_sizes() -> None:
    # 6000 TPM = 100 tokens/s, bucket of 100 tokens.
    clock = FakeClock()
    limiter = clock.limiter(tpm=6000)
    starts = run(lambda: start_times(limiter, clock, [60, 60, 60, 150, 10]))
    # 60 from a full bucket; 60 needs 20 more (0.2 s); 60 needs 60 (0.6 s);
    # 150 > bucket: waits for a full bucket (1 s) and goes 50 into debt;
    # 10 then needs 60 (0.6 s).
    assert starts == pytest.approx([0.0, 0.2, 0.8, 1.8, 2.4])


def test_tpm_throughput_matches_the_limit() -> None:
    sizes = [random.Random(7).randint(1, 400) for _ in range(200)]
    clock = FakeClock()
    limiter = clock.limiter(tpm=6000)  # 100 tokens/s
    starts = run(lambda: start_times(limiter, clock, sizes))
    # everything before the last request, plus what it needs (all of a full
    # bucket at most), minus the full bucket we started with, at 100 tokens/s
    expected = (sum(sizes[:-1]) + min(sizes[-1], 100) - 100) / 100
    assert starts[-1] == pytest.approx(expected)


def test_both_buckets_must_allow() -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=60, tpm=6000)  # 1 request/s and 100 tokens/s
    # request bucket binds for the small ones, token bucket for the 300
    starts = run(lambda: start_times(limiter, clock, [10, 10, 300, 10]))
    assert starts == pytest.approx([0.0, 1.0, 2.0, 4.1])


# -- FIFO -------------------------------------------------------------------------


async def acquire_all(limiter: RateLimiter, clock: FakeClock, sizes: list[int]) -> list[Any]:
    """Start one task per size, in order; return (index, clock at grant, start) in grant order."""
    granted: list[tuple[int, float, float | None]] = []

    async def one(index: int, tokens: int) -> None:
        reservation = await limiter.acquire(tokens)
        granted.append((index, clock.now, reservation.start))

    tasks = []
    for index, tokens in enumerate(sizes):
        tasks.append(asyncio.create_task(one(index, tokens)))
        await asyncio.sleep(0)  # let it arrive before the next one
    await asyncio.gather(*tasks)
    return granted


def test_waiters_are_served_in_arrival_order() -> None:
    clock = FakeClock()
    limiter = clock.limiter(tpm=6000)
    sizes = [90, 100, 5, 5, 5, 100, 1, 1, 80, 2]
    granted = run(lambda: acquire_all(limiter, clock, sizes))
    assert [index for index, _, _ in granted] == list(range(len(sizes)))
    times = [at for _, at, _ in granted]
    assert times == sorted(times)


def test_a_large_request_is_not_starved_by_small_ones() -> None:
    # A smallest-first limiter would let the 1-token stream go forever while
    # the 100-token request waits for a full bucket that never comes.
    clock = FakeClock()
    limiter = clock.limiter(tpm=6000)

    async def main() -> tuple[float, list[float]]:
        big_start: list[float] = []
        small_starts: list[float] = []

        async def small_stream() -> None:
            for _ in range(300):
                await limiter.acquire(1)
                small_starts.append(clock.now)

        async def big() -> None:
            await clock.sleep(0.05)  # arrives while the small stream is running
            await limiter.acquire(100)
            big_start.append(clock.now)

        await asyncio.gather(small_stream(), small_stream(), big())
        return big_start[0], small_starts

    big_start, small_starts = run(main)
    # arrived at 0.05 behind at most a handful of 1-token requests: it goes
    # as soon as 100 tokens can have accumulated, about 1 s after arriving
    assert big_start <= 1.2
    assert any(s > big_start for s in small_starts)


def test_large_request_beyond_capacity_goes_and_drives_into_debt() -> None:
    clock = FakeClock()
    limiter = clock.limiter(tpm=6000)  # bucket of 100 tokens
    assert limiter.fits(500)
    starts = run(lambda: start_times(limiter, clock, [50, 500, 10]))
    # 500 waits for a full bucket (0.5 s), then leaves it at -400: 10 more takes 4.1 s
    assert starts == pytest.approx([0.0, 0.5, 4.6])


def test_large_request_from_a_full_bucket_goes_at_once() -> None:
    clock = FakeClock()
    limiter = clock.limiter(tpm=6000)
    starts = run(lambda: start_times(limiter, clock, [6000, 1]))
    assert starts == pytest.approx([0.0, 59.01])


# -- settle and cancel --------------------------------------------------------------


def test_settle_refund_lets_the_next_request_go_earlier() -> None:
    async def main(refund: bool) -> float:
        clock = FakeClock()
        limiter = clock.limiter(tpm=6000)
        first = await limiter.acquire(100)
        if refund:
            limiter.settle(first, 40)
        await limiter.acquire(100)
        return clock.now

    assert run(lambda: main(False)) == pytest.approx(1.0)
    assert run(lambda: main(True)) == pytest.approx(0.4)


def test_settle_charges_extra_usage() -> None:
    clock = FakeClock()
    limiter = clock.limiter(tpm=6000)

    async def main() -> float:
        first = await limiter.acquire(50)
        limiter.settle(first, 150)  # bucket: 100 - 150 = -50
        await limiter.acquire(100)
        return clock.now

    assert run(main) == pytest.approx(1.5)


def test_refund_never_overfills_the_bucket() -> None:
    clock = FakeClock()
    limiter = clock.limiter(tpm=6000)

    async def main() -> list[float]:
        first = await limiter.acquire(10)
        await clock.sleep(5)  # the bucket is full again
        limiter.settle(first, 0)
        return await start_times(limiter, clock, [100, 100])

    assert run(main) == pytest.approx([5.0, 6.0])


def test_settle_and_cancel_are_idempotent() -> None:
    clock = FakeClock()
    limiter = clock.limiter(tpm=6000)

    async def main() -> float:
        first = await limiter.acquire(100)
        limiter.settle(first, 100)
        limiter.settle(first, 0)  # ignored
        limiter.cancel(first)  # ignored
        await limiter.acquire(100)
        return clock.now

    assert run(main) == pytest.approx(1.0)
    assert limiter.stats.cancelled == 0


def test_cancel_gives_back_request_and_tokens() -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=60, tpm=6000)

    async def main() -> float:
        first = await limiter.acquire(100)
        limiter.cancel(first)
        await limiter.acquire(100)
        return clock.now

    assert run(main) == 0.0
    assert limiter.stats.cancelled == 1


def test_cancelled_waiter_gives_its_place_back() -> None:
    clock = FakeClock()
    limiter = clock.limiter(tpm=6000)

    async def main() -> tuple[float, float]:
        await limiter.acquire(100)  # empties the bucket
        waiter = asyncio.create_task(limiter.acquire(100))  # scheduled for 1.0
        await settle_tasks()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await limiter.acquire(100)  # takes the freed slot, not the one after it
        return clock.now, limiter.stats.cancelled

    now, cancelled = run(main)
    assert now == pytest.approx(1.0)
    assert cancelled == 1


def test_cancelling_every_waiter_rolls_the_schedule_back() -> None:
    # Ctrl-C in a notebook cancels a long queue; the next run must not wait for it.
    clock = FakeClock()
    limiter = clock.limiter(rpm=60)

    async def main() -> float:
        await limiter.acquire(0)
        waiters = [asyncio.create_task(limiter.acquire(0)) for _ in range(20)]
        await settle_tasks()
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        await limiter.acquire(0)
        return clock.now

    assert run(main) == pytest.approx(1.0)


# -- learning the limits ------------------------------------------------------------


def test_unknown_limits_probe_one_request_at_a_time() -> None:
    clock = FakeClock()
    limiter = clock.limiter(probe=True)
    assert limiter.stats.probing

    async def main() -> None:
        order: list[int] = []
        reservations: dict[int, Reservation] = {}

        async def one(index: int) -> None:
            reservations[index] = await limiter.acquire(10)
            order.append(index)

        tasks = [asyncio.create_task(one(i)) for i in range(4)]
        await clock.sleep(2.0)
        assert order == [0]  # the probe; the others wait for it however long it takes

        limiter.settle(reservations[0], 10)  # settled, but no headers seen: still probing
        await clock.sleep(1.0)
        assert order == [0, 1]
        assert limiter.stats.probing

        limiter.cancel(reservations[1])  # a failed probe frees the gate too
        await clock.sleep(1.0)
        assert order == [0, 1, 2]

        limiter.observe(OPENAI_HEADERS)  # now the limits are known: the rest go
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3]

    run(main)
    assert limiter.rpm == 600
    assert limiter.tpm == 6000
    stats = limiter.stats
    assert not stats.probing
    assert stats.learned_from_headers
    assert stats.reset_requests_seconds == pytest.approx(0.1)
    assert stats.reset_tokens_seconds == pytest.approx(90.5)


def test_a_waiter_cancelled_behind_the_probe_leaves_the_queue() -> None:
    clock = FakeClock()
    limiter = clock.limiter(probe=True)

    async def main() -> list[int]:
        order: list[int] = []

        async def one(index: int) -> None:
            reservation = await limiter.acquire(1)
            order.append(index)
            await clock.sleep(1.0)  # the request
            limiter.settle(reservation, 1)

        tasks = [asyncio.create_task(one(i)) for i in range(4)]
        await settle_tasks()
        tasks[1].cancel()  # still queued behind the probe
        await asyncio.gather(*tasks, return_exceptions=True)
        return order

    assert run(main) == [0, 2, 3]  # still one at a time, in order, without the cancelled one
    assert limiter.stats.cancelled == 1
    assert clock.now >= 3.0


def test_learned_limits_pace_the_requests_after_the_probe() -> None:
    clock = FakeClock()
    limiter = clock.limiter(probe=True)

    async def main() -> list[float]:
        probe = await limiter.acquire(100)
        waiters = [asyncio.create_task(limiter.acquire(100)) for _ in range(3)]
        await clock.sleep(0.5)  # the probe's answer takes half a second
        limiter.observe(
            {
                "X-RateLimit-Limit-Requests": "600",
                "X-RateLimit-Limit-Tokens": "6000",
                "X-RateLimit-Remaining-Tokens": "5900",
            }
        )
        limiter.settle(probe, 100)
        done = await asyncio.gather(*waiters)
        return [r.start or 0.0 for r in done]

    # queued waiters poll; after the answer at 0.5, the full 100-token bucket
    # lets the first go, then one per second (6000 TPM = 100 tokens/s)
    starts = run(main)
    first = starts[0]
    assert 0.5 <= first <= 0.5 + PROBE_POLL_SECONDS
    assert starts == pytest.approx([first, first + 1.0, first + 2.0])


def test_given_limits_still_probe_the_unknown_one() -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=600, probe=True)
    assert limiter.stats.probing
    assert limiter.rpm == 600
    assert limiter.tpm is None


def test_both_limits_given_means_no_probing() -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=600, tpm=60_000)
    assert not limiter.stats.probing
    starts = run(lambda: start_times(limiter, clock, [10] * 5))
    assert starts == [0.0] * 5


def test_set_limits_ends_probing_for_queued_waiters() -> None:
    clock = FakeClock()
    limiter = clock.limiter(probe=True)

    async def main() -> int:
        await limiter.acquire(1)  # the probe, never settled
        waiters = [asyncio.create_task(limiter.acquire(1)) for _ in range(3)]
        await settle_tasks()
        limiter.set_limits(rpm=600, tpm=60_000)
        await asyncio.gather(*waiters)
        return len(waiters)

    assert run(main) == 3
    assert not limiter.stats.probing


def test_response_without_rate_limit_headers_means_no_limit() -> None:
    # vLLM, llama.cpp: nothing to learn, so only the caller's concurrency cap governs.
    clock = FakeClock()
    limiter = clock.limiter(probe=True)

    async def main() -> list[float]:
        probe = await limiter.acquire(1000)
        limiter.observe({"content-type": "application/json", "server": "uvicorn"})
        limiter.settle(probe, 900)
        return await start_times(limiter, clock, [100_000] * 50)

    assert run(main) == [0.0] * 50
    assert limiter.rpm is None
    assert limiter.tpm is None
    assert limiter.fits(10**9)
    assert not limiter.stats.probing
    assert not limiter.stats.learned_from_headers


def test_headers_with_only_request_limits_leave_tokens_unlimited() -> None:
    clock = FakeClock()
    limiter = clock.limiter(probe=True)
    limiter.observe({"x-ratelimit-limit-requests": "60"})
    assert limiter.rpm == 60
    assert limiter.tpm is None
    assert not limiter.stats.probing


def test_remaining_header_lowers_the_level() -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=6000, tpm=6000)

    async def main() -> float:
        limiter.observe({"x-ratelimit-remaining-tokens": "20"})
        await limiter.acquire(50)  # needs 30 more tokens: 0.3 s
        return clock.now

    assert run(main) == pytest.approx(0.3)


def test_remaining_header_never_raises_the_level() -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=6000, tpm=6000)

    async def main() -> float:
        await limiter.acquire(100)  # empty
        limiter.observe({"x-ratelimit-remaining-tokens": "5900"})
        await limiter.acquire(100)
        return clock.now

    assert run(main) == pytest.approx(1.0)


def test_remaining_requests_zero_holds_requests_back() -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=60, tpm=60_000)

    async def main() -> float:
        limiter.observe({"x-ratelimit-remaining-requests": "0"})
        await limiter.acquire(1)
        return clock.now

    assert run(main) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("given", "header", "effective"),
    [(6000, "3000", 3000), (6000, "9000", 6000), (None, "9000", 9000)],
)
def test_given_limit_holds_unless_the_server_says_less(
    given: float | None, header: str, effective: float
) -> None:
    limiter = RateLimiter(rpm=600, tpm=given)
    limiter.observe({"x-ratelimit-limit-tokens": header})
    assert limiter.tpm == effective


def test_learned_limit_follows_the_server_but_given_limits_cap_it() -> None:
    limiter = RateLimiter()
    limiter.observe({"x-ratelimit-limit-requests": "500", "x-ratelimit-limit-tokens": "90000"})
    assert (limiter.rpm, limiter.tpm) == (500, 90000)
    limiter.observe({"x-ratelimit-limit-requests": "5000", "x-ratelimit-limit-tokens": "900000"})
    assert (limiter.rpm, limiter.tpm) == (5000, 900000)  # e.g. a tier upgrade
    limiter.set_limits(tpm=100_000)
    assert (limiter.rpm, limiter.tpm) == (5000, 100_000)


@pytest.mark.parametrize("bad", ["abc", "", "-5", "inf", "nan", "0"])
def test_garbage_limit_headers_are_ignored(bad: str) -> None:
    limiter = RateLimiter(rpm=600, tpm=6000)
    limiter.observe(
        {
            "x-ratelimit-limit-tokens": bad,
            "x-ratelimit-remaining-tokens": bad if bad != "0" else "x",
            "x-ratelimit-reset-tokens": bad if bad != "0" else "x",
        }
    )
    assert limiter.tpm == 6000
    assert limiter.stats.reset_tokens_seconds is None


def test_lowering_a_limit_keeps_the_level_within_the_new_bucket() -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=6000, tpm=60_000)  # bucket of 1000 tokens

    async def main() -> list[float]:
        limiter.observe({"x-ratelimit-limit-tokens": "6000"})  # bucket of 100 tokens
        return await start_times(limiter, clock, [100, 100])

    assert run(main) == pytest.approx([0.0, 1.0])


# -- pause ----------------------------------------------------------------------------


def test_pause_delays_new_requests_and_drains_the_buckets() -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=600, tpm=6000)

    async def main() -> list[float]:
        limiter.pause(2.0)
        return await start_times(limiter, clock, [100, 100])

    # nothing before 2.0; the drained token bucket has refilled by then
    assert run(main) == pytest.approx([2.0, 3.0])
    assert limiter.stats.pauses == 1
    assert limiter.stats.paused_seconds == pytest.approx(2.0)


def test_pause_zero_still_drains() -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=600, tpm=6000)

    async def main() -> float:
        limiter.pause(0)
        await limiter.acquire(100)
        return clock.now

    assert run(main) == pytest.approx(1.0)


def test_pause_delays_already_scheduled_waiters() -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=600)

    async def main() -> list[float]:
        granted = await acquire_all(limiter, clock, [0] * 10)  # the burst, at 0.0
        assert [at for _, at, _ in granted] == [0.0] * 10
        late: list[float] = []

        async def one() -> None:
            await limiter.acquire(0)
            late.append(clock.now)

        waiters = [asyncio.create_task(one()) for _ in range(5)]  # scheduled 0.1 .. 0.5
        await clock.sleep(0.25)  # two of them have gone
        limiter.pause(3.0)  # a 429: nobody starts before 3.25
        await asyncio.gather(*waiters)
        late.append((await limiter.acquire(0)).start or 0.0)  # a newcomer goes after them
        return late

    late = run(main)
    assert late[:2] == pytest.approx([0.1, 0.2])
    # the rest keep their spacing behind the pause instead of bursting at 3.25
    assert late[2:] == pytest.approx([3.3, 3.4, 3.5, 3.6])


def test_pause_reaches_waiters_due_now() -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=60)

    async def main() -> float:
        await limiter.acquire(0)
        waiter = asyncio.create_task(limiter.acquire(0))  # due at 1.0
        await clock.sleep(1.0)  # due now, but not yet woken
        limiter.pause(2.0)
        reservation = await waiter
        assert reservation.start == pytest.approx(3.0)
        return clock.now

    assert run(main) == pytest.approx(3.0)


def test_a_shorter_pause_does_not_cut_a_longer_one() -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=600, tpm=60_000)

    async def main() -> float:
        limiter.pause(5.0)
        limiter.pause(1.0)
        await limiter.acquire(1)
        return clock.now

    assert run(main) == pytest.approx(5.0)


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf")])
def test_nonsense_pause_only_drains(seconds: float) -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=600, tpm=6000)

    async def main() -> float:
        limiter.pause(seconds)
        await limiter.acquire(50)
        return clock.now

    assert run(main) == pytest.approx(0.5)


def test_pause_applies_while_probing() -> None:
    clock = FakeClock()
    limiter = clock.limiter(probe=True)

    async def main() -> float:
        limiter.pause(4.0)
        await limiter.acquire(1)
        return clock.now

    assert run(main) == pytest.approx(4.0)


# -- fits, stats, validation --------------------------------------------------------------


def test_fits() -> None:
    limiter = RateLimiter(rpm=100, tpm=1000)
    assert limiter.fits(0)
    assert limiter.fits(1000)
    assert not limiter.fits(1001)
    assert RateLimiter().fits(10**12)  # unknown TPM: cannot say no yet
    learned = RateLimiter()
    learned.observe({"x-ratelimit-limit-tokens": "500"})
    assert not learned.fits(501)


def test_stats_count_waiting() -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=60, tpm=60_000)
    run(lambda: start_times(limiter, clock, [1, 1, 1]))
    stats = limiter.stats
    assert isinstance(stats, LimiterStats)
    assert stats.requests == 3
    assert stats.waited_seconds == pytest.approx(0 + 1 + 1)
    assert stats.longest_wait_seconds == pytest.approx(1.0)
    assert stats.rpm == 60
    assert stats.tpm == 60_000


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "600", True])
def test_invalid_limits_are_rejected(bad: Any) -> None:
    with pytest.raises(ConfigError, match="rpm"):
        RateLimiter(rpm=bad)
    with pytest.raises(ConfigError, match="tpm"):
        RateLimiter().set_limits(tpm=bad)


def test_invalid_burst_and_tokens_are_rejected() -> None:
    with pytest.raises(ConfigError, match="burst_seconds"):
        RateLimiter(burst_seconds=0)
    limiter = RateLimiter(rpm=60, tpm=60)
    with pytest.raises(ValueError, match="tokens"):
        run(lambda: limiter.acquire(-1))


# -- shared_limiter -----------------------------------------------------------------------

SECRET = "sk-test-DO-NOT-LEAK-0123456789"


def test_shared_limiter_is_one_per_endpoint_key_and_model() -> None:
    url = "https://shared-one.example.com/v1"
    a = shared_limiter(url, SECRET, "model-a")
    assert shared_limiter(url, SECRET, "model-a") is a
    assert shared_limiter("HTTPS://Shared-One.example.com/v1/", SECRET, "model-a") is a
    assert shared_limiter(url, SECRET, "model-b") is not a
    assert shared_limiter(url, SECRET + "x", "model-a") is not a
    assert shared_limiter(url, None, "model-a") is not a
    assert shared_limiter("https://shared-two.example.com/v1", SECRET, "model-a") is not a
    assert shared_limiter(url + "/other", SECRET, "model-a") is not a


def test_shared_limiter_updates_given_limits() -> None:
    url = "https://shared-limits.example.com/v1"
    limiter = shared_limiter(url, SECRET, "m", rpm=100)
    assert (limiter.rpm, limiter.tpm) == (100, None)
    assert shared_limiter(url, SECRET, "m", tpm=5000) is limiter
    assert (limiter.rpm, limiter.tpm) == (100, 5000)
    shared_limiter(url, SECRET, "m")  # no limits passed: unchanged
    assert (limiter.rpm, limiter.tpm) == (100, 5000)


def _everything_reachable(obj: object, seen: set[int] | None = None) -> list[str]:
    """repr of obj and of everything reachable through its slots and containers."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    found = [repr(obj)]
    children: list[object] = []
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(obj, name):
                children.append(getattr(obj, name))
    if hasattr(obj, "__dict__"):
        children.extend(vars(obj).values())
    if isinstance(obj, dict):
        children.extend(obj.keys())
        children.extend(obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        children.extend(obj)
    for child in children:
        if isinstance(child, (str, int, float, type(None), dict, list, tuple, set)) or hasattr(
            type(child), "__slots__"
        ):
            found.extend(_everything_reachable(child, seen))
    return found


def test_api_key_is_never_stored() -> None:
    import llmframe._shared_limiter as shared_module

    limiter = shared_limiter("https://secret.example.com/v1", SECRET, "m", rpm=10)
    limiter.observe(OPENAI_HEADERS)
    texts = [*_everything_reachable(limiter), repr(limiter.stats), str(limiter)]
    texts += _everything_reachable(vars(shared_module)["_registry"])
    assert texts
    assert not any(SECRET in text for text in texts)
    assert "DO-NOT-LEAK" not in repr(vars(shared_module)["_registry"])


def test_shared_limiter_is_thread_safe() -> None:
    results: list[RateLimiter] = []
    barrier = threading.Barrier(8)

    def get() -> None:
        barrier.wait()
        results.append(shared_limiter("https://race.example.com", SECRET, "m"))

    threads = [threading.Thread(target=get) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(r) for r in results}) == 1


# -- threads and event loops ----------------------------------------------------------------


def test_one_limiter_across_successive_event_loops() -> None:
    # two asyncio.run calls in a row, as two notebook cells would do
    clock = FakeClock()
    limiter = clock.limiter(rpm=600)
    first = run(lambda: start_times(limiter, clock, [0] * 10))
    second = run(lambda: start_times(limiter, clock, [0] * 3))
    assert first == [0.0] * 10
    assert second == pytest.approx([0.1, 0.2, 0.3])


class ThreadSafeFakeClock:
    """Virtual time shared by several threads, each with its own event loop.

    ``sleep(dt)`` moves time forward by ``dt`` under a lock. With two threads
    sleeping at once that overshoots, but it never wakes anybody early, which
    is all the limiter relies on.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    async def sleep(self, dt: float) -> None:
        with self._lock:
            self.now += max(dt, 0.0)
        await asyncio.sleep(0)
        time.sleep(0)  # let the other thread in


def assert_within_limit(starts: list[float], per_second: float, burst: float) -> None:
    """No window of the schedule holds more than a full bucket plus its refill."""
    starts = sorted(starts)
    for i, first in enumerate(starts):
        for j in range(i, len(starts)):
            assert j - i + 1 <= burst + per_second * (starts[j] - first) + 1e-6, (i, j)


def _run_in_threads(limiter: RateLimiter, clock: Callable[[], float], per_thread: int) -> list[Any]:
    granted: list[tuple[float, float]] = []  # (clock when granted, scheduled start)
    lock = threading.Lock()
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    async def worker() -> None:
        async def one() -> None:
            reservation = await limiter.acquire(10)
            at = clock()
            assert reservation.start is not None
            with lock:
                granted.append((at, reservation.start))

        await asyncio.gather(*(one() for _ in range(per_thread)))

    def thread_main() -> None:
        try:
            barrier.wait()
            asyncio.run(worker())
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=thread_main) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not errors
    assert len(granted) == 2 * per_thread
    return granted


def test_test_helper_catches_a_burst() -> None:
    with pytest.raises(AssertionError):
        assert_within_limit([0.0] * 11, per_second=10, burst=10)
    assert_within_limit([0.0] * 10 + [0.1], per_second=10, burst=10)


def test_two_threads_two_loops_fake_clock_share_the_limit() -> None:
    clock = ThreadSafeFakeClock()
    # 10 requests and 100 tokens per second; every request is 10 tokens
    limiter = RateLimiter(rpm=600, tpm=6000, clock=clock, sleep=clock.sleep)
    granted = _run_in_threads(limiter, clock, per_thread=25)
    assert_within_limit([start for _, start in granted], per_second=10, burst=10)
    assert all(at >= start for at, start in granted)  # nobody went before its time
    assert limiter.stats.requests == 50


def test_two_threads_two_loops_real_time() -> None:
    # 60 000 RPM with a 1 ms burst: one request per millisecond, 30 requests
    # in about 30 ms of real time.
    limiter = RateLimiter(rpm=60_000, tpm=10**9, burst_seconds=0.001)
    began = time.monotonic()
    granted = _run_in_threads(limiter, time.monotonic, per_thread=15)
    starts = sorted(start for _, start in granted)
    assert all(b - a >= 0.001 - 1e-9 for a, b in itertools.pairwise(starts))
    # asyncio may fire a timer a clock tick early; the limiter lets up to 1 ms pass
    assert all(at >= start - 0.0011 for at, start in granted)
    assert time.monotonic() - began < 5


# -- the server's window, from limit + remaining + reset ------------------------------------


async def after_the_probe(limiter: RateLimiter, clock: FakeClock, headers: dict[str, str], n: int) -> list[float]:
    """The probe answered with ``headers``; when ``n`` requests queued behind it start."""
    probe = await limiter.acquire(0)
    waiters = [asyncio.create_task(limiter.acquire(0)) for _ in range(n)]
    await settle_tasks()
    limiter.observe(headers)
    limiter.settle(probe, 0)
    done = await asyncio.gather(*waiters)
    return [r.start or 0.0 for r in done]


def test_a_server_holding_a_minute_opens_the_burst_at_once_instead_of_ramping() -> None:
    clock = FakeClock()
    limiter = clock.limiter(probe=True, burst_seconds=0.5)
    # 1,199 left, full again in 50 ms: the server's bucket holds 1,200 (a minute's worth)
    starts = run(lambda: after_the_probe(limiter, clock, window_headers(1200, 1199, "50ms"), 300))
    assert starts == [0.0] * 300  # half the server's window may go at once
    assert limiter.stats.pauses == 0

    # Without the reset header, the same limit ramps: a 0.5 s burst (10; the probe went
    # before the limit was known), then 20 per second.
    clock = FakeClock()
    limiter = clock.limiter(probe=True, burst_seconds=0.5)
    headers = window_headers(1200, 1199, "50ms")
    del headers["x-ratelimit-reset-requests"]
    starts = run(lambda: after_the_probe(limiter, clock, headers, 300))
    assert starts[:10] == [0.0] * 10 and starts[-1] == pytest.approx((300 - 10) / 20)


def test_a_server_holding_one_second_opens_once_to_three_quarters_of_it() -> None:
    # 19 left, full again in 50 ms: the server holds 20 requests; half of it is the 0.5 s burst,
    # but the first reply opens the bucket once to 15 (19 left, the probe in flight: 18)
    clock = FakeClock()
    limiter = clock.limiter(probe=True, burst_seconds=0.5)
    starts = run(lambda: after_the_probe(limiter, clock, window_headers(1200, 19, "50ms"), 30))
    assert starts[:15] == [0.0] * 15
    assert starts[15:] == pytest.approx([k / 20 for k in range(1, 16)])
    assert limiter._schedule.requests.capacity == 10  # spent: back to the 0.5 s burst


def test_the_window_opens_to_what_the_server_has_left_less_what_is_in_flight() -> None:
    clock = FakeClock()
    limiter = clock.limiter(probe=True, burst_seconds=0.5)
    limiter.remember(1200, None)  # an earlier process learned the limit, not the window

    async def main() -> list[float]:
        sent = [await limiter.acquire(0) for _ in range(10)]  # the usual burst, in flight
        assert clock.now == 0.0
        # the first reply: the server has 100 left of a 1,200 window (full in 55 s)
        limiter.observe(window_headers(1200, 100, "55s"))
        limiter.settle(sent[0], 0)
        return await start_times(limiter, clock, [0] * 95)

    starts = run(main)
    # 100 left, 10 in flight when the reply is read (maybe not counted yet): 90 go at once,
    # then 20 per second
    assert starts[:90] == [0.0] * 90
    assert starts[90:] == pytest.approx([k / 20 for k in range(1, 6)])


def test_a_given_rpm_below_the_servers_keeps_the_usual_burst() -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=600, probe=True, burst_seconds=1.0)
    starts = run(lambda: after_the_probe(limiter, clock, window_headers(1200, 1199, "50ms"), 20))
    assert starts[:9] == [0.0] * 9  # 10 in the bucket of 600 RPM, the probe took one
    assert starts[9:] == pytest.approx([k / 10 for k in range(1, 12)])


def test_remaining_still_lowers_a_window_opened_earlier() -> None:
    clock = FakeClock()
    limiter = clock.limiter(probe=True, burst_seconds=0.5)

    async def main() -> list[float]:
        await after_the_probe(limiter, clock, window_headers(1200, 1199, "50ms"), 0)
        limiter.observe(window_headers(1200, 0, "60s"))  # another client spent it all
        return await start_times(limiter, clock, [0] * 3)

    assert run(main) == pytest.approx([0.05, 0.10, 0.15])
