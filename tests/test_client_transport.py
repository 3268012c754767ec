"""llmframe._client's HTTP transport: aiohttp's under the SDK by default, httpx's on request.

Every way an attempt can fail at the connection ends the same on both transports
(aiohttp's reports connection failures as timeouts to the SDK: they must still be
connection errors here), over real sockets through the real ``openai`` client.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llmframe._client import HTTP_ENV, CallError, ChatClient, Completion
from llmframe._errors import ConfigError
from llmframe.testing import FakeServer, Faults, expected_answer

KEY = "sk-test-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(params=["aiohttp", "httpx"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(HTTP_ENV, request.param)
    return str(request.param)


def attempt(client: ChatClient) -> Completion:
    async def go() -> Completion:
        try:
            return await client.complete(MESSAGES, model="gpt-4o-mini")
        finally:
            await client.aclose()

    return asyncio.run(go())


def failure(client: ChatClient) -> CallError:
    with pytest.raises(CallError) as info:
        attempt(client)
    assert KEY not in str(info.value) and KEY not in repr(info.value)
    return info.value


def transport_name(client: ChatClient) -> str:
    return type(client._client._client._transport).__name__  # the SDK's httpx client's transport


@pytest.fixture
def closing_server() -> Iterator[tuple[str, list[int]]]:
    """A TCP server that reads each request and closes the connection without a byte back."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    served: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:  # the timeout: look at stop again
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                served.append(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1", served
    stop.set()
    thread.join(5)
    listener.close()


def test_aiohttp_is_the_default_and_httpx_can_be_asked_for(
    fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(HTTP_ENV, raising=False)
    client = ChatClient(base_url=fake_server.base_url, api_key=KEY)
    assert transport_name(client) == "AiohttpTransport"
    assert attempt(client).content == expected_answer("Hi")
    monkeypatch.setenv(HTTP_ENV, "httpx")
    assert transport_name(ChatClient(base_url=fake_server.base_url, api_key=KEY)) == "AsyncHTTPTransport"
    monkeypatch.setenv(HTTP_ENV, "curl")
    with pytest.raises(ConfigError, match=f"{HTTP_ENV} must be 'aiohttp' or 'httpx', not 'curl'"):
        ChatClient(base_url=fake_server.base_url, api_key=KEY)


def test_an_answer_is_the_same_on_both(transport: str, fake_server: FakeServer) -> None:
    done = attempt(ChatClient(base_url=fake_server.base_url, api_key=fake_server.api_key))
    assert (done.content, done.finish_reason) == (expected_answer("Hi"), "stop")
    assert done.prompt_tokens == fake_server.stats.prompt_tokens > 0
    assert done.request_id is not None and done.request_id.startswith("req_")
    assert done.headers.get("x-request-id") == done.request_id


def test_a_refused_connection_is_unreachable_not_a_timeout(transport: str) -> None:
    server = FakeServer().start()
    base_url = server.base_url
    server.stop()
    err = failure(ChatClient(base_url=base_url, api_key=KEY))
    assert (err.kind, err.retryable, err.code) == ("connection", True, "unreachable")
    assert "connection refused" in err.message


def test_a_host_that_does_not_resolve_is_unreachable(transport: str) -> None:
    err = failure(ChatClient(base_url="http://no-such-host.invalid/v1", api_key=KEY))
    assert (err.kind, err.code) == ("connection", "unreachable")
    assert "does not resolve" in err.message


def test_tls_to_a_plain_http_server_could_not_be_opened(transport: str, fake_server: FakeServer) -> None:
    err = failure(ChatClient(base_url=fake_server.base_url.replace("http://", "https://"), api_key=KEY))
    assert (err.kind, err.code) == ("connection", "unreachable")
    assert "could not be opened" in err.message
    assert fake_server.stats.requests == 0


def test_a_server_closing_the_connection_is_a_connection_error(
    transport: str, closing_server: tuple[str, list[int]]
) -> None:
    url, served = closing_server
    err = failure(ChatClient(base_url=url, api_key=KEY, timeout=30))
    assert (err.kind, err.retryable, err.code) == ("connection", True, None)  # retried: it may pass next time
    assert err.message.startswith("could not reach the endpoint")
    assert served  # the request reached the server


def test_a_hang_is_a_timeout(transport: str, fake_server_factory: Callable[..., FakeServer]) -> None:
    server = fake_server_factory(faults=Faults(hang_rate=1.0))
    err = failure(ChatClient(base_url=server.base_url, api_key=KEY, timeout=1.0))
    assert (err.kind, err.retryable, err.status) == ("timeout", True, None)
    assert server.stats.hangs == 1


def test_a_users_client_keeps_its_own_transport(fake_server: FakeServer, monkeypatch: Any) -> None:
    import openai

    monkeypatch.delenv(HTTP_ENV, raising=False)
    mine = openai.AsyncOpenAI(api_key=KEY, base_url=fake_server.base_url, http_client=openai.DefaultAsyncHttpxClient())
    client = ChatClient(client=mine)
    assert transport_name(client) == "AsyncHTTPTransport"
    assert attempt(client).content == expected_answer("Hi")
