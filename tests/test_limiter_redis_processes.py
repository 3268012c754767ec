"""The Redis limiter across real processes: one quota for four, and a killed worker's share back.

The first test runs ``df.llm.apply`` in four child processes on one key against
a :class:`FakeServer` in this process (``benchmarks.processes`` starts them),
sharing the quota through the test run's ``redis-server``; the second kills a
child with SIGKILL while it holds reservations and times how soon this process
gets the quota back. Both use real time: what they measure is between processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

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


_DOOMED = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from llmframe._redis_limiter import RedisLimiter

    async def main():
        limiter = RedisLimiter(sys.argv[1], "killed", rpm=600)
        for _ in range(10):                # the whole burst goes now
            await limiter.acquire(0)
        waiters = [asyncio.ensure_future(limiter.acquire(0)) for _ in range(40)]  # 0.1 .. 4.0 s
        await asyncio.sleep(0.05)
        Path(sys.argv[2]).touch()
        await asyncio.sleep(60)           # killed here, holding 40 reservations

    asyncio.run(main())
    """
)


@pytest.mark.alone  # the quota's pace is the machine's
def test_a_killed_worker_gives_its_reservations_back_within_the_lease(redis_url: str, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    survivor = RedisLimiter(redis_url, "killed", rpm=600)  # 10 requests/s, a burst of 10
    survivor.observe({})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    doomed = subprocess.Popen([sys.executable, "-c", _DOOMED, redis_url, str(ready)], env=env)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert doomed.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        assert survivor.sharers == 2
        os.kill(doomed.pid, signal.SIGKILL)
        killed = time.monotonic()
        doomed.wait(timeout=10)
        while survivor.sharers == 2:  # each step looks for sharers whose lease ran out
            assert time.monotonic() - killed < LEASE_SECONDS + 1.0
            time.sleep(0.05)
            survivor.set_limits()
        found = time.monotonic() - killed
    finally:
        if doomed.poll() is None:
            doomed.kill()

    async def ten() -> float:
        started = time.monotonic()
        for _ in range(10):
            await survivor.acquire(0)
        return time.monotonic() - started

    # Behind the dead worker's waiters, the ten would start after its last, 4 s after it
    # placed them; with those given back they go at the pace of the quota: 10 per second.
    seconds = asyncio.run(ten())
    survivor.close()
    assert found <= LEASE_SECONDS + 0.3
    assert seconds < 1.8
