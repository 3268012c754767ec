"""The Redis limiter against a real ``redis-server``: limiters on one endpoint key behave as one.

Each test puts two :class:`RedisLimiter` objects on one key, as two machines
would: each has its own monotonic clock (offset from the other's), and the
schedule runs on a third, the "server's", which stands in for Redis ``TIME``
(``server_time=``) so that nothing sleeps for real. The arithmetic is the
script's, run by Redis. Real processes are in ``test_limiter_redis_processes.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import test_limiter_machine as machine_cases
from _fake_clock import FakeClock, run, settle_tasks, start_times
from _headers_data import OPENAI_HEADERS, window_headers

import llmframe
from llmframe._config import resolve
from llmframe._endpoint import Endpoint
from llmframe._errors import ConfigError
from llmframe._limiter import PROBE_POLL_SECONDS
from llmframe._redis_limiter import LEASE_SECONDS, RedisLimiter, RedisReservation, redis_keys
from llmframe._shared_limiter import shared_limiter
from llmframe.testing import FakeServer, expected_answer

#: The Redis server's clock, which is neither machine's.
SERVER_EPOCH = 1_700_000_000.0


def machines(url: str, clock: FakeClock, n: int = 2, *, probe: bool = False, name: str = "endpoint",
             **kw: Any) -> list[RedisLimiter]:  # fmt: skip
    """``n`` limiters on one key, as ``n`` machines: clocks apart, one server clock."""

    def own_clock(offset: float) -> Callable[[], float]:
        return lambda: clock.now + offset

    limiters = [
        RedisLimiter(url, name, clock=own_clock(1000.0 * i), sleep=clock.sleep, heartbeat=False,
                     server_time=lambda: SERVER_EPOCH + clock.now, **kw)
        for i in range(n)
    ]
    if not probe:
        limiters[0].observe({})  # the server sends no rate-limit headers: given limits only
    return limiters


async def never(dt: float) -> None:
    """A sleep that does not end: the waiters of a worker that is about to die."""
    await asyncio.get_running_loop().create_future()


# -- one budget ---------------------------------------------------------------------------


#: The machine limiter's cases that hold for any limiters sharing one quota: run here with
#: the "processes" as two machines on Redis (FIFO across them, refund, cancel, 429, headers),
#: their own clocks 1000 s apart: the schedule runs on the server's.
SHARED_CASES = [
    machine_cases.test_two_limiters_on_one_file_share_the_burst_and_the_pace,
    machine_cases.test_waiters_of_both_limiters_start_in_arrival_order,
    machine_cases.test_a_refund_in_one_limiter_lets_the_other_go_earlier,
    machine_cases.test_a_cancel_in_one_limiter_gives_the_slot_to_the_other,
    machine_cases.test_a_429_in_one_limiter_pauses_the_other,
    machine_cases.test_headers_learned_by_one_limiter_set_the_limits_of_the_other,
]


@pytest.mark.parametrize("case", SHARED_CASES, ids=lambda case: case.__name__.removeprefix("test_"))
def test_the_machine_limiters_cases_hold_across_machines(
    case: Callable[[Path], None], redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def sharers(path: Path, clock: FakeClock, n: int = 2, *, probe: bool = False, **kw: Any) -> list[RedisLimiter]:
        return machines(redis_url, clock, n, probe=probe, name=str(path), **kw)

    monkeypatch.setattr(machine_cases, "sharers", sharers)
    case(tmp_path)


def test_a_pause_moves_the_other_machines_waiters_back(redis_url: str) -> None:
    clock = FakeClock()
    a, b = machines(redis_url, clock, rpm=60)  # one a second

    async def main() -> list[float]:
        await b.acquire(0)
        waiters = [asyncio.create_task(b.acquire(0)) for _ in range(2)]  # at 1.0 and 2.0
        await settle_tasks()
        await clock.sleep(0.5)
        a.pause(1.0)  # both move back by the pause: 2.0 and 3.0, keeping their spacing
        done = []
        for w in waiters:
            await w
            done.append(clock.now)
        return done

    assert run(main) == pytest.approx([2.0, 3.0])


def test_a_refund_of_more_than_reserved_charges_the_excess(redis_url: str) -> None:
    clock = FakeClock()
    a, b = machines(redis_url, clock, tpm=6000)

    async def main() -> float:
        first = await a.acquire(10)
        a.settle(first, 110)  # used 100 more than reserved
        await b.acquire(100)
        return clock.now

    assert run(main) == pytest.approx(1.1)


def test_the_lowest_limit_any_machine_gives_holds_for_all(redis_url: str) -> None:
    clock = FakeClock()
    a, b = machines(redis_url, clock, rpm=600)
    b.set_limits(rpm=300)
    assert (a.stats.rpm, b.rpm) == (600, 300)  # a reads it at its next step
    a.remember(None, None)
    assert a.rpm == 300
    with pytest.raises(ConfigError, match="rpm"):
        b.set_limits(rpm=-1)
    b.close()
    a.set_limits()
    assert a.rpm == 600  # b left: a's own limit holds again
    assert a.sharers == 1


def test_limits_an_earlier_process_learned_end_probing_for_all(redis_url: str) -> None:
    clock = FakeClock()
    a, b = machines(redis_url, clock, probe=True)
    a.remember(600, 6000)
    b.set_limits()
    assert (b.rpm, b.tpm) == (600, 6000) and not b.stats.probing
    b.observe({"x-ratelimit-limit-requests": "300", "x-ratelimit-reset-tokens": "1m30.5s"})  # it replaces the memory
    assert b.stats.learned_from_headers and b.stats.reset_tokens_seconds == pytest.approx(90.5)
    assert (a.rpm, a.tpm) == (600, 6000)  # as of a's last step
    a.set_limits()
    assert (a.rpm, a.tpm) == (300, None)


@pytest.mark.parametrize("with_429", [False, True], ids=["answered", "429"])
def test_the_first_headers_open_the_shared_bucket_unless_they_came_with_a_429(redis_url: str, with_429: bool) -> None:
    """The shared bucket opens to 3/4 of the window the first headers show (15 of 20); when
    they came with a 429 (other clients ran the key's window dry) it keeps the burst (10)."""
    clock = FakeClock()
    (limiter,) = machines(redis_url, clock, 1, probe=True, name=f"opening-{with_429}", burst_seconds=0.5)

    async def main() -> list[float]:
        probe = await limiter.acquire(0)
        if with_429:  # as Slot.settle handles a 429: the pause, then its headers
            limiter.pause(1.0)
            limiter.observe(window_headers(1200, 0, "1s"))
            limiter.cancel(probe)
        else:
            limiter.observe(window_headers(1200, 19, "50ms"))
            limiter.settle(probe, 0)
        await clock.sleep(10.0)  # the window has long filled up again
        return await start_times(limiter, clock, [0] * 16)

    burst = 10 if with_429 else 15
    starts = run(main)
    assert starts[:burst] == pytest.approx([10.0] * burst) and starts[burst] > 10.01


# -- dead workers ---------------------------------------------------------------------------


def test_a_dead_workers_waiting_reservations_come_back_after_the_lease(redis_url: str) -> None:
    clock = FakeClock()
    a, b = machines(redis_url, clock, rpm=60)  # one request per second, a burst of one
    a._sleep = never  # a's waiters sleep on; a never runs another step: killed

    async def main() -> float:
        doomed = [asyncio.create_task(a.acquire(0)) for _ in range(10)]  # 0.0, then 1.0 .. 9.0
        await settle_tasks()
        await clock.sleep(LEASE_SECONDS + 0.01)
        assert b.sharers == 2  # no step has looked yet
        await b.acquire(0)  # without the reclaim: at 10.0, after a's waiters
        for task in doomed:
            task.cancel()
        await asyncio.gather(*doomed, return_exceptions=True)
        return clock.now

    # a's requests at 0, 1 and 2 went (in flight: they keep their charge); 3 .. 9 came back
    assert run(main) == pytest.approx(3.0)
    assert b.sharers == 1


def test_a_live_worker_is_not_reclaimed_within_its_lease(redis_url: str) -> None:
    clock = FakeClock()
    a, b = machines(redis_url, clock, rpm=60)
    a._sleep = never

    async def main() -> float:
        doomed = [asyncio.create_task(a.acquire(0)) for _ in range(4)]  # 0.0, 1.0, 2.0, 3.0
        await settle_tasks()
        await clock.sleep(LEASE_SECONDS - 0.5)
        await b.acquire(0)  # a's lease holds: b queues behind its three waiters
        for task in doomed:
            task.cancel()
        await asyncio.gather(*doomed, return_exceptions=True)
        return clock.now

    assert run(main) == pytest.approx(4.0)


def test_a_worker_silent_past_its_lease_places_its_reservation_again(redis_url: str) -> None:
    clock = FakeClock()
    a, b = machines(redis_url, clock, rpm=60)  # one a second
    mine = [RedisReservation(0, 0.0) for _ in range(4)]
    assert [a._place(r) for r in mine] == pytest.approx([0.0, 1.0, 2.0, 3.0])
    clock.now = LEASE_SECONDS + 0.5  # a stopped past its lease: b's step gives back its 3.0
    theirs = RedisReservation(0, 0.0)
    assert b._place(theirs) == pytest.approx(0.5) and theirs.start == pytest.approx(3.0)
    assert b.sharers == 1
    assert a._check(mine[3]) == pytest.approx(1.5)  # a wakes: its 3.0 went to b; placed again
    assert mine[3].start == pytest.approx(4.0)
    assert a._check(mine[2]) <= 0  # 2.0 had passed: it went (in flight, it keeps its charge)
    assert b.sharers == 2  # a's step renewed its lease


def test_a_dead_workers_probe_is_given_back_after_the_lease(redis_url: str) -> None:
    clock = FakeClock()
    a, b = machines(redis_url, clock, probe=True)

    async def main() -> float:
        await a.acquire(10)  # the probe, never settled: a dies with it
        await b.acquire(10)  # queued behind the probe until a's lease runs out
        return clock.now

    now = run(main)
    assert LEASE_SECONDS <= now <= LEASE_SECONDS + 2 * PROBE_POLL_SECONDS
    assert b.stats.probing  # b holds the probe now; its answer's headers end probing


def test_close_gives_back_what_was_waiting_at_once(redis_url: str) -> None:
    clock = FakeClock()
    a, b = machines(redis_url, clock, rpm=60)
    a._sleep = never

    async def main() -> float:
        doomed = [asyncio.create_task(a.acquire(0)) for _ in range(5)]
        await settle_tasks()
        a.close()
        await b.acquire(0)
        for task in doomed:
            task.cancel()
        await asyncio.gather(*doomed, return_exceptions=True)
        return clock.now

    assert run(main) == pytest.approx(1.0)  # behind a's one request that went, not its waiters


def test_the_heartbeat_keeps_an_idle_worker_alive(redis_url: str) -> None:
    lease = 0.3
    idle = RedisLimiter(redis_url, "beat", rpm=60, lease_seconds=lease)
    other = RedisLimiter(redis_url, "beat", rpm=60, lease_seconds=lease, heartbeat=False)
    time.sleep(3 * lease)  # idle makes no step: only its heartbeat thread renews its lease
    other.set_limits()  # a step: it would bury a sharer whose lease ran out
    assert other.sharers == 2
    idle.close()
    assert other.sharers == 1
    other.close()


# -- Redis itself ----------------------------------------------------------------------------


def test_the_script_is_loaded_again_when_redis_forgot_it(redis_url: str) -> None:
    import redis

    clock = FakeClock()
    [a] = machines(redis_url, clock, 1, rpm=600)
    redis.Redis.from_url(redis_url).script_flush()
    a.set_limits(rpm=300)  # EVALSHA fails with NOSCRIPT: EVAL runs it, and loads it again
    assert a.rpm == 300
    assert redis.Redis.from_url(redis_url).script_exists(a._sha) == [True]


def test_the_schedule_runs_on_the_redis_servers_clock(redis_url: str) -> None:
    sleeps: list[float] = []

    async def sleep(dt: float) -> None:
        sleeps.append(dt)
        await asyncio.sleep(dt)

    limiter = RedisLimiter(redis_url, "real-time", rpm=600, clock=lambda: 0.0, sleep=sleep, heartbeat=False)
    limiter.observe({})

    async def main() -> None:
        for _ in range(11):  # the 11th waits 0.1 s on the server's clock; this machine's is stopped
            await limiter.acquire(0)

    run(main)
    assert sleeps and 0.05 < sleeps[0] <= 0.1 + 1e-3


def test_an_unreachable_redis_is_a_config_error_without_the_password() -> None:
    url = "redis://user:s3cret-pass@127.0.0.1:1/0"
    with pytest.raises(ConfigError, match="cannot reach Redis") as caught:
        RedisLimiter(url, "x")
    assert "s3cret-pass" not in str(caught.value) and "***" in str(caught.value)


SECRET = "sk-redis-DO-NOT-LEAK-0123456789"


def _everything(url: str) -> list[bytes]:
    """Every key in the database, and every value in it, raw and as Redis dumps it."""
    import redis

    client = redis.Redis.from_url(url)
    found: list[bytes] = []
    for key in client.scan_iter(count=100):
        found += [key, client.dump(key) or b""]
        kind = client.type(key)
        if kind == b"hash":
            found += [part for pair in client.hgetall(key).items() for part in pair]
        elif kind == b"zset":
            found += [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"string":
            found.append(client.get(key) or b"")
    return found


def test_no_api_key_in_any_redis_key_or_value(redis_url: str) -> None:
    limiter = shared_limiter("https://redis.example.com/v1", SECRET, "no-leak", rpm=600, kind=redis_url)
    assert isinstance(limiter, RedisLimiter)
    assert shared_limiter("https://redis.example.com/v1/", SECRET, "no-leak", kind=redis_url) is limiter
    limiter.observe({})  # no probe; the headers come once reservations wait (else their window opens the bucket)
    run(lambda: start_times(limiter, FakeClock(), [0] * 5))  # the burst goes
    waiting = [RedisReservation(100, 0.0) for _ in range(3)]
    assert all(limiter._place(r) > 0 for r in waiting)  # these wait: the schedule has members
    limiter.observe(OPENAI_HEADERS)
    found = _everything(redis_url)
    assert len([k for k in found if k.startswith(b"llmframe:limiter:")]) >= 4
    fingerprint = hashlib.sha256(SECRET.encode()).hexdigest()
    for value in found:
        assert SECRET.encode() not in value and fingerprint.encode() not in value
    assert SECRET not in repr(limiter) and SECRET not in repr(limiter.stats)
    limiter.close()


def test_keys_are_named_by_a_hash_of_the_endpoint_key_in_one_slot() -> None:
    keys = redis_keys("https://api.example.com/v1|m|abc")
    assert len(set(keys)) == 4 and "api.example.com" not in "".join(keys)
    assert len({k.split("{")[1].split("}")[0] for k in keys}) == 1  # one hash tag: one cluster slot


# -- the option -------------------------------------------------------------------------------


def test_limiter_option_accepts_redis_urls(monkeypatch: Any) -> None:
    for url in ("redis://localhost:6379/0", "rediss://user:pw@cache.example.com:6380/2"):
        assert resolve(model="m", limiter=url).limiter == url
    monkeypatch.setenv("LLMFRAME_LIMITER", "redis://10.0.0.5:6379/1")
    assert resolve(model="m").limiter == "redis://10.0.0.5:6379/1"
    with pytest.raises(ConfigError, match=r"'process'.*'machine'.*redis://"):
        llmframe.configure(limiter="memcached://x")


def test_without_the_redis_package_the_error_names_the_extra(monkeypatch: Any) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "redis" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError, match=r"llmframe\[redis\]") as caught:
        llmframe.configure(limiter="redis://user:hunter2@localhost:6379/0")
    assert "hunter2" not in str(caught.value)


def test_apply_with_the_redis_limiter(redis_url: str, fake_server: FakeServer) -> None:
    import pandas as pd

    fake_server.configure(rpm=600, tpm=100_000)
    df = pd.DataFrame({"review": [f"review {i}" for i in range(12)]})
    out = df.llm.apply("Sentiment of {review}", output="answer", model="apply-redis",
                       base_url=fake_server.base_url, api_key=fake_server.api_key, limiter=redis_url,
                       batch_size=1, cache=False, progress=False)  # fmt: skip
    assert out["answer"].tolist() == [expected_answer(f"Sentiment of review {i}") for i in range(12)]
    endpoint = Endpoint.of(model="apply-redis", base_url=fake_server.base_url, api_key=fake_server.api_key)
    limiter = endpoint.limiter(kind=redis_url)
    assert isinstance(limiter, RedisLimiter)
    assert limiter.stats.requests == 12 and (limiter.rpm, limiter.tpm) == (600, 100_000)
    assert fake_server.stats.rate_limited == 0
    limiter.close()
