"""Batch mode when the endpoint refuses an upload or a create: every definitive refusal (400,
403, 404, 413, 5xx past the retries) is one clear error with nothing charged, no job recorded,
no file left behind and no key shown; a 429 only waits (on the injected sleep). Through the
real openai client over HTTP to the fake server; a scripted transport plays the refusals a
server or a proxy in front of it sends (``_scripted``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pandas as pd
import pytest
from _scripted import Answer, Scripted, scripted_client

import llmframe
from llmframe import _batch_client, _batch_job
from llmframe._batch_state import JOBS_DIR, list_jobs
from llmframe._config import resolve
from llmframe._template import parse_template
from llmframe.testing import FakeServer, _files, expected_answer

KEY = "sk-secret-key-0123456789"
FAST = {"batch_seconds": 0.1, "batch_validate_seconds": 0.01, "api_keys": KEY}
FILES, BATCHES = ("POST", "/v1/files"), ("POST", "/v1/batches")
ROWS = [f"r {i}" for i in range(30)]


def run(server: FakeServer, cache: Path, script: dict[tuple[str, str], list[Answer]],
        slept: list[float]) -> tuple[Any, Scripted]:  # fmt: skip
    """Submit ``ROWS`` and wait for the frame, in one loop, over a scripted transport."""
    transport = Scripted(script)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(0.01)  # the fake server's clock moves on; the delays are recorded

    async def main() -> Any:
        opts = resolve(model="gpt-4o-mini", client=scripted_client(server, transport, KEY), cache=str(cache),
                       progress=False, mode="batch")  # fmt: skip
        job = await _batch_job.start(pd.DataFrame({"review": ROWS}), parse_template("{review}", ["review"]), opts,
                                     "answer", sleep=sleep)  # fmt: skip
        return await job.aresult()

    try:
        return asyncio.run(main()), transport
    except llmframe.LLMFrameError as exc:
        exc.transport = transport  # type: ignore[attr-defined]
        raise


def nothing_left(server: FakeServer, cache: Path) -> None:
    """Nothing charged, no job recorded, no input file left on the server."""
    assert server.stats.snapshot()["batches_created"] == 0
    assert list_jobs(cache) == [] and not list((cache / JOBS_DIR).glob("*.json"))
    api = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    assert api.files.list(purpose="batch").data == []


REFUSED: list[tuple[str, tuple[str, str], list[Answer], type[Exception], str]] = [
    ("upload 400", FILES, [Answer(400, "Invalid file format for Batch API. Must be .jsonl")],
     llmframe.EndpointError, r"uploading the batch input file failed at .*/files: HTTP 400: Invalid file format"),
    ("upload 403", FILES, [Answer(403, f"Project lacks access to the Files API ({KEY})")],
     llmframe.AuthenticationError, r"uploading the batch input file: HTTP 403: .*access refused"),
    ("upload 404", FILES, [Answer(404, "Not Found")], llmframe.ConfigError, r"/files answered HTTP 404.*no Batch API"),
    ("upload 5xx", FILES, [Answer(500), Answer(502), Answer(503), Answer(500)],
     llmframe.EndpointError, r"uploading the batch input file failed at .*/files \(after 4 tries\): HTTP 500"),
    ("create 400", BATCHES, [Answer(400, "Invalid 'metadata': too many properties", code="invalid_value")],
     llmframe.EndpointError, r"creating the batch failed at .*/batches: HTTP 400: Invalid 'metadata'"),
    ("create 403", BATCHES, [Answer(403, f"The key {KEY} may not create batches")],
     llmframe.AuthenticationError, r"creating the batch: HTTP 403"),
    ("create 404", BATCHES, [Answer(404, "Not Found")], llmframe.ConfigError, r"/batches answered HTTP 404"),
    ("create 5xx", BATCHES, [Answer(500), Answer(503), Answer(500), Answer(502)],
     llmframe.EndpointError, r"creating the batch failed at .*/batches \(after 4 tries\): HTTP 502"),
]


@pytest.mark.parametrize(("case", "path", "answers", "error", "match"), REFUSED, ids=[r[0] for r in REFUSED])
def test_a_refusal_is_one_clear_error_with_nothing_left(tmp_path: Path, case: str, path: tuple[str, str],
                                                        answers: list[Answer], error: type[Exception],
                                                        match: str) -> None:  # fmt: skip
    slept: list[float] = []
    with FakeServer(**FAST) as server:
        with pytest.raises(error, match=match) as caught:
            run(server, tmp_path, {path: answers}, slept)
        transport: Scripted = caught.value.transport  # type: ignore[attr-defined]
        nothing_left(server, tmp_path)
        assert transport.count(*path) == len(answers)  # a 4xx is not tried again, a 5xx 4 times
        if path == BATCHES:
            assert server.stats.snapshot()["files_uploaded"] == 1  # uploaded, then deleted
        if case == "create 5xx":  # before each new try and after the last: is the batch there after all?
            assert transport.count("GET", "/v1/batches") == len(answers)
    assert KEY not in str(caught.value)
    if KEY in answers[0].message:  # the server's words carried it
        assert "sk-***" in str(caught.value)
    assert len(slept) == (len(answers) - 1 if answers[0].status >= 500 else 0)


def test_a_file_over_the_endpoints_size_limit_names_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_files, "MAX_UPLOAD_BYTES", 2_000)  # a server (or a proxy) taking less than 200 MB
    with FakeServer(**FAST) as server:
        with pytest.raises(llmframe.EndpointError) as caught:
            run(server, tmp_path, {}, [])
        nothing_left(server, tmp_path)
    message = str(caught.value)
    assert "HTTP 413" in message and "at most 2,000 bytes" in message  # the server's limit, in its words
    assert "-byte file as too large" in message and "209,715,200 bytes" in message  # what was sent, what we split at
    assert KEY not in message


def test_429s_on_upload_and_create_wait_for_the_retry_after(tmp_path: Path) -> None:
    slept: list[float] = []
    limited = {"code": "rate_limit_exceeded", "message": "Rate limit reached for requests"}
    script = {FILES: [Answer(429, headers={"retry-after-ms": "1500"}, **limited),
                      Answer(429, headers={"retry-after": "2"}, **limited)],
              BATCHES: [Answer(429, headers={"retry-after-ms": "700"}, **limited)]}  # fmt: skip
    with FakeServer(**FAST) as server:
        out, transport = run(server, tmp_path, script, slept)
        stats = server.stats.snapshot()
    assert out["answer"].tolist() == [expected_answer(r) for r in ROWS]
    assert slept[:3] == [1.5, 2.0, 0.7]  # the server's retry-after, on the injected sleep
    assert stats["files_uploaded"] == 1 and stats["batches_created"] == 1
    assert transport.count(*FILES) == 3 and transport.count(*BATCHES) == 2
    (state,) = list_jobs(tmp_path)
    assert state.status == "completed" and state.batches[0].batch_id


def test_429s_that_do_not_end_leave_the_batch_queued_not_failed(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(_batch_client, "RATE_LIMITED_TRIES", 3)
    slept: list[float] = []
    script = {BATCHES: [Answer(429, code="rate_limit_exceeded") for _ in range(3)]}
    with FakeServer(**FAST) as server:
        out, transport = run(server, tmp_path, script, slept)
        stats = server.stats.snapshot()
    assert out["answer"].tolist() == [expected_answer(r) for r in ROWS]  # created once the 429s stopped
    assert stats["batches_created"] == 1 and transport.count(*BATCHES) == 4


def test_429s_on_upload_that_do_not_end_are_one_error_with_nothing_left(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(_batch_client, "RATE_LIMITED_TRIES", 3)
    slept: list[float] = []
    with FakeServer(**FAST) as server:
        with pytest.raises(llmframe.EndpointError, match=r"/files \(rate limited 3 times in a row\): HTTP 429"):
            run(server, tmp_path, {FILES: [Answer(429, code="rate_limit_exceeded") for _ in range(3)]}, slept)
        nothing_left(server, tmp_path)
    assert len(slept) == 2


def test_a_create_whose_answer_is_lost_is_found_not_made_twice(tmp_path: Path) -> None:
    slept: list[float] = []
    script = {BATCHES: [Answer(502, "Bad gateway", lost=True)]}  # the server made it; the client heard a 502
    with FakeServer(**FAST) as server:
        out, transport = run(server, tmp_path, script, slept)
        stats = server.stats.snapshot()
        (batch,) = server.batches()
    assert out["answer"].tolist() == [expected_answer(r) for r in ROWS]
    assert stats["batches_created"] == 1 and transport.count(*BATCHES) == 1  # found by its token, not made again
    (state,) = list_jobs(tmp_path)
    assert state.batches[0].batch_id == batch["id"]
    assert batch["metadata"] == {"llmframe_job": state.id, "llmframe_batch": state.batches[0].token}
