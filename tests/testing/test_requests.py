"""Rejections before any model work: pure on the request functions, then over real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import openai
import pytest
from _support import MODEL, ask, fails, run, settings
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from llmframe._packing import answers_schema
from llmframe.testing import FakeServer, expected_answer
from llmframe.testing._requests import (
    ChatRequest,
    EmbeddingsRequest,
    context_exceeded,
    parse_chat,
    parse_embeddings,
    unauthorized,
)


@pytest.fixture
def server(fake_server: FakeServer) -> FakeServer:
    return fake_server


# -------------------------------------------------------------------- pure code


def chat_body(**body: Any) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **body}).encode()


def error_of(response: Any) -> tuple[int, dict[str, Any]]:
    assert isinstance(response, web.Response), response
    assert isinstance(response.body, bytes)
    return response.status, json.loads(response.body)["error"]


def test_parse_chat_reads_model_messages_and_the_smaller_max_tokens() -> None:
    parsed = parse_chat(chat_body(max_tokens=50, max_completion_tokens=20), settings())
    assert parsed == ChatRequest(MODEL, [{"role": "user", "content": "Hi"}], 20)
    assert isinstance(parsed, ChatRequest)
    assert parse_chat(chat_body(), settings()).max_out is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("raw", "changes", "status", "param", "code"),
    [
        (b"{not json", {}, 400, None, None),
        (b"[1, 2]", {}, 400, None, None),
        (b'{"messages": [{"role": "user"}]}', {}, 400, "model", None),
        (chat_body(messages=[]), {}, 400, "messages", None),
        (chat_body(messages=[{"content": "no role"}]), {}, 400, "messages", None),
        (chat_body(stream=True), {}, 400, "stream", None),
        (chat_body(), {"models": ["gpt-4o"]}, 404, None, "model_not_found"),
        (chat_body(response_format={"type": "json_object"}), {"json_object": False}, 400, "response_format", None),
        (chat_body(seed=1), {"unsupported_params": ["seed"]}, 400, "seed", "unsupported_parameter"),
        (chat_body(max_tokens=0), {}, 400, "max_tokens", "integer_below_min_value"),
        (chat_body(max_completion_tokens=True), {}, 400, "max_completion_tokens", "integer_below_min_value"),
    ],
)
def test_parse_chat_rejections(
    raw: bytes, changes: dict[str, Any], status: int, param: str | None, code: str | None
) -> None:
    got_status, error = error_of(parse_chat(raw, settings(**changes)))
    assert (got_status, error["param"], error["code"]) == (status, param, code)
    assert error["type"] == "invalid_request_error" and error["message"]


def test_llama_cpp_rejects_a_format_with_a_500_and_no_param() -> None:
    raw = chat_body(response_format={"type": "json_schema", "json_schema": {}})
    status, error = error_of(parse_chat(raw, settings(json_schema=False, rejects_like="llama.cpp")))
    assert status == 500 and error["param"] is None
    assert "Input should be 'text' or 'json_object'" in error["message"]


@pytest.mark.parametrize(
    ("header", "shown"),
    [(None, "You didn't provide an API key"), ("Bearer sk-wrong-key-1234", "sk-**********1234"), ("Bearer abc", "***")],
)
def test_unauthorized_masks_the_key(header: str | None, shown: str) -> None:
    headers = {"Authorization": header} if header else {}
    request = make_mocked_request("POST", "/v1/chat/completions", headers=headers)
    status, error = error_of(unauthorized(request, ("sk-right",)))
    assert status == 401 and error["code"] == "invalid_api_key" and shown in error["message"]
    assert unauthorized(request, None) is None
    right = make_mocked_request("POST", "/", headers={"Authorization": "Bearer sk-right"})
    assert unauthorized(right, ("sk-right",)) is None


def test_context_exceeded_says_what_was_asked() -> None:
    _, error = error_of(context_exceeded(50, 40, 20))
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "you requested 60 tokens (40 in the messages, 20 in the completion)" in error["message"]
    _, error = error_of(context_exceeded(50, 70, None))
    assert "your messages resulted in 70 tokens" in error["message"]


def test_parse_embeddings() -> None:
    body = {"model": "text-embedding-3-large", "input": ["a", [1, 2]], "encoding_format": "base64"}
    parsed = parse_embeddings(json.dumps(body).encode())
    assert parsed == EmbeddingsRequest("text-embedding-3-large", ["a", [1, 2]], 3072, True)
    assert parse_embeddings(b'{"model": "m", "input": [5, 6]}') == EmbeddingsRequest("m", [[5, 6]], 1536, False)
    for bad, param in [
        (b"nope", None),
        (b'{"input": "a"}', "model"),
        (b'{"model": "m", "input": []}', "input"),
        (b'{"model": "m", "input": [1.5]}', "input"),
        (b'{"model": "m", "input": "a", "dimensions": 9000}', "dimensions"),
    ]:
        status, error = error_of(parse_embeddings(bad))
        assert (status, error["param"]) == (400, param)


# ------------------------------------------------------------------- over HTTP


def test_prompt_beyond_the_context_window_is_a_400(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory(model_context=50)
    error = fails(server, openai.BadRequestError, content="word " * 100)
    assert error.code == "context_length_exceeded"
    assert "maximum context length is 50 tokens" in error.message
    assert server.stats.bad_requests == 1 and server.stats.ok == 0


@pytest.mark.parametrize("kind", ["json_schema", "json_object"])
def test_unsupported_response_format_is_a_400(
    fake_server_factory: Callable[..., FakeServer], kind: str
) -> None:
    server = fake_server_factory(**{kind: False})
    response_format = answers_schema(1) if kind == "json_schema" else {"type": "json_object"}
    error = fails(server, openai.BadRequestError, response_format=response_format)
    assert "response_format" in error.message
    assert error.param == "response_format"
    other = {"type": "json_object"} if kind == "json_schema" else answers_schema(1)
    assert ask(server, response_format=other).choices[0].message.content


def test_malformed_requests_are_400s_and_unknown_paths_404s(server: FakeServer) -> None:
    async def post(path: str, data: bytes) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                server.base_url + path, data=data, headers={"content-type": "application/json"}
            ) as response,
        ):
            return response.status, await response.json()

    status, body = asyncio.run(post("/chat/completions", b"{not json"))
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = asyncio.run(post("/chat/completions", b'{"model": "m", "messages": []}'))
    assert status == 400 and body["error"]["param"] == "messages"
    status, body = asyncio.run(post("/completions", b"{}"))
    assert status == 404 and "chat/completions" in body["error"]["message"]
    assert server.stats.bad_requests == 2


def test_api_keys_are_checked(fake_server_factory: Callable[..., FakeServer]) -> None:
    server = fake_server_factory(api_keys=["sk-right-key", "sk-other"])
    assert server.api_key == "sk-right-key"
    assert ask(server, "ok").choices[0].message.content == expected_answer("ok")
    with pytest.raises(openai.AuthenticationError) as caught:
        run(
            lambda c: c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}]
            ),
            server,
            api_key="sk-wrong-key",
        )
    assert caught.value.code == "invalid_api_key"
    assert "sk-wrong-key" not in caught.value.message  # masked, as OpenAI does
    assert server.stats.unauthorized == 1 and server.stats.ok == 1
