"""The parts of batch mode that need no server: the JSONL files, the job state, the batch
price, the options, and the poll loop's backoff on an injected sleep."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import llmframe
from llmframe import _batch_job
from llmframe._batch_jsonl import input_line, read_results, split_lines
from llmframe._batch_state import JobState, SentBatch, drop_job, find_job, list_jobs, load_job
from llmframe._batch_status import status_of
from llmframe._config import resolve
from llmframe._pricing import batch_price_for, price_for
from llmframe._requests import Request
from llmframe._template import parse_template
from llmframe.testing import FakeServer, expected_answer


def test_a_line_is_the_body_the_live_path_sends() -> None:
    request = Request([{"role": "user", "content": "hi"}], {"temperature": 0, "extra_body": {"seed": 3}},
                      {"type": "json_object"}, "json_object", 5, 16)  # fmt: skip
    line = json.loads(input_line("c-1", request, "gpt-4o-mini"))
    assert line == {"custom_id": "c-1", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": "gpt-4o-mini", "temperature": 0, "seed": 3, "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_object"}}}  # fmt: skip


def test_files_split_at_the_request_and_byte_limits() -> None:
    lines = [(f"c{i}", b"x" * 10 + b"\n") for i in range(7)]
    assert [len(f) for f in split_lines(lines, max_requests=3)] == [3, 3, 1]
    assert [len(f) for f in split_lines(lines, max_bytes=25)] == [2, 2, 2, 1]
    assert [c for f in split_lines(lines, max_requests=2) for c, _ in f] == [c for c, _ in lines]
    with pytest.raises(llmframe.ConfigError, match="request c0 takes 11 bytes"):
        split_lines(lines, max_bytes=10)


def test_results_are_read_by_custom_id_and_classified() -> None:
    ok = {"custom_id": "a", "response": {"status_code": 200, "request_id": "r1", "body": {
        "choices": [{"message": {"content": "yes"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2}}}, "error": None}  # fmt: skip
    server = {"custom_id": "b", "response": {"status_code": 500, "body": {"error": {"message": "oops"}}}}
    bad = {"custom_id": "c", "response": {"status_code": 400, "body": {"error": {"message": "no", "param": "x"}}}}
    expired = {"custom_id": "d", "response": None, "error": {"code": "batch_expired", "message": "late"}}
    text = "\n".join(json.dumps(x) for x in (bad, expired, ok, server)) + "\nnot json\n"
    got = read_results(text, latency=3.0)
    assert set(got) == {"a", "b", "c", "d"}
    done = got["a"].completion
    assert done is not None and (done.content, done.prompt_tokens, done.completion_tokens, done.latency) == (
        "yes", 7, 2, 3.0)  # fmt: skip
    assert got["b"].error is not None and got["b"].error.retryable and got["b"].error.status == 500
    assert got["c"].error is not None and (got["c"].error.kind, got["c"].error.param) == ("bad_request", "x")
    assert got["d"].unfinished and got["d"].error is not None and got["d"].error.kind == "expired"


def test_the_state_is_written_whole_and_holds_no_secret(tmp_path: Path) -> None:
    state = JobState.new(hash="h1", model="m", base_url="http://host:1/v1", template="T {a}", rows=3,
                         options={"system": None})  # fmt: skip
    assert list_jobs(tmp_path) == []
    state.batches.append(SentBatch("b1", "f1", 1, {"c1": ["k1", "k2"], "c2": ["k3"]}, status="in_progress"))
    state.save(tmp_path)
    assert [p.name for p in (tmp_path / "_batches").iterdir()] == [f"{state.id}.json"]  # no temp file left
    again = load_job(tmp_path, state.id)
    assert again == state and again.keys == {"k1", "k2", "k3"} and again.requests == 2
    assert find_job(tmp_path, "h1", ["k1", "k3"]) == state
    assert find_job(tmp_path, "h1", ["k1", "k9"]) is None  # a row it does not carry: another job
    assert find_job(tmp_path, "h2", ["k1"]) is None
    state.status = "completed"
    state.save(tmp_path)
    assert find_job(tmp_path, "h1", ["k1"]) is None  # finished: nothing to wait for
    status = status_of(state)
    assert (status.state, status.requests_total, status.rows) == ("completed", 2, 3)
    assert "completed" in str(status) and "<table" in status._repr_html_()


def test_a_batch_is_written_down_with_its_own_token(tmp_path: Path) -> None:
    state = JobState.new(hash="h1", model="m", base_url="http://host:1/v1", template="T {a}", rows=1, options={})
    sent = SentBatch("", "", 2, {"c1": ["k1"]}).renew()
    assert len(sent.token) == 16 and sent.since > 0 and sent.token != SentBatch("", "", 2, {}).renew().token
    assert sent.file_name(state.id) == f"{state.id}-2-{sent.token}.jsonl"
    state.batches.append(sent)
    state.save(tmp_path)
    again = load_job(tmp_path, state.id)
    assert again is not None and (again.batches[0].token, again.batches[0].since) == (sent.token, sent.since)
    path = tmp_path / "_batches" / f"{state.id}.json"
    data = json.loads(path.read_text())
    for name in ("token", "since"):  # a state written before batches had tokens
        del data["batches"][0][name]
    path.write_text(json.dumps(data))
    older = load_job(tmp_path, state.id)
    assert older is not None and older.batches[0].token == ""
    drop_job(tmp_path, state.id)
    drop_job(tmp_path, state.id)  # gone already: nothing to do
    assert list_jobs(tmp_path) == []


def test_the_batch_price_is_half_unless_given() -> None:
    live = price_for("gpt-4o-mini-2024-07-18")
    batch = batch_price_for("gpt-4o-mini-2024-07-18")
    assert live is not None and batch is not None
    assert (batch.input_per_1m, batch.output_per_1m) == (live.input_per_1m / 2, live.output_per_1m / 2)
    mine = batch_price_for("llama3", {"llama3": (1.0, 2.0)})
    assert mine is not None and (mine.input_per_1m, mine.output_per_1m) == (0.5, 1.0)
    given = batch_price_for("llama3", {"llama3": (1.0, 2.0)}, {"llama3": (0.9, 1.9)})
    assert given is not None and (given.input_per_1m, given.output_per_1m) == (0.9, 1.9)
    assert batch_price_for("unknown-model") is None
    assert price_for("gpt-4o-mini", {"other": (1.0, 1.0)}) == live  # a table without it: ours


@pytest.mark.parametrize(("option", "value"), [("mode", "later"), ("on_expired", "skip"), ("batch_prices", 3)])
def test_batch_options_are_checked(option: str, value: Any) -> None:
    with pytest.raises(llmframe.ConfigError, match=option):
        llmframe.configure(**{option: value})


def test_batch_mode_needs_a_cache_folder() -> None:
    df = pd.DataFrame({"review": ["a"]})
    with pytest.raises(llmframe.ConfigError, match="cache folder"):
        df.llm.submit("{review}", model="m", base_url="http://127.0.0.1:9/v1", cache=False)


def test_polls_back_off_on_the_injected_sleep(tmp_path: Path) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(0.02)  # the fake server's clock moves on; the delays are recorded

    df = pd.DataFrame({"review": [f"r {i}" for i in range(30)]})
    with FakeServer(batch_seconds=1.0, batch_validate_seconds=0.01) as server:

        async def main() -> Any:
            tpl = parse_template("{review}", ["review"])
            opts = resolve(model="gpt-4o-mini", base_url=server.base_url, api_key=server.api_key,
                                            cache=str(tmp_path), progress=False, mode="batch")  # fmt: skip
            job = await _batch_job.start(df, tpl, opts, "answer", sleep=sleep)
            return await job.aresult()

        out = asyncio.run(main())
    assert out["answer"].tolist() == [expected_answer(f"r {i}") for i in range(30)]
    quiet = slept[: slept.index(max(slept)) + 1]
    assert quiet[0] == _batch_job.POLL_FIRST and len(slept) >= 3
    assert all(b == pytest.approx(min(a * _batch_job.POLL_FACTOR, _batch_job.POLL_MAX)) for a, b in
               itertools.pairwise(quiet))
