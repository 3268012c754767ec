"""llmframe._client: every way one attempt can end becomes a Completion or one CallError.

Through the real ``openai`` client: over HTTP to the fake server for whatever it
can be made to do (hangs, refused connections, 401, 429, 400, 404, 5xx, garbage
bodies), and through an ``httpx`` mock *transport* for the bodies it never sends
(out of credit, 408/409/422, odd 200s), so that the SDK itself builds every
exception from a response, as it does in production. The API key must never
appear in an error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

import openai
import pytest

from llmframe._client import CallError, ChatClient, Completion, classify, json_bytes, request_body
from llmframe._retry import parse_retry_after
from llmframe.testing import FakeServer, Faults, expected_answer

try:
    import httpx2 as httpx  # the transport of openai >= 3
except ImportError:  # pragma: no cover - openai 1.x/2.x
    import httpx  # type: ignore[no-redef]

KEY = "sk-test-0123456789abcdef"
MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Hi"}]


def complete(client: ChatClient, messages: Any = MESSAGES, **kwargs: Any) -> Completion:
    """One attempt on a fresh event loop, the client closed after it."""

    async def go() -> Completion:
        try:
            return await client.complete(messages, model=MODEL, **kwargs)
        finally:
            await client.aclose()

    return asyncio.run(go())


def failure(client: ChatClient, messages: Any = MESSAGES, **kwargs: Any) -> CallError:
    with pytest.raises(CallError) as info:
        complete(client, messages, **kwargs)
    err = info.value
    assert KEY not in str(err) and KEY not in repr(err)
    return err


def outcome(err: CallError) -> tuple[str, bool, int | None, str | None]:
    """What the engine acts on: the kind, whether to retry, the status and the code."""
    return (err.kind, err.retryable, err.status, err.code)


def mocked(respond: Callable[[Any], Any], calls: list[Any] | None = None) -> ChatClient:
    """A ChatClient around a user's AsyncOpenAI whose HTTP goes to ``respond(request)``."""

    def handler(request: Any) -> Any:
        if calls is not None:
            calls.append(request)
        return respond(request)

    transport = httpx.MockTransport(handler)
    user_client = openai.AsyncOpenAI(
        api_key=KEY,
        base_url="http://endpoint.test/v1",
        http_client=httpx.AsyncClient(transport=transport),
    )
    return ChatClient(client=user_client)


def error_body(
    message: str, kind: str = "invalid_request_error", code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# -- over HTTP, against the fake server ---------------------------------------------


def test_an_answer_is_a_completion(fake_server: FakeServer) -> None:
    done = complete(ChatClient(base_url=fake_server.base_url, api_key=fake_server.api_key))
    assert done.content == expected_answer("Hi") and done.finish_reason == "stop"
    assert done.prompt_tokens == fake_server.stats.prompt_tokens > 0
    assert done.completion_tokens == fake_server.stats.completion_tokens > 0
    assert done.request_id is not None and done.request_id.startswith("req_")
    assert done.latency >= 0


def test_timeout(fake_server_factory: Callable[..., FakeServer]) -> None:
    server = fake_server_factory(faults=Faults(hang_rate=1.0))
    # The one wait in this file: a client timeout is real time, so it is 1 s against a 1 h hang
    # (shorter ones can expire before a loaded machine delivers the request).
    err = failure(ChatClient(base_url=server.base_url, api_key=KEY, timeout=1.0))
    assert (err.kind, err.retryable, err.status) == ("timeout", True, None)
    assert server.stats.hangs == 1  # it reached the server: a timeout, not a connection error


def test_connection_refused() -> None:
    server = FakeServer().start()
    base_url = server.base_url
    server.stop()  # nothing listens on that port any more
    err = failure(ChatClient(base_url=base_url, api_key=KEY))
    assert (err.kind, err.retryable, err.status, err.code) == ("connection", True, None, "unreachable")
    assert err.message.startswith(f"could not connect to the endpoint {base_url}/ (connection refused")


def test_wrong_key_is_auth_and_final(fake_server_factory: Callable[..., FakeServer]) -> None:
    server = fake_server_factory(api_keys=["the-right-key-42"])
    err = failure(ChatClient(base_url=server.base_url, api_key=KEY))
    assert outcome(err) == ("auth", False, 401, "invalid_api_key")
    assert "api_key=" in err.message and "OPENAI_API_KEY" in err.message
    assert server.stats.unauthorized == 1


def test_rate_limited_carries_the_servers_retry_after(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory(rpm=1)  # the bucket holds one request; the next waits ~60 s
    client = ChatClient(base_url=server.base_url, api_key=KEY)

    async def two() -> CallError:
        try:
            await client.complete(MESSAGES, model=MODEL)
            with pytest.raises(CallError) as info:
                await client.complete(MESSAGES, model=MODEL)
            return info.value
        finally:
            await client.aclose()

    err = asyncio.run(two())
    assert outcome(err) == ("rate_limit", True, 429, "rate_limit_exceeded")
    assert "retry-after-ms" in err.headers and "x-ratelimit-limit-requests" in err.headers
    assert err.retry_after == parse_retry_after(err.headers)
    assert err.retry_after is not None and 1 < err.retry_after <= 60
    assert server.stats.rate_limited == 1


def test_context_length_exceeded_is_too_large(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory(model_context=50)
    long_row = [{"role": "user", "content": "word " * 200}]
    err = failure(ChatClient(base_url=server.base_url, api_key=KEY), long_row)
    assert outcome(err) == ("too_large", False, 400, "context_length_exceeded")
    assert (
        "maximum context length is 50 tokens" in err.message and "shorten this row" in err.message
    )


def test_rejected_parameter_is_bad_request(fake_server_factory: Callable[..., FakeServer]) -> None:
    server = fake_server_factory(json_schema=False)
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    err = failure(ChatClient(base_url=server.base_url, api_key=KEY), response_format=schema)
    assert (err.kind, err.retryable, err.status) == ("bad_request", False, 400)
    assert err.message.startswith("HTTP 400: ") and "response_format" in err.message
    assert err.retry_after is None


def test_wrong_path_stops_the_run(fake_server: FakeServer) -> None:
    err = failure(ChatClient(base_url=fake_server.base_url + "/nowhere", api_key=KEY))
    # Every request would get the same 404: a systemic failure, not a row's.
    assert (err.kind, err.retryable, err.status, err.fatal) == ("endpoint", False, 404, True)
    assert "Invalid URL" in err.message and "check model= and base_url=" in err.message


def test_server_error_is_retryable(fake_server_factory: Callable[..., FakeServer]) -> None:
    server = fake_server_factory(faults=Faults(error_rate=1.0))
    err = failure(ChatClient(base_url=server.base_url, api_key=KEY))
    assert (err.kind, err.retryable) == ("server", True)
    assert err.status in (500, 502, 503) and err.message.startswith(f"HTTP {err.status}: ")
    assert err.retry_after is None  # the fake's 5xx carry no retry-after
    assert server.stats.requests == 1  # the SDK did not retry on its own


def test_garbage_body_is_a_retryable_server_error(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory(faults=Faults(garbage_rate=1.0))
    err = failure(ChatClient(base_url=server.base_url, api_key=KEY))
    assert (err.kind, err.retryable, err.status) == ("server", True, None)
    assert err.message.startswith("unreadable response body")
    assert server.stats.garbage == 1


def test_key_echoed_by_the_server_is_redacted(fake_server: FakeServer) -> None:
    # The fake echoes an invalid max_tokens in its 400, as real servers echo bad values.
    err = failure(
        ChatClient(base_url=fake_server.base_url, api_key=KEY), params={"max_tokens": KEY}
    )
    assert (err.kind, err.status) == ("bad_request", 400)
    assert "max_tokens" in err.message and "sk-***" in err.message


# -- through a mock transport: statuses and bodies the fake never sends -------------------


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "retryable", "retry_after"),
    [
        # Out of credit looks like a rate limit, but waiting will not help.
        (429, error_body("You exceeded your current quota", "insufficient_quota", "insufficient_quota"),
         {"retry-after": "1"}, "auth", False, None),
        (429, error_body("Rate limit reached", "requests", "rate_limit_exceeded"),
         {"retry-after-ms": "1500", "retry-after": "2"}, "rate_limit", True, 1.5),
        (429, error_body("Rate limit reached", "tokens", "rate_limit_exceeded"), {}, "rate_limit", True, None),
        (503, error_body("overloaded", "server_error"), {"retry-after": "2"}, "server", True, 2.0),
        (500, error_body("boom", "server_error"), {"retry-after": "soon"}, "server", True, None),
        (502, "<html>Bad Gateway</html>", {}, "server", True, None),
        (408, error_body("timed out"), {}, "server", True, None),
        (409, error_body("conflict"), {}, "server", True, None),
        (400, error_body("too long", code="context_length_exceeded"), {}, "too_large", False, None),
        # Not retryable: no retry_after, even when the server sends one.
        (400, error_body("Unrecognized request argument supplied: seed"), {"retry-after": "5"},
         "bad_request", False, None),
        (403, error_body("Project does not have access", code="model_not_found"), {}, "auth", False, None),
        (404, error_body("The model `nope` does not exist", code="model_not_found"), {}, "endpoint", False, None),
        (422, {"detail": [{"loc": ["body", "messages"], "msg": "field required"}]}, {}, "bad_request", False, None),
        (401, error_body("Incorrect API key provided", code="invalid_api_key"), {}, "auth", False, None),
    ],
)  # fmt: skip
def test_status_classification(
    status: int,
    body: Any,
    headers: Mapping[str, str],
    kind: str,
    retryable: bool,
    retry_after: float | None,
) -> None:
    def respond(request: Any) -> Any:
        if isinstance(body, str):
            return httpx.Response(
                status, text=body, headers={"content-type": "text/html", **headers}
            )
        return httpx.Response(status, json=body, headers=headers)

    calls: list[Any] = []
    err = failure(mocked(respond, calls))
    assert (err.kind, err.retryable, err.status, err.retry_after) == (
        kind,
        retryable,
        status,
        retry_after,
    )
    assert err.message.startswith("HTTP ") or err.kind == "auth"
    assert dict(err.headers).items() >= {k.lower(): v for k, v in headers.items()}.items()
    # The user's client allows 2 SDK retries; the copy llmframe uses allows none.
    assert len(calls) == 1


def test_error_code_and_message_come_from_the_body() -> None:
    body = error_body("Invalid value for 'temperature'", code="invalid_value")
    err = failure(mocked(lambda r: httpx.Response(400, json=body)))
    assert err.code == "invalid_value"
    assert err.message == "HTTP 400: Invalid value for 'temperature'"
    # No code: the error's type stands in; no JSON at all: the status alone.
    err = failure(mocked(lambda r: httpx.Response(404, json=error_body("no such path"))))
    assert err.code == "invalid_request_error"
    err = failure(mocked(lambda r: httpx.Response(404, text="Not Found")))
    assert (err.code, err.message) == (None, "HTTP 404: Error code: 404 (check model= and base_url=)")


@pytest.mark.parametrize("status", [400, 403, 404, 422, 429, 500, 503])
@pytest.mark.parametrize("where", ["error.message", "message"])
def test_key_never_in_an_error(status: int, where: str) -> None:
    text = f"Invalid request: key {KEY} is not allowed here (again: {KEY})"
    body = error_body(text) if where == "error.message" else {"message": text}
    err = failure(mocked(lambda r: httpx.Response(status, json=body)))
    assert "sk-***" in err.message  # the rest of the message stays readable


@pytest.mark.parametrize(
    "respond",
    [
        lambda r: httpx.Response(200, json={"id": "x", "object": "chat.completion", "choices": []}),
        lambda r: httpx.Response(200, json=[1, 2]),
        lambda r: httpx.Response(200, json="hello"),
        lambda r: httpx.Response(200, text="<html>oops</html>", headers={"content-type": "text/html"}),
        lambda r: httpx.Response(200, content=b'{"id": "chatcmpl-', headers={"content-type": "application/json"}),
        lambda r: httpx.Response(200, content=b"", headers={"content-type": "application/json"}),
        lambda r: httpx.Response(200, json={"choices": ["nope"]}),
        lambda r: httpx.Response(200, json={"choices": [None]}),
        lambda r: httpx.Response(200, json={"choices": [{"message": "hi", "finish_reason": "stop"}]}),
        lambda r: httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}], "usage": "lots"}),
        lambda r: httpx.Response(200, json={"choices": [{"message": {"content": 5}}]}),
    ],
    ids=["no choices", "a list", "a string", "html", "cut JSON", "empty", "choice is text",
         "choice is null", "message is text", "usage is text", "content is a number"],
)  # fmt: skip
def test_unreadable_200_is_a_retryable_server_error(respond: Callable[[Any], Any]) -> None:
    err = failure(mocked(respond))
    assert (err.kind, err.retryable, err.status) == ("server", True, None)


def test_classify_raises_what_it_does_not_know() -> None:
    bug = RuntimeError("a bug, not an HTTP outcome")
    with pytest.raises(RuntimeError) as info:
        classify(bug, api_key=KEY)
    assert info.value is bug


# -- which key and endpoint a client uses ------------------------------------------------


def test_key_and_base_url_from_arguments_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (
        ChatClient(base_url="http://local.test/v1").api_key == "not-needed"
    )  # keyless local servers
    monkeypatch.setenv("OPENAI_API_KEY", "env-key-123456")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://from-env.test/v1")
    from_env = ChatClient()
    assert (from_env.api_key, from_env.base_url) == ("env-key-123456", "http://from-env.test/v1/")
    given = ChatClient(api_key=KEY, base_url="http://given.test/v1")
    assert (given.api_key, given.base_url) == (KEY, "http://given.test/v1/")
    assert mocked(lambda r: httpx.Response(200)).api_key == KEY  # a client= passed in: its key


def test_env_key_is_redacted_too(monkeypatch: pytest.MonkeyPatch, fake_server: FakeServer) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    err = failure(ChatClient(base_url=fake_server.base_url), params={"max_tokens": KEY})
    assert "sk-***" in err.message


def test_messages_and_format_reach_the_server_as_given() -> None:
    seen: list[Any] = []

    def respond(request: Any) -> Any:
        seen.append(json.loads(request.content))
        reply = {"role": "assistant", "content": "fine"}
        return httpx.Response(200, json={
            "id": "c1", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "message": reply, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8},
        }, headers={"x-request-id": "req_abc"})  # fmt: skip

    done = complete(mocked(respond), params={"temperature": 0, "extra_body": {"seed": 3}},
                    response_format={"type": "json_object"})  # fmt: skip
    assert (done.content, done.prompt_tokens, done.completion_tokens, done.request_id) == (
        "fine",
        7,
        1,
        "req_abc",
    )
    [body] = seen
    assert body["messages"] == MESSAGES and body["model"] == MODEL
    assert body["temperature"] == 0 and body["seed"] == 3
    assert body["response_format"] == {"type": "json_object"}


def test_the_request_is_the_one_the_sdk_would_send_from_the_body() -> None:
    """The body goes encoded (``content=``): the same bytes and headers as the SDK's own
    ``body=`` encoding, non-ASCII text as UTF-8 included."""
    calls: list[Any] = []

    def respond(request: Any) -> Any:
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]})

    messages = [{"role": "system", "content": "Réponds «oui» 🙂"}, {"role": "user", "content": 'a "b"\n\tc'}]
    params = {"temperature": 0.5, "max_tokens": 7, "extra_body": {"seed": 3}}
    fmt = {"type": "json_schema", "json_schema": {"name": "answers", "strict": True}}
    client = mocked(respond, calls)
    complete(client, messages, params=params, response_format=fmt)

    async def the_sdk_itself() -> None:
        sdk = mocked(respond, calls)._client
        try:
            await sdk.post("/chat/completions", cast_to=httpx.Response,
                           body=request_body(messages, model=MODEL, params=params, response_format=fmt))  # fmt: skip
        finally:
            await sdk.close()

    asyncio.run(the_sdk_itself())
    ours, theirs = calls
    assert ours.content == theirs.content == json_bytes(request_body(messages, model=MODEL, params=params,
                                                                     response_format=fmt))  # fmt: skip
    assert json.loads(ours.content)["messages"] == messages
    assert ours.headers["content-type"] == theirs.headers["content-type"] == "application/json"
    assert ours.headers["content-length"] == str(len(ours.content))
    assert ours.url == theirs.url and ours.method == theirs.method == "POST"


def test_runs_share_one_tls_context_per_certificate_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the root certificates takes ~0.2 s: each run's client reuses the process's
    context, and a changed SSL_CERT_FILE gets its own."""
    import ssl

    import httpx2

    from llmframe._client import _tls_context

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    first = _tls_context(httpx2)
    assert isinstance(first, ssl.SSLContext) and first.verify_mode == ssl.CERT_REQUIRED
    assert _tls_context(httpx2) is first
    import certifi

    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    assert _tls_context(httpx2) is not first
