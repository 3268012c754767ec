"""The fake server's Batch API, through the real ``openai`` client over HTTP."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from _support import ITEMS, MODEL, TEMPLATE, expected_packed

from llmframe._packing import answers_schema, packed_messages
from llmframe.testing import FakeServer, expected_answer
from llmframe.testing._embeddings import embedding

FAST = {"batch_seconds": 0.2, "batch_validate_seconds": 0.01}
CHAT = "/v1/chat/completions"


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer(**FAST) as running:
        yield running


_CLIENTS: dict[tuple[str, str], openai.OpenAI] = {}  # a client takes 0.1 s to build


def client(server: FakeServer, api_key: str | None = None) -> openai.OpenAI:
    key = (server.base_url, api_key or server.api_key)
    if key not in _CLIENTS:
        _CLIENTS[key] = openai.OpenAI(base_url=key[0], api_key=key[1], max_retries=0)
    return _CLIENTS[key]


def line(custom_id: str, body: dict[str, Any], url: str = CHAT) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def chat_lines(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [
        line(f"row-{i}", {"model": MODEL, "messages": [{"role": "user", "content": f"row {i}"}],
                          **extra})
        for i in range(n)
    ]  # fmt: skip


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


def submit(
    server: FakeServer, lines: list[dict[str, Any]] | bytes, endpoint: str = CHAT
) -> openai.types.Batch:
    api = client(server)
    data = lines if isinstance(lines, bytes) else jsonl(lines)
    uploaded = api.files.create(file=("requests.jsonl", data), purpose="batch")
    return api.batches.create(
        input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h"  # type: ignore[arg-type]
    )


def finished(server: FakeServer, batch: openai.types.Batch) -> openai.types.Batch:
    server.wait_batch(batch.id, timeout=10)
    return client(server).batches.retrieve(batch.id)


def read(server: FakeServer, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(t) for t in client(server).files.content(file_id).text.splitlines()]


def content(entry: dict[str, Any]) -> str:
    return str(entry["response"]["body"]["choices"][0]["message"]["content"])


def test_a_batch_completes_with_the_live_answers_in_shuffled_order(server: FakeServer) -> None:
    packed = {"model": MODEL, "messages": packed_messages(TEMPLATE, "Be brief.", ITEMS),
              "response_format": answers_schema(len(ITEMS))}  # fmt: skip
    lines = [*chat_lines(12, max_tokens=3), line("packed", packed)]
    batch = submit(server, lines)
    assert batch.status == "validating" and batch.request_counts is not None
    assert batch.input_file_id and batch.endpoint == CHAT and batch.output_file_id is None

    done = finished(server, batch)
    assert done.status == "completed" and done.error_file_id is None and done.errors is None
    assert done.request_counts is not None and done.request_counts.model_dump() == {
        "total": 13, "completed": 13, "failed": 0}  # fmt: skip
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at
    output = read(server, done.output_file_id)
    order = [entry["custom_id"] for entry in output]
    assert sorted(order) == sorted(x["custom_id"] for x in lines)
    assert order != [x["custom_id"] for x in lines]  # shuffled
    by_id = {entry["custom_id"]: entry for entry in output}
    live = client(server)
    for x in lines:
        entry = by_id[x["custom_id"]]
        assert entry["error"] is None and entry["response"]["status_code"] == 200
        assert entry["id"].startswith("batch_req_") and entry["response"]["request_id"]
        reply = json.loads(live.chat.completions.with_raw_response.create(**x["body"]).text)
        body = entry["response"]["body"]
        assert {**body, "id": "", "created": 0} == {**reply, "id": "", "created": 0}
    assert json.loads(content(by_id["packed"])) == expected_packed()
    cut = by_id["row-3"]["response"]["body"]["choices"][0]  # max_tokens=3, as live
    assert cut["finish_reason"] == "length" and expected_answer("row 3").startswith(content(by_id["row-3"]))
    assert server.stats.ok == len(lines)  # only the live requests count as chat requests


def test_files_are_stored_listed_and_counted(server: FakeServer) -> None:
    api = client(server)
    data = jsonl(chat_lines(2))
    uploaded = api.files.create(file=("in.jsonl", data), purpose="batch")
    assert (uploaded.object, uploaded.purpose, uploaded.status) == ("file", "batch", "processed")
    assert uploaded.bytes == len(data) and uploaded.filename == "in.jsonl"
    assert uploaded.id.startswith("file-") and uploaded.created_at > 0
    assert api.files.retrieve(uploaded.id) == uploaded
    assert api.files.content(uploaded.id).content == data
    batch = api.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    done = finished(server, batch)
    output = api.files.retrieve(str(done.output_file_id))
    assert output.purpose == "batch_output" and output.filename == f"{batch.id}_output.jsonl"
    listed = api.batches.list()
    assert [b.id for b in listed.data] == [batch.id] and listed.has_more is False
    assert [b["id"] for b in server.batches()] == [batch.id]
    assert server.stats.files_uploaded == 1 and server.stats.batches_created == 1
    assert server.stats.snapshot()["batch_lines"] == [(batch.id, "row-0"), (batch.id, "row-1")]
    assert api.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        api.files.retrieve(uploaded.id)


def test_cancel_keeps_the_lines_already_done() -> None:
    with FakeServer(batch_seconds=1.0, batch_validate_seconds=0.01) as server:
        api = client(server)
        batch = submit(server, chat_lines(20))
        deadline = time.monotonic() + 5
        while (api.batches.retrieve(batch.id).request_counts or batch.request_counts).completed < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        cancelling = api.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at
        done = finished(server, batch)
        with pytest.raises(openai.ConflictError):
            api.batches.cancel(batch.id)
        output, errors = read(server, done.output_file_id), read(server, done.error_file_id)
    assert done.status == "cancelled" and done.cancelled_at and done.request_counts
    assert len(output) == done.request_counts.completed >= 3 and done.request_counts.failed == 0
    assert len(errors) == 20 - len(output) > 0
    assert all(e["response"] is None and e["error"]["code"] == "batch_cancelled" for e in errors)
    assert {e["custom_id"] for e in output + errors} == {f"row-{i}" for i in range(20)}
    assert all(content(e) == expected_answer(f"row {e['custom_id'][4:]}") for e in output)


def test_a_batch_cancelled_while_validating_runs_no_line() -> None:
    with FakeServer(batch_seconds=0.2, batch_validate_seconds=5.0) as server:
        good, bad = submit(server, chat_lines(3)), submit(server, b"{not json\n")
        for batch in (good, bad):
            assert client(server).batches.cancel(batch.id).status == "cancelling"
        done, failed = finished(server, good), finished(server, bad)
        errors = read(server, done.error_file_id)
    assert done.status == failed.status == "cancelled" and done.output_file_id is None
    assert sorted(e["custom_id"] for e in errors) == ["row-0", "row-1", "row-2"]
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert done.request_counts and done.request_counts.completed == 0


def test_expired_and_failed_lines_go_to_the_error_file() -> None:
    with FakeServer(**FAST, batch_expire_rate=0.25, batch_error_rate=0.3, seed=3) as server:
        done = finished(server, submit(server, chat_lines(20)))
        output, errors = read(server, done.output_file_id), read(server, done.error_file_id)
    assert done.status == "expired" and done.expired_at and done.request_counts
    expired = [e for e in errors if e["response"] is None]
    failed = [e for e in errors if e["response"] is not None]
    assert len(expired) == 5 and all(e["error"]["code"] == "batch_expired" for e in expired)
    assert 0 < len(failed) < 15 and len(output) == 15 - len(failed)
    for e in failed:
        assert e["error"] is None and e["response"]["status_code"] == 500
        assert e["response"]["body"]["error"]["type"] == "server_error"
    assert done.request_counts.model_dump() == {
        "total": 20, "completed": len(output), "failed": len(failed)}  # fmt: skip
    assert all(content(e) == expected_answer(f"row {e['custom_id'][4:]}") for e in output)


def test_broken_packed_lines_lose_or_garble_an_id() -> None:
    packed = {"model": MODEL, "messages": packed_messages(TEMPLATE, None, ITEMS)}
    with FakeServer(**FAST, batch_broken_rate=1.0) as server:
        done = finished(server, submit(server, [line(f"p{i}", packed) for i in range(4)]))
        output = read(server, done.output_file_id)
    assert done.status == "completed" and len(output) == 4
    for entry in output:
        text = content(entry)
        assert text != json.dumps(expected_packed(), separators=(",", ":"))
        ids = [k for k, _ in json.loads(text, object_pairs_hook=list)]
        assert sorted(ids) != sorted(expected_packed()), text  # one missing, wrong or twice


def test_lines_the_live_endpoint_rejects_are_answered_with_its_error() -> None:
    long = {"model": MODEL, "messages": [{"role": "user", "content": "word " * 100}]}
    with FakeServer(**FAST, models=(MODEL,), unsupported_params=("seed",), model_context=60) as server:
        seeded = [*chat_lines(1), line("seeded", {**chat_lines(1)[0]["body"], "seed": 1}),
                  line("long", long)]  # fmt: skip
        done = finished(server, submit(server, seeded))
        output, errors = read(server, done.output_file_id), read(server, done.error_file_id)
        unknown = [line("unknown", {"model": "nope", "messages": [{"role": "user", "content": "x"}]})]
        missing = finished(server, submit(server, unknown))
        (not_found,) = read(server, missing.error_file_id)
    assert done.status == "completed" and done.request_counts
    assert done.request_counts.model_dump() == {"total": 3, "completed": 1, "failed": 2}
    assert [e["custom_id"] for e in output] == ["row-0"]
    by_id = {e["custom_id"]: e for e in errors}
    assert sorted(by_id) == ["long", "seeded"] and all(e["error"] is None for e in errors)
    assert by_id["seeded"]["response"]["status_code"] == 400
    assert by_id["seeded"]["response"]["body"]["error"]["code"] == "unsupported_parameter"
    assert by_id["long"]["response"]["body"]["error"]["code"] == "context_length_exceeded"
    assert missing.status == "completed" and missing.output_file_id is None
    assert not_found["response"]["status_code"] == 404
    assert not_found["response"]["body"]["error"]["code"] == "model_not_found"


BAD_FILES = {
    "invalid_json_line": jsonl(chat_lines(1)) + b"{not json\n",
    "duplicate_custom_id": jsonl(chat_lines(2)) + jsonl(chat_lines(1)),
    "url_mismatch": jsonl([line("a", chat_lines(1)[0]["body"], url="/v1/embeddings")]),
    "missing_required_parameter": jsonl([line("a", {"messages": []})]),
    "model_mismatch": jsonl([*chat_lines(1), line("b", {"model": "other", "messages": []})]),
    "too_many_tasks": jsonl(chat_lines(4)),
    "empty_file": b"\n",
    "file_too_large": jsonl(chat_lines(30)),
}


@pytest.mark.parametrize("code", sorted(BAD_FILES))
def test_a_bad_input_file_fails_the_batch_after_validating(code: str) -> None:
    with FakeServer(**FAST, batch_max_requests=3, batch_max_bytes=3000) as server:
        batch = submit(server, BAD_FILES[code])
        assert batch.status == "validating"
        done = finished(server, batch)
    assert done.status == "failed" and done.failed_at and done.errors and done.errors.data
    assert done.errors.data[0].code == code and done.errors.data[0].message
    assert done.output_file_id is None and server.stats.batch_lines == []


def test_the_enqueued_token_limit_fails_a_batch_beyond_it() -> None:
    with FakeServer(batch_seconds=5.0, batch_validate_seconds=0.01, batch_enqueued_tpd=150) as server:
        first = submit(server, chat_lines(10))  # 100 prompt tokens
        over = finished(server, submit(server, chat_lines(10)))
        assert client(server).batches.retrieve(first.id).status == "in_progress"
        client(server).batches.cancel(first.id)
        server.wait_batch(first.id)
        server.configure(batch_seconds=0.2)
        assert finished(server, submit(server, chat_lines(10))).status == "completed"
    assert over.status == "failed" and over.errors and over.errors.data
    assert over.errors.data[0].code == "token_limit_exceeded" and "150" in str(over.errors.data[0].message)


def test_an_embeddings_batch_gets_the_live_vectors(server: FakeServer) -> None:
    body = {"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 4}
    done = finished(server, submit(server, [line("e", body, "/v1/embeddings")], "/v1/embeddings"))
    (entry,) = read(server, done.output_file_id)
    vectors = [item["embedding"] for item in entry["response"]["body"]["data"]]
    assert vectors == [embedding("a", 4), embedding("b", 4)]


def test_batch_lines_are_outside_the_live_rate_limits() -> None:
    with FakeServer(**FAST, rpm=1) as server:
        done = finished(server, submit(server, chat_lines(5)))
        assert done.request_counts and done.request_counts.completed == 5
        client(server).chat.completions.create(**chat_lines(1)[0]["body"])  # the bucket is full
        assert server.stats.rate_limited == 0 and server.stats.ok == 1


def test_without_the_batch_api_every_batch_path_is_a_404() -> None:
    with FakeServer(**FAST, batch_api=False) as server:
        api = client(server)
        with pytest.raises(openai.NotFoundError):
            api.batches.list()
        with pytest.raises(openai.NotFoundError):
            api.files.create(file=("in.jsonl", jsonl(chat_lines(1))), purpose="batch")
        with pytest.raises(openai.NotFoundError):
            api.batches.create(input_file_id="file-x", endpoint=CHAT, completion_window="24h")
        assert server.stats.files_uploaded == 0 and api.chat.completions.create(
            **chat_lines(1)[0]["body"]).choices  # fmt: skip


def test_a_bad_key_is_refused_everywhere() -> None:
    with FakeServer(**FAST, api_keys="sk-good-key-123") as server:
        batch = submit(server, chat_lines(1))
        wrong = client(server, api_key="sk-wrong-key-456")
        for call in (
            lambda: wrong.files.create(file=("in.jsonl", b"{}\n"), purpose="batch"),
            lambda: wrong.files.content(batch.input_file_id),
            lambda: wrong.batches.retrieve(batch.id),
            lambda: wrong.batches.cancel(batch.id),
            lambda: wrong.batches.list(),
        ):
            with pytest.raises(openai.AuthenticationError) as caught:
                call()
            assert "sk-wrong-key-456" not in str(caught.value)
        assert finished(server, batch).status == "completed"


def upload_raw(server: FakeServer, body: bytes, content_type: str) -> tuple[int, Any]:
    request = urllib.request.Request(f"{server.base_url}/files", data=body, method="POST", headers={
        "Authorization": f"Bearer {server.api_key}", "Content-Type": content_type})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def test_uploads_without_a_form_or_purpose_and_bad_creates_are_400s(server: FakeServer) -> None:
    assert upload_raw(server, b'{"purpose": "batch"}', "application/json")[0] == 400
    form = (b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
            b"Content-Type: application/jsonl\r\n\r\n{}\n\r\n--XX--\r\n")  # fmt: skip
    status, body = upload_raw(server, form, "multipart/form-data; boundary=XX")
    assert status == 400 and body["error"]["param"] == "purpose"
    api = client(server)
    with pytest.raises(openai.NotFoundError):
        api.batches.create(input_file_id="file-missing", endpoint=CHAT, completion_window="24h")
    uploaded = api.files.create(file=("in.jsonl", jsonl(chat_lines(1))), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        api.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/nope", completion_window="24h"  # type: ignore[arg-type]
        )
    with pytest.raises(openai.NotFoundError):
        api.batches.retrieve("batch_missing")
    assert server.stats.batches_created == 0
