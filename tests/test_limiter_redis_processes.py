"""The Redis limiter across real processes: one quota for four, and a killed worker's share back.

The first test runs ``df.llm.apply`` in four child processes on one key against
a :class:`FakeServer` in this process (``benchmarks.processes`` starts them),
sharing the quota through the test run's ``redis-server``; the second kills a
child with SIGKILL while it holds reservations and times how soon this process
gets the quota back. Both use real time: what they measure is between processes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from _doomed_sharer import doomed_sharer, kill, seconds_for_ten

from llmframe._redis_limiter import LEASE_SECONDS, RedisLimiter

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ lives beside the package
    sys.path.insert(0, str(ROOT))

from benchmarks.processes import run_variant  # noqa: E402
from benchmarks.rate_limits import make_reviews  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and fork-free children")


@pytest.mark.alone  # the quota's pace is the machine's
def test_four_processes_on_one_key_keep_within_the_quota_through_redis(redis_url: str) -> None:
    # Four processes, each told the whole quota (20 requests/s): with a limiter each they would
    # send at 80/s, and the server (1 s of burst) would refuse most.
    outcome = run_variant("redis", make_reviews(100), 4, rpm=1_200, tpm=300_000, burst_seconds=1.0,
                          latency=0.05, latency_per_token=0.0, redis_url=redis_url)  # fmt: skip
    assert outcome.correct == outcome.rows == 100
    assert outcome.rate_limited <= 0.01 * outcome.requests
    assert [c["requests"] for c in outcome.client["children"]] == [25, 25, 25, 25]
    assert (outcome.rates.binding_fraction or 0.0) >= 0.90
    assert 3 <= outcome.client["script_calls_per_request"] <= 6


@pytest.mark.alone  # the quota's pace is the machine's
def test_a_killed_worker_gives_its_reservations_back_within_the_lease(redis_url: str, tmp_path: Path) -> None:
    survivor = RedisLimiter(redis_url, "killed", rpm=600)  # 10 requests/s, a burst of 10
    survivor.observe({})
    with doomed_sharer("redis", redis_url, tmp_path / "ready") as doomed:
        assert survivor.sharers == 2
        killed = kill(doomed)
        while survivor.sharers == 2:  # each step looks for sharers whose lease ran out
            assert time.monotonic() - killed < LEASE_SECONDS + 1.0
            time.sleep(0.05)
            survivor.set_limits()
        found = time.monotonic() - killed

    # Behind the dead worker's waiters, the ten would start after its last, 4 s after it
    # placed them; with those given back they go at the pace of the quota: 10 per second.
    seconds = seconds_for_ten(survivor)
    survivor.close()
    assert found <= LEASE_SECONDS + 0.3
    assert seconds < 1.8
