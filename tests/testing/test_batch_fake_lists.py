"""The fake server's Batch API lists and limits: files listed by purpose and page, batches'
``metadata`` checked and echoed, and an upload body larger than any other path takes."""

from __future__ import annotations

try:
    import httpx2 as httpx  # the transport of openai >= 3
except ImportError:  # pragma: no cover - openai 1.x/2.x
    import httpx  # type: ignore[no-redef]
import openai
import pytest

from llmframe.testing import FakeServer, _files

FAST = {"batch_seconds": 0.05, "batch_validate_seconds": 0.01}
LINE = b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[]}}\n'


def test_files_are_listed_newest_first_by_purpose_and_page() -> None:
    with FakeServer(**FAST) as server:
        api = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
        ids = [api.files.create(file=(f"in-{i}.jsonl", LINE), purpose="batch").id for i in range(5)]
        other = api.files.create(file=("notes.txt", b"x"), purpose="user_data").id
        first = api.files.list(purpose="batch", limit=2)
        assert [f.id for f in first.data] == ids[::-1][:2] and first.has_more is True
        rest = api.files.list(purpose="batch", limit=2, after=first.data[-1].id)
        assert [f.id for f in rest.data] == ids[::-1][2:4]
        assert [f.id for f in api.files.list(purpose="batch", order="asc").data] == ids
        assert [f.id for f in api.files.list().data] == [other, *ids[::-1]]
        assert api.files.list(purpose="batch").data[0].filename == "in-4.jsonl"


def test_a_batch_file_must_be_named_jsonl() -> None:
    with FakeServer(**FAST) as server:
        api = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
        with pytest.raises(openai.BadRequestError, match=r"Must be \.jsonl"):
            api.files.create(file=("in.txt", LINE), purpose="batch")
        assert server.stats.files_uploaded == 0


def test_batch_metadata_is_checked_and_echoed() -> None:
    with FakeServer(**FAST) as server:
        api = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
        file_id = api.files.create(file=("in.jsonl", LINE), purpose="batch").id
        create = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        for bad in ({str(i): "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}):
            with pytest.raises(openai.BadRequestError, match="metadata"):
                api.batches.create(**create, metadata=bad)  # type: ignore[arg-type]
        assert server.stats.batches_created == 0
        tags = {str(i): "v" * 512 for i in range(16)}
        batch = api.batches.create(**create, metadata=tags)  # type: ignore[arg-type]
        assert batch.metadata == tags and api.batches.retrieve(batch.id).metadata == tags
        assert api.batches.list().data[0].metadata == tags


def test_uploads_take_more_than_the_other_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    big = LINE * ((65 * 1024 * 1024) // len(LINE) + 1)  # past the 64 MiB other paths take
    with FakeServer(**FAST, batch_max_bytes=64 * 1024 * 1024) as server:
        api = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0, timeout=60)
        uploaded = api.files.create(file=("big.jsonl", big), purpose="batch")
        assert uploaded.bytes == len(big)
        batch = api.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                   completion_window="24h")  # fmt: skip
        failed = server.wait_batch(batch.id)
        assert failed["status"] == "failed" and failed["errors"]["data"][0]["code"] == "file_too_large"
        create = httpx.post(f"{server.base_url}/batches", content=big, timeout=60,
                            headers={"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"})  # fmt: skip
        assert create.status_code == 413  # the other paths keep their limit
        monkeypatch.setattr(_files, "MAX_UPLOAD_BYTES", 10_000)
        with pytest.raises(openai.APIStatusError, match="10,000 bytes") as caught:
            api.files.create(file=("b.jsonl", LINE * 200), purpose="batch")
        assert caught.value.status_code == 413
        assert server.stats.files_uploaded == 1
