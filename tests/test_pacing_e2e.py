"""Pacing by the server's own window, over real HTTP: the limiter reads limit, remaining and
reset from the fake server's headers, opens at once where the server's bucket holds a minute,
and keeps the usual burst where it holds a second."""

from __future__ import annotations

import uuid
from typing import Any

import pandas as pd

from llmframe.testing import FakeServer, expected_answer

TEMPLATE = "Classify the sentiment of: {review}"


def apply(server: FakeServer, n: int) -> Any:
    reviews = [f"review {i} {uuid.uuid4().hex[:6]}" for i in range(n)]
    out = pd.DataFrame({"review": reviews}).llm.apply(
        TEMPLATE, model="gpt-4o-mini", base_url=server.base_url, api_key=f"key-{uuid.uuid4().hex}",
        batch_size=1, cache=False, progress=False,
    )  # fmt: skip
    assert out["answer"].tolist() == [expected_answer(TEMPLATE.format(review=r)) for r in reviews]
    return out.llm.report


def test_a_server_holding_a_minute_gets_the_rows_at_once_after_the_first_reply(fake_server_factory: Any) -> None:
    # RPM 600 with OpenAI's minute-long bucket: the limiter's usual 0.5 s burst would send 5,
    # then 10 a second (6 s for 60 rows); the headers say the server holds 600 now.
    server = fake_server_factory(rpm=600, latency=0.1)
    report = apply(server, 60)
    log = server.stats.snapshot()["log"]
    assert report.rate_limited == 0 and all(r.status == 200 for r in log)
    first_reply = min(r.t_end for r in log)
    last_start = max(r.t_start for r in log)
    # every request but the probe starts right after its reply (32 at a time, 0.1 s each)
    assert last_start - first_reply < 1.5, last_start - first_reply


def test_a_server_holding_one_second_keeps_the_usual_burst_and_earns_no_429(fake_server_factory: Any) -> None:
    server = fake_server_factory(rpm=3000, burst_seconds=1.0, latency=0.05)
    report = apply(server, 150)
    log = server.stats.snapshot()["log"]
    assert report.rate_limited == 0 and len(log) == 150
    starts = sorted(r.t_start for r in log)
    # 3,000 RPM is 50 a second: after the probe, 149 requests take about 149 / 50 - 25 / 50 s
    assert starts[-1] - starts[0] > 2.0
