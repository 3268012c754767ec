"""Finding a batch by the token in its metadata, and a file by its name, page by page, back to
when the token was written down: what lets a new process take over a batch whose id a kill
kept from being written, instead of creating (and paying for) it again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import pytest
from _scripted import Answer, Scripted, scripted_client

from llmframe import _batch_client
from llmframe._batch_client import TOKEN_KEY, BatchClient
from llmframe.testing import FakeServer

LINE = b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[]}}\n'
FAST = {"batch_seconds": 0.05, "batch_validate_seconds": 0.01}


async def no_sleep(seconds: float) -> None:
    pass


def look(server: FakeServer, find: Any, script: dict[tuple[str, str], list[Answer]] | None = None) -> Any:
    """``await find(client)`` with a BatchClient for ``server`` (over a scripted transport)."""
    transport = Scripted(script or {})

    async def main() -> Any:
        client = BatchClient(client=scripted_client(server, transport), sleep=no_sleep)
        return await find(client), transport

    return asyncio.run(main())


def test_a_batch_is_found_by_its_token_pages_back(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer(**FAST) as server:
        api = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
        file_id = api.files.create(file=("in.jsonl", LINE), purpose="batch").id
        made = [api.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
                                   metadata={TOKEN_KEY: f"t{i}"}) for i in range(130)]  # fmt: skip
        since = int(time.time())
        found, transport = look(server, lambda c: c.find_batch("t5", since))
        assert found is not None and found.id == made[5].id
        assert transport.count("GET", "/v1/batches") == 2  # 100 newest, then the next page
        missing, _ = look(server, lambda c: c.find_batch("t-none", since))
        assert missing is None
        # Batches older than the token (less the clock margin) are not read.
        monkeypatch.setattr(_batch_client, "LOOKBACK", 0)
        older, transport = look(server, lambda c: c.find_batch("t5", since + 3600))
        assert older is None and transport.count("GET", "/v1/batches") == 1


def test_a_file_is_found_by_its_name() -> None:
    with FakeServer(**FAST) as server:
        api = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
        wanted = api.files.create(file=("job-1-abc.jsonl", LINE), purpose="batch").id
        for i in range(3):
            api.files.create(file=(f"other-{i}.jsonl", LINE), purpose="batch")
        found, _ = look(server, lambda c: c.find_file("job-1-abc.jsonl", int(time.time())))
        missing, _ = look(server, lambda c: c.find_file("job-1-xyz.jsonl", int(time.time())))
    assert found == wanted and missing is None


def test_an_endpoint_that_cannot_list_is_warned_of_and_not_a_failure() -> None:
    with FakeServer(**FAST) as server, pytest.warns(UserWarning, match="cannot be listed.*sent again"):
        found, _ = look(server, lambda c: c.find_batch("t", int(time.time())),
                        {("GET", "/v1/batches"): [Answer(404, "Not Found")]})  # fmt: skip
    assert found is None
