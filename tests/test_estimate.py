"""Estimates against what the run then does, counted by the fake server."""

from __future__ import annotations

from typing import Any

import pytest

import llmframe
from llmframe.testing import FakeServer

TEMPLATE = "Classify the sentiment of this customer review as positive, negative or neutral: {review}"


def opts(server: FakeServer, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "gpt-4o-mini", "base_url": server.base_url, "api_key": server.api_key,
        "progress": False, "cache": False,
    }  # fmt: skip
    base.update(extra)
    return base


def reviews(n: int) -> list[str]:
    return [f"review {i}: " + "good " * (i % 7) + "bad " * (i % 3) for i in range(n)]


@pytest.mark.parametrize("batch_size", [1, 7, None])
def test_estimate_matches_the_run(fake_server: FakeServer, make_frame: Any, batch_size: Any) -> None:
    df = make_frame({"review": reviews(123)})
    o = opts(fake_server, batch_size=batch_size, params={"max_tokens": 12})
    est = df.llm.estimate(TEMPLATE, **o)
    assert fake_server.stats.requests == 0  # estimating is free
    out = df.llm.apply(TEMPLATE, **o)
    report = out.llm.report
    why = f"retries={report.retries} failures={report.failures} resent={report.resent_rows} {fake_server.stats}"
    assert est.requests == fake_server.stats.requests, why
    # Same encoding on both sides: the input estimate is exact, well within 2%.
    assert abs(est.input_tokens - fake_server.stats.prompt_tokens) <= 0.02 * fake_server.stats.prompt_tokens
    assert est.output_tokens_from == "max_tokens"
    assert est.output_tokens >= fake_server.stats.completion_tokens  # max_tokens is an upper bound
    d = est.to_dict()
    for key in ("rows", "cached_rows", "requests", "input_tokens", "output_tokens", "cost_usd", "seconds"):
        assert key in d


def test_packed_vs_one_row_side_by_side(fake_server: FakeServer, make_frame: Any) -> None:
    df = make_frame({"review": reviews(200)})
    est = df.llm.estimate(TEMPLATE, **opts(fake_server, batch_size=20, params={"max_tokens": 3}))
    assert est.one_row is not None
    assert est.one_row.requests == 200 and est.requests == 10
    assert est.input_tokens < est.one_row.input_tokens
    assert est.cost_usd is not None and est.one_row.cost_usd is not None
    text = str(est)
    assert "packed" in text and "one row per request" in text


def test_cached_rows_and_time_at_limits(fake_server: FakeServer, make_frame: Any, tmp_path: Any) -> None:
    df = make_frame({"review": reviews(50)})
    o = opts(fake_server, cache=str(tmp_path / "c"), batch_size=1, rpm=600, tpm=100_000)
    df.head(20).llm.apply(TEMPLATE, **o)
    est = df.llm.estimate(TEMPLATE, **o)
    assert est.cached_rows == 20 and est.requests == 30
    assert est.seconds is not None and est.seconds >= 30 * 60 / 600


def test_unknown_model_cost_is_unknown_not_zero(fake_server: FakeServer, make_frame: Any) -> None:
    est = make_frame({"review": ["x"]}).llm.estimate(TEMPLATE, **opts(fake_server, model="my-local-model"))
    assert est.cost_usd is None and "unknown" in str(est)
    priced = make_frame({"review": ["x"]}).llm.estimate(
        TEMPLATE, **opts(fake_server, model="my-local-model", prices={"my-local-model": (1.0, 2.0)})
    )
    assert priced.cost_usd is not None and priced.cost_usd > 0


def test_sample_measures_output_tokens_and_caches(fake_server: FakeServer, make_frame: Any, tmp_path: Any) -> None:
    df = make_frame({"review": reviews(40)})
    o = opts(fake_server, cache=str(tmp_path / "c"), batch_size=1)
    est = df.llm.estimate(TEMPLATE, sample=5, **o)
    assert est.output_tokens_from == "sample" and fake_server.stats.requests == 5
    assert est.cached_rows == 5 and est.requests == 35
    per_row = fake_server.stats.completion_tokens / 5
    assert est.output_tokens == pytest.approx(35 * per_row, rel=0.25)


def test_guess_says_so(fake_server: FakeServer, make_frame: Any) -> None:
    est = make_frame({"review": ["x", "y"]}).llm.estimate(TEMPLATE, **opts(fake_server))
    assert est.output_tokens_from == "guess"


def test_budget_cap_stops_sending(fake_server: FakeServer, make_frame: Any) -> None:
    df = make_frame({"review": reviews(100)})
    o = opts(fake_server, batch_size=1, max_concurrency=1, params={"max_tokens": 10})
    one = df.head(1).llm.estimate(TEMPLATE, **o)
    assert one.cost_usd is not None
    budget = one.cost_usd * 10.5  # about ten requests' worth
    out = df.llm.apply(TEMPLATE, max_cost_usd=budget, **o)
    report = llmframe.last_report()
    assert report is not None and report.cost_usd is not None
    # Stopped at the right place: within budget, and one more request's estimate would pass it.
    assert report.cost_usd <= budget < report.cost_usd + one.cost_usd
    assert fake_server.stats.requests >= 10  # the estimate is an upper bound per request
    assert report.answered_rows == fake_server.stats.requests
    assert report.budget_unsent_rows == 100 - report.answered_rows
    assert report.failures == {"budget": report.budget_unsent_rows}
    assert out.llm.report is report


def test_report_counters_match_the_server(fake_server_factory: Any, make_frame: Any) -> None:
    from llmframe.testing import Faults

    server = fake_server_factory(faults=Faults(error_rate=0.2, drop_rate=0.2), seed=2)
    df = make_frame({"review": reviews(150)})
    df.llm.apply(TEMPLATE, **opts(server, batch_size=10, max_attempts=10))
    r = llmframe.last_report()
    assert r is not None
    assert r.requests == server.stats.requests
    assert r.prompt_tokens == server.stats.prompt_tokens
    assert r.completion_tokens == server.stats.completion_tokens
    assert r.retries == server.stats.server_errors
    assert r.answered_rows == 150 and r.failed_rows == 0
    assert r.latency_p50 is not None and r.latency_p95 is not None and r.latency_p95 >= r.latency_p50
    assert "150 rows" in str(r) and r.to_dict()["requests"] == r.requests


def test_estimate_takes_the_apply_line_as_is(fake_server: FakeServer, make_frame: Any) -> None:
    est = make_frame({"review": ["x"]}).llm.estimate(TEMPLATE, output="sentiment", **opts(fake_server))
    assert est.requests == 1


def test_sample_skips_cached_rows(fake_server: FakeServer, make_frame: Any, tmp_path: Any) -> None:
    df = make_frame({"review": reviews(60)})
    o = opts(fake_server, cache=str(tmp_path / "c"), batch_size=1)
    first = df.llm.estimate(TEMPLATE, sample=5, **o)
    second = df.llm.estimate(TEMPLATE, sample=5, **o)
    assert first.output_tokens_from == second.output_tokens_from == "sample"
    assert second.cached_rows == 10 and fake_server.stats.requests == 10


def test_estimate_of_a_packed_default_run_counts_the_formats_probe(fake_server: FakeServer, make_frame: Any) -> None:
    # A task worth packing in JSON: the run checks packing, probes the format with a small packed
    # request of its own, and packs the rest 20 to a request; the estimate plans the same requests.
    template = ("You review products for a consumer magazine. Read the customer's review below and classify its "
                "sentiment as positive, negative, neutral or mixed, judging the whole review rather than single "
                "words, and answer with that one word only.\n\nReview: {review}")  # fmt: skip
    df = make_frame({"review": reviews(300)})
    o = opts(fake_server, params={"max_tokens": 12})
    est = df.llm.estimate(template, **o)
    out = df.llm.apply(template, **o)
    report = out.llm.report
    assert report.packing_reason.startswith("packed 20 rows per request"), report.packing_reason
    assert report.ahead_rows > 0 and report.ahead_again == 0
    assert est.requests == fake_server.stats.requests, f"{report.retries=} {report.resent_rows=} {fake_server.stats}"
