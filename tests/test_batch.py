"""Batch API mode end to end: llmframe through the real openai client, over HTTP, against the
fake server's Batch API on an accelerated clock (``batch_seconds`` well under a second)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import openai
import pandas as pd
import pytest
from conftest import column

import llmframe
from llmframe import _batch_jsonl
from llmframe._batch_run import REFERENCE_ROWS
from llmframe._batch_state import list_jobs
from llmframe._pricing import price_for
from llmframe.testing import FakeServer, expected_answer

TEMPLATE = "Classify the sentiment of: {review}"
MODEL = "gpt-4o-mini"
FAST = {"batch_seconds": 0.2, "batch_validate_seconds": 0.01}


def reviews(n: int) -> list[str]:
    return [f"review {i}" for i in range(n)]


def answer(text: str) -> str:
    return expected_answer(TEMPLATE.format(review=text))


def opts(server: FakeServer, cache: Path, **extra: Any) -> dict[str, Any]:
    base = {"model": MODEL, "base_url": server.base_url, "api_key": server.api_key, "cache": str(cache),
            "progress": False}  # fmt: skip
    return {**base, **extra}


def lines_by_batch(server: FakeServer) -> dict[str, list[str]]:
    """custom_ids the server received, by batch id, in order of creation."""
    out: dict[str, list[str]] = {}
    for batch_id, custom_id in server.stats.snapshot()["batch_lines"]:
        out.setdefault(batch_id, []).append(custom_id)
    return out


def failed_ids(server: FakeServer, batch_id: str) -> set[str]:
    """The custom_ids of a batch's error file (errored, expired or left unfinished)."""
    api = openai.OpenAI(base_url=server.base_url, api_key=server.api_key)
    batch = api.batches.retrieve(batch_id)
    if not batch.error_file_id:
        return set()
    text = api.files.content(batch.error_file_id).text
    return {json.loads(line)["custom_id"] for line in text.splitlines() if line.strip()}


def test_ten_thousand_rows_at_half_the_live_price(tmp_path: Path) -> None:
    rows = reviews(10_000)
    df = pd.DataFrame({"review": rows})
    with FakeServer(**FAST) as server:
        out = df.llm.apply(TEMPLATE, output="sentiment", mode="batch", **opts(server, tmp_path))
        stats = server.stats.snapshot()
        # The cache holds every answer: the same call live is all hits.
        again = df.llm.apply(TEMPLATE, output="sentiment", **opts(server, tmp_path))
    assert again.llm.report is not None and again.llm.report.cached_rows == 10_000
    assert column(out, "sentiment") == [answer(r) for r in rows]
    report = out.llm.report
    assert report is not None and report.answered_rows == 10_000 and report.failed_rows == 0
    live = price_for(MODEL)
    assert live is not None and report.cost_usd is not None
    assert report.cost_usd == pytest.approx(live.cost(report.prompt_tokens, report.completion_tokens) / 2)
    assert report.requests == len(stats["batch_lines"]) <= 10_000 / 15
    assert stats["files_uploaded"] == 1 and stats["batches_created"] == 1
    assert stats["requests"] == 0  # nothing went through the live endpoint


def test_errored_and_expired_requests_alone_go_again(tmp_path: Path) -> None:
    rows = reviews(1_000)
    df = pd.DataFrame({"review": rows})
    with FakeServer(**FAST, batch_error_rate=0.1, batch_expire_rate=0.1, batch_broken_rate=0.1, seed=5) as server:
        out = df.llm.apply(TEMPLATE, output="sentiment", mode="batch", error_column="error",
                           **opts(server, tmp_path))  # fmt: skip
        by_batch = lines_by_batch(server)
        failed = {b: failed_ids(server, b) for b in by_batch}
    answers, errors = column(out, "sentiment"), column(out, "error")
    for text, got, error in zip(rows, answers, errors, strict=True):
        assert got == answer(text) or (got is None and error), (text, got, error)
    assert sum(a is not None for a in answers) >= 990
    (state,) = list_jobs(tmp_path)
    keys = {cid: [k for i, k in enumerate(keys) if i not in b.canaries.get(cid, ())]  # rows, not canary copies
            for b in state.batches for cid, keys in b.requests.items()}  # fmt: skip
    rounds = [b.batch_id for b in sorted(state.batches, key=lambda b: b.round)]
    assert len(rounds) >= 2 and list(by_batch) == rounds
    first, *later = rounds
    assert 0 < len(failed[first]) < len(by_batch[first])
    report = out.llm.report
    assert report is not None and report.resent_rows > 0  # broken packed answers: their rows again
    sent_again = {k for b in later for cid in by_batch[b] for k in keys[cid]}
    failed_first = {k for cid in failed[first] for k in keys[cid]}
    # Every row of a request that errored or expired went again; of the requests that
    # completed, only rows whose packed answer did not validate did.
    assert failed_first <= sent_again
    failed_keys = {k for b in rounds for cid in failed[b] for k in keys[cid]}
    assert len(sent_again - failed_keys) <= report.resent_rows
    assert sum(len(by_batch[b]) for b in later) < len(by_batch[first])


def test_cancel_keeps_what_completed(tmp_path: Path) -> None:
    rows = reviews(400)
    df = pd.DataFrame({"review": rows})
    with FakeServer(batch_seconds=3.0, batch_validate_seconds=0.01) as server:
        job = df.llm.submit(TEMPLATE, output="sentiment", batch_size=5, **opts(server, tmp_path))
        deadline = time.monotonic() + 10
        while job.status().requests_done < 10:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        cancelled = job.cancel()
        out = job.result()
        stats = server.stats.snapshot()
    assert cancelled.state in ("cancelling", "cancelled")
    answers = column(out, "sentiment")
    done = [i for i, a in enumerate(answers) if a is not None]
    # The >= 10 requests done may include the first round's one-row references (the batch
    # completes its requests in any order), and a packed one of 5 rows may carry a canary.
    assert len(done) >= REFERENCE_ROWS + (10 - REFERENCE_ROWS) * 4 and len(done) < len(rows)
    assert all(answers[i] == answer(rows[i]) for i in done)
    report = out.llm.report
    assert report is not None and report.failures == {"cancelled": len(rows) - len(done)}
    assert stats["batches_created"] == 1  # nothing submitted after the cancel
    assert llmframe.batch_jobs(cache=tmp_path)[0].state == "cancelled"


def test_on_expired_live_sends_the_rest_through_the_live_path(tmp_path: Path) -> None:
    rows = reviews(300)
    df = pd.DataFrame({"review": rows})
    with FakeServer(**FAST, batch_expire_rate=0.3, seed=2) as server:
        out = df.llm.apply(TEMPLATE, output="sentiment", mode="batch", on_expired="live", **opts(server, tmp_path))
        stats = server.stats.snapshot()
    assert column(out, "sentiment") == [answer(r) for r in rows]
    assert stats["batches_created"] == 1 and stats["requests"] > 0  # the expired rows went live
    report = out.llm.report
    assert report is not None and report.answered_rows == 300 and not report.errors
    assert any("live path" in note for note in report.endpoint_notes)


def test_a_server_without_the_batch_api_fails_before_any_upload(tmp_path: Path) -> None:
    df = pd.DataFrame({"review": reviews(50)})
    with FakeServer(**FAST, batch_api=False) as server:
        with pytest.raises(llmframe.ConfigError, match=r"/files answered HTTP 404.*no Batch API"):
            df.llm.submit(TEMPLATE, **opts(server, tmp_path))
        assert server.stats.snapshot()["files_uploaded"] == 0
    assert list_jobs(tmp_path) == []


def test_a_refused_upload_records_no_job_and_shows_no_key(tmp_path: Path) -> None:
    df = pd.DataFrame({"review": reviews(50)})
    with FakeServer(**FAST, api_keys="sk-right-key-123") as server:
        with pytest.raises(llmframe.AuthenticationError) as caught:
            df.llm.submit(TEMPLATE, **opts(server, tmp_path, api_key="sk-wrong-key-456"))
        assert server.stats.snapshot()["batches_created"] == 0
    assert "sk-wrong-key-456" not in str(caught.value)
    assert list_jobs(tmp_path) == []


def test_a_batch_that_fails_validation_is_one_clear_error(tmp_path: Path) -> None:
    df = pd.DataFrame({"review": reviews(200)})
    with FakeServer(**FAST, batch_max_requests=3) as server:
        job = df.llm.submit(TEMPLATE, **opts(server, tmp_path))
        with pytest.raises(llmframe.EndpointError, match="failed validation") as caught:
            job.result()
    assert len(caught.value.errors) == 200
    assert list_jobs(tmp_path)[0].status == "failed"


def test_a_schema_nothing_follows_stops_after_the_first_batch(tmp_path: Path) -> None:
    # Live, packed answers that fail a schema send their rows again alone (a model may break
    # it only packed); in batch mode that would be a whole second batch of one-row requests
    # for nothing, so there the first batch's packed answers tell.
    from pydantic import BaseModel, Field

    class Code(BaseModel):
        code: str = Field(pattern=r"^\d{3}$")  # the fake ignores "pattern": no answer matches

    df = pd.DataFrame({"review": reviews(600)})
    with FakeServer(**FAST) as server:
        with pytest.raises(llmframe.EndpointError, match=r"none of the first \d+ answers matched the schema"):
            df.llm.apply(TEMPLATE, schema=Code, mode="batch", **opts(server, tmp_path))
        jobs = {batch for batch, _ in server.stats.snapshot()["batch_lines"]}
    assert len(jobs) == 1


def test_files_split_and_the_enqueued_token_limit_queues_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_batch_jsonl, "MAX_REQUESTS", 10)
    rows = reviews(400)
    df = pd.DataFrame({"review": rows})
    with FakeServer(**FAST, batch_enqueued_tpd=4_000) as server:
        job = df.llm.submit(TEMPLATE, output="sentiment", **opts(server, tmp_path))
        out = job.result()
        stats = server.stats.snapshot()
        created = server.batches()
    assert column(out, "sentiment") == [answer(r) for r in rows]
    assert stats["files_uploaded"] == 3  # 24 requests, 10 to a file
    assert any(b["status"] == "failed" for b in created)  # refused at the limit, submitted again later
    assert sum(b["status"] == "completed" for b in created) == 3


def test_reattach_by_id_with_the_frame(tmp_path: Path) -> None:
    rows = reviews(120)
    df = pd.DataFrame({"review": rows})
    with FakeServer(batch_seconds=0.5, batch_validate_seconds=0.01) as server:
        plain_url = server.base_url
        secret_url = plain_url.replace("http://", "http://someone:pa55word@")
        job = df.llm.submit(TEMPLATE, output="sentiment", **opts(server, tmp_path, base_url=secret_url))
        (listed,) = llmframe.batch_jobs(cache=tmp_path)
        assert listed.job_id == job.id and listed.rows == 120 and "requests" in str(listed)
        again = llmframe.batch_job(job.id, cache=tmp_path, base_url=server.base_url, api_key=server.api_key,
                                   progress=False)  # fmt: skip
        assert again.status().requests_total == job.status().requests_total
        out = again.result(df)
        cached = llmframe.submit(df, TEMPLATE, output="sentiment", **opts(server, tmp_path))
        assert cached.status().state == "completed"  # every row cached: nothing sent, no job recorded
        assert server.stats.snapshot()["files_uploaded"] == 1 and len(llmframe.batch_jobs(cache=tmp_path)) == 1
    assert column(out, "sentiment") == [answer(r) for r in rows]
    state = (tmp_path / "_batches" / f"{job.id}.json").read_text()
    assert server.api_key not in state and "pa55word" not in state and "review 1" not in state
    assert json.loads(state)["base_url"] == plain_url


def test_estimate_shows_live_and_batch_side_by_side(tmp_path: Path) -> None:
    df = pd.DataFrame({"review": reviews(500)})
    est = df.llm.estimate(TEMPLATE, model=MODEL, base_url="http://127.0.0.1:9/v1", cache=str(tmp_path),
                          mode="batch")  # fmt: skip
    assert est.batch is not None and est.cost_usd is not None and est.batch.cost_usd is not None
    assert est.batch.cost_usd == pytest.approx(est.cost_usd / 2)
    assert "batch API" in str(est) and "batch API" in est._repr_html_()


def test_classify_in_batch_mode_on_either_backend(tmp_path: Path, make_frame: Any) -> None:
    labels = ["positive", "negative", "neutral"]
    df = make_frame({"review": reviews(150)})
    with FakeServer(**FAST) as server:
        out = df.llm.classify(TEMPLATE, labels=labels, mode="batch", **opts(server, tmp_path))
        again = df.llm.classify(TEMPLATE, labels=labels, **opts(server, tmp_path))  # live: all cached
        stats = server.stats.snapshot()
    got = column(out, "label")
    assert all(label in labels for label in got) and got == column(again, "label")
    assert stats["requests"] == 0 and stats["batches_created"] == 1


def test_max_cost_is_checked_before_anything_is_submitted(tmp_path: Path) -> None:
    df = pd.DataFrame({"review": reviews(400)})
    with FakeServer(**FAST) as server:
        with pytest.raises(llmframe.ConfigError, match="max_cost_usd"):
            df.llm.submit(TEMPLATE, max_cost_usd=1e-6, **opts(server, tmp_path))
        assert server.stats.snapshot()["files_uploaded"] == 0
