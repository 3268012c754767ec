"""Redis gone mid-run: the Redis limiter keeps a share of the quota locally, and comes back.

Each test that stops Redis starts a ``redis-server`` of its own (the run's is shared
by every test), stops it with SIGTERM (its connections close, as when a server
dies or restarts) and starts it again on the same port. The limiter tests run on
virtual time (``server_time=``, no heartbeat thread: the limiter's own steps try
Redis again); the last one is a real ``df.llm.apply`` over real HTTP, with the
heartbeat thread, on real time.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pytest
from _fake_clock import FakeClock, run, start_times
from test_limiter_redis import machines

from llmframe._redis_limiter import RedisLimiter
from llmframe._redis_outage import Outage
from llmframe.testing import FakeServer, expected_answer

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ lives beside the package
    sys.path.insert(0, str(ROOT))

PASSWORD = "s3cret-redis-pass"


class Redis:
    """A ``redis-server`` of one test's own, which it may stop and start again on its port."""

    def __init__(self, password: str | None = None) -> None:
        self.password = password
        self._stack = contextlib.ExitStack()
        self.url = self.start()

    def start(self, port: int | None = None) -> str:
        from benchmarks.processes import redis_server

        self._stack = contextlib.ExitStack()
        return self._stack.enter_context(redis_server(port, self.password))

    def stop(self) -> None:
        self._stack.close()

    def restart(self) -> None:
        port = urlsplit(self.url).port
        assert port is not None
        self.start(port)


@pytest.fixture
def own_redis(redis_server_url: str) -> Iterator[Redis]:  # redis_server_url: skipped where Redis is missing
    assert shutil.which("redis-server")
    server = Redis(PASSWORD)
    yield server
    server.stop()


def test_redis_gone_mid_run_leaves_each_sharer_its_share_then_redis_again(own_redis: Redis) -> None:
    clock = FakeClock()
    a, b = machines(own_redis.url, clock, rpm=60)  # two sharers: one request a second for both
    assert run(lambda: start_times(a, clock, [0, 0])) == [0.0, 1.0]
    own_redis.stop()
    with pytest.warns(UserWarning, match=r"Redis stopped answering") as caught:
        starts = run(lambda: start_times(a, clock, [0, 0, 0, 0]))
    # a's share is 30 rpm, on its own: one request every two seconds (its burst of one first)
    assert starts == pytest.approx([1.0, 3.0, 5.0, 7.0])
    assert a.degraded and a.outages == 1 and a.sharers == 2
    assert len(caught) == 1  # once per outage, not once per request
    message = str(caught[0].message)
    assert "1/2 of the shared quota" in message and "rpm=30" in message
    assert PASSWORD not in message and "***" in message
    a.settle(run(lambda: a.acquire(0)), 5)  # settling and observing while away fail nothing
    a.observe({"x-ratelimit-limit-requests": "60"})
    a.pause(0.5)
    own_redis.restart()  # empty: it forgot every lease and limit
    clock.now += 10.0  # the next try is due
    run(lambda: a.acquire(0))
    assert not a.degraded and a.outages == 1
    assert a.sharers == 1  # a joined again; b has not made a step since
    assert a.rpm == 60  # its given limit is Redis's again
    a.close()
    b.close()


def test_while_redis_stays_away_tries_back_off() -> None:
    import redis

    now = [0.0]
    tries: list[float] = []

    def join() -> None:
        tries.append(now[0])
        raise redis.exceptions.ConnectionError("Connection refused")

    outage = Outage((600.0, None), (600.0, None), probing=False, sharers=3, now=0.0, clock=lambda: now[0],
                    sleep=FakeClock().sleep, burst_seconds=1.0, random=lambda: 0.0)  # fmt: skip
    while now[0] < 40:
        assert outage.try_again(join, lambda: now[0]) is False
        now[0] += 0.25
    assert tries == [0.5, 1.5, 3.5, 7.5, 15.5, 23.5, 31.5, 39.5]  # 1, 2, 4, then at most 8 s apart

    def bug() -> None:
        raise ValueError("not an outage")

    outage.next_try = 0.0
    with pytest.raises(ValueError):  # a bug shows, it is not taken for Redis being away
        outage.try_again(bug, lambda: now[0])
    assert outage.try_again(lambda: None, lambda: now[0]) is True and outage.over


def test_the_share_follows_what_headers_and_set_limits_say() -> None:
    learned: list[tuple[float | None, float | None, bool, tuple[float | None, float | None]]] = []
    outage = Outage((600.0, None), (600.0, None), probing=False, sharers=3, now=0.0, clock=lambda: 0.0,
                    sleep=FakeClock().sleep, burst_seconds=1.0)  # fmt: skip
    outage.on_learned = lambda rpm, tpm, headers, seconds: learned.append((rpm, tpm, headers, seconds))
    assert (outage.limiter.rpm, outage.limiter.tpm, outage.limiter.stats.probing) == (200, None, False)
    outage.limiter.observe({"x-ratelimit-limit-requests": "300", "x-ratelimit-limit-tokens": "90000"})
    assert (outage.limiter.rpm, outage.limiter.tpm) == (100, 30_000)  # the account's limits, shared out
    assert learned == [(300, 90_000, True, (None, None))]  # told in full: what the endpoint allows, to remember
    outage.give(60, None)
    assert outage.limiter.rpm == 20
    unknown = Outage((None, None), (None, None), probing=True, sharers=0, now=0.0, clock=lambda: 0.0,
                     sleep=FakeClock().sleep, burst_seconds=1.0)  # fmt: skip
    assert unknown.sharers == 1 and unknown.limiter.stats.probing  # nothing known: it probes


def test_apply_finishes_every_row_while_redis_stops_and_starts_again(
    own_redis: Redis, fake_server_factory: Callable[..., FakeServer]
) -> None:
    server = fake_server_factory(rpm=1200, latency=0.02)
    rows = 80
    df = pd.DataFrame({"review": [f"review {i}" for i in range(rows)]})
    common = {"model": "outage", "base_url": server.base_url, "api_key": server.api_key, "batch_size": 1,
              "cache": False, "progress": False, "rpm": 1200, "limiter": own_redis.url}  # fmt: skip

    def outage() -> None:
        deadline = time.monotonic() + 10
        while server.stats.requests < 15 and time.monotonic() < deadline:
            time.sleep(0.005)
        own_redis.stop()
        while server.stats.requests < 45 and time.monotonic() < deadline:
            time.sleep(0.005)
        own_redis.restart()

    stopper = threading.Thread(target=outage)
    stopper.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = df.llm.apply("Sentiment of {review}", **common)
    stopper.join()
    assert out["answer"].tolist() == [expected_answer(f"Sentiment of review {i}") for i in range(rows)]
    assert server.stats.requests - server.stats.rate_limited == rows  # no row failed, none sent twice
    outages = [w for w in caught if "Redis stopped answering" in str(w.message)]
    assert len(outages) == 1 and PASSWORD not in str(outages[0].message)
    from llmframe._endpoint import Endpoint

    limiter = Endpoint.of(model="outage", base_url=server.base_url, api_key=server.api_key).limiter(
        kind=own_redis.url)  # fmt: skip
    assert isinstance(limiter, RedisLimiter) and limiter.outages == 1
    deadline = time.monotonic() + 10  # the heartbeat thread's tries: 0.5 s, 1 s, 2 s ... apart
    while limiter.degraded and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not limiter.degraded
    before = limiter.stats.requests
    again = df.head(5).llm.apply("Again {review}", **common)
    assert again["answer"].notna().all() and limiter.stats.requests >= before + 5
    assert limiter.sharers == 1 and limiter.rpm == 1200  # Redis holds its lease and limit again
    limiter.close()
