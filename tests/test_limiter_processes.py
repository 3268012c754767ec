"""The machine-wide limiter across real processes: one quota, and a killed sharer's share back.

The first test runs ``df.llm.apply`` in child processes against a
:class:`FakeServer` in this process (``benchmarks.processes`` starts them);
the second kills a child with SIGKILL while it holds reservations and times
how soon this process gets the quota back. Both use real time: what they
measure is between processes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from _doomed_sharer import doomed_sharer, kill, seconds_for_ten

from llmframe._machine_limiter import EAGER_LOOK_SECONDS, MachineLimiter

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ lives beside the package
    sys.path.insert(0, str(ROOT))

from benchmarks.processes import run_variant  # noqa: E402
from benchmarks.rate_limits import make_reviews  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the machine limiter needs flock")


@pytest.mark.alone  # the quota's pace is the machine's
def test_processes_on_one_key_keep_within_the_quota_together() -> None:
    # Two processes, each told the whole quota (20 requests/s): with a limiter each they send
    # at 40/s, and the server refuses about one in seven (14 of 94 when measured). The server
    # holds 2 s of its limit, so that a stall of this busy test process (the server's home)
    # does not look like a burst from the clients.
    outcome = run_variant("machine", make_reviews(80), 2, rpm=1_200, tpm=300_000, burst_seconds=2.0,
                          latency=0.05, latency_per_token=0.0)  # fmt: skip
    assert outcome.correct == outcome.rows == 80
    assert outcome.rate_limited <= 0.01 * outcome.requests
    assert [c["requests"] for c in outcome.client["children"]] == [40, 40]


@pytest.mark.alone  # the quota's pace is the machine's
def test_a_killed_process_gives_its_reservations_back_within_a_second(tmp_path: Path) -> None:
    state = tmp_path / "quota.state"
    survivor = MachineLimiter(state, rpm=600)  # 10 requests/s, a burst of 10
    with doomed_sharer("machine", str(state), tmp_path / "ready") as doomed:
        assert survivor.sharers == 2
        kill(doomed)
        time.sleep(2 * EAGER_LOOK_SECONDS)  # "a moment later": the survivor looks that often

    # Behind the dead process's 40 waiters the ten would start after 4 s and end after 5 s;
    # with them given back they go at the pace of the quota: 10 per second.
    assert seconds_for_ten(survivor) < 2.0
    assert survivor.sharers == 1
    assert not (tmp_path / "owners").exists() or len(list((tmp_path / "owners").iterdir())) == 1
    survivor.close()
