"""One chat completion through the ``openai`` SDK, with the SDK's own retries off.

Every attempt must pass llmframe's shared limiter, so the SDK may not retry on
its own (``max_retries=0``). This module turns each outcome into either a
:class:`Completion` or a :class:`CallError` that says whether to retry, and it
never puts the API key into an error message.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai

try:
    import httpx2 as httpx  # the transport of openai >= 3
except ImportError:  # pragma: no cover - openai 1.x/2.x
    import httpx  # type: ignore[no-redef]

from ._capabilities import is_context_overflow
from ._errors import ConfigError
from ._headers import parse_retry_after
from ._retry import is_retryable_status

__all__ = [
    "PLACEHOLDER_KEY", "UNREACHABLE", "CallError", "ChatClient", "Completion", "credentials", "json_bytes",
    "read_completion", "request_body",
]  # fmt: skip

# Where the user gives no key, local servers (vLLM, llama.cpp, Ollama) accept any.
PLACEHOLDER_KEY = "not-needed"


@dataclass
class Completion:
    content: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    request_id: str | None
    headers: Mapping[str, str]
    latency: float


@dataclass
class CallError(Exception):
    """A failed attempt. ``kind`` is an ``ErrorKind``; ``retryable`` says whether to try again."""

    kind: str
    message: str
    retryable: bool
    status: int | None = None
    code: str | None = None
    retry_after: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    param: str | None = None  # the parameter the endpoint named, if it named one
    fatal: bool = False  # every request would fail the same way: stop the run

    def __str__(self) -> str:
        return self.message


def _redact(text: str, secret: str | None) -> str:
    if secret and len(secret) >= 6:
        text = text.replace(secret, "sk-***")
    return text


def _error_code(exc: openai.APIStatusError) -> str | None:
    body = exc.body
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping):
            code = err.get("code") or err.get("type")
            return str(code) if code else None
    return None


def _error_param(exc: openai.APIStatusError) -> str | None:
    body = exc.body
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping) and isinstance(err.get("param"), str):
            return str(err["param"])
    return None


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping) and err.get("message"):
            return str(err["message"])
    return str(exc.message)


#: ``CallError.code`` of a connection that could not be opened at all: nothing listens
#: there (refused), the host name does not resolve, or no route leads to it.
UNREACHABLE = "unreachable"
_NO_ROUTE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH})


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes (or contexts), each once."""
    seen: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and all(cause is not s for s in seen):
        seen.append(cause)
        cause = cause.__cause__ or cause.__context__
    return seen


def _unreachable(exc: BaseException) -> str | None:
    """Why no connection could be opened, when that is what ``exc`` says (``None`` for a
    connection that broke after it was open, which a retry may well get past)."""
    connect = False
    for cause in _chain(exc):
        if isinstance(cause, socket.gaierror):
            return "the host name does not resolve"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused: nothing listens there"
        if isinstance(cause, OSError) and cause.errno in _NO_ROUTE:
            return "no route to the host"
        # httpx's ConnectError, aiohttp's ClientConnectorError (a TLS failure among them): opening failed
        connect = connect or type(cause).__name__ == "ConnectError" or _is_aiohttp(cause, "ClientConnectorError")
    return "the connection could not be opened" if connect else None


def _is_aiohttp(exc: BaseException, name: str) -> bool:
    """Whether ``exc`` is an instance of aiohttp's exception ``name`` (no import: unless
    aiohttp is loaded, nothing raised came from it)."""
    aiohttp = sys.modules.get("aiohttp")
    kind = getattr(aiohttp, name, None)
    return isinstance(kind, type) and isinstance(exc, kind)


def _timed_out(exc: openai.APITimeoutError) -> bool:
    """Whether a timeout error from the SDK is one: aiohttp's transport reports every
    connection failure it does not know (the server closing a kept-alive connection, a
    reset) as a connect timeout, and those are connection errors."""
    broken = [c for c in _chain(exc) if _is_aiohttp(c, "ClientError")]
    return not broken or any(_is_aiohttp(c, "ServerTimeoutError") for c in broken)


def _shown(url: str) -> str:
    """``url`` without credentials or a query, which may carry secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return urlunsplit((parts.scheme, host if parts.port is None else f"{host}:{parts.port}", parts.path, "", ""))


def classify(exc: BaseException, *, api_key: str | None = None, base_url: str = "") -> CallError:
    """Map an SDK exception to a :class:`CallError`."""
    if isinstance(exc, openai.APIConnectionError):  # timeouts among them
        where = f" {_shown(base_url)}" if base_url else ""
        why = _unreachable(exc)
        if why is None and isinstance(exc, openai.APITimeoutError) and _timed_out(exc):
            return CallError("timeout", "no answer within the timeout", True)
        if why is not None:
            return CallError("connection", f"could not connect to the endpoint{where} ({why}); check base_url= "
                             "and that the server is running", True, code=UNREACHABLE)  # fmt: skip
        broke = next((c for c in _chain(exc) if _is_aiohttp(c, "ClientError")), exc.__cause__ or exc)
        return CallError("connection", f"could not reach the endpoint{where} ({type(broke).__name__})", True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        headers = dict(exc.response.headers) if exc.response is not None else {}
        code = _error_code(exc)
        detail = _redact(_error_message(exc), api_key)
        message = f"HTTP {status}: {detail}"
        param = _error_param(exc)
        if status == 401:
            return CallError(
                "auth",
                "the endpoint refused the API key (HTTP 401); check api_key= or OPENAI_API_KEY",
                False, status, code, headers=headers, fatal=True,
            )  # fmt: skip
        if status == 403:
            return CallError(
                "auth", message + " (access refused: check the key's project and model access)",
                False, status, code, headers=headers, fatal=True,
            )  # fmt: skip
        if status == 404:
            # An unknown model or a wrong base_url: every request gets the same answer.
            return CallError(
                "endpoint", message + " (check model= and base_url=)",
                False, status, code, headers=headers, param=param, fatal=True,
            )  # fmt: skip
        if status == 429 and code == "insufficient_quota":
            return CallError(
                "auth", message + " (out of credit: retrying will not help)",
                False, status, code, headers=headers, fatal=True,
            )  # fmt: skip
        if code == "context_length_exceeded" or is_context_overflow(status, detail):
            hint = " (shorten this row, lower max_tokens, or use a model with a larger context window)"
            return CallError("too_large", message + hint, False, status, code, headers=headers, param=param)
        if is_retryable_status(status):
            kind = "rate_limit" if status == 429 else "server"
            return CallError(kind, message, True, status, code, parse_retry_after(headers), headers, param)
        return CallError("bad_request", message, False, status, code, headers=headers, param=param)
    if isinstance(exc, (ValueError, openai.APIResponseValidationError)):
        # A 200 with a body that is not a chat completion: a flaky proxy or server.
        return CallError("server", f"unreadable response body ({type(exc).__name__})", True)
    raise exc


#: ``LLMFRAME_HTTP``: the HTTP transport under the SDK, ``aiohttp`` (the default where the
#: SDK ships it) or ``httpx`` (the SDK's own default).
HTTP_ENV = "LLMFRAME_HTTP"


def _http_client(max_connections: int) -> Any:
    """The SDK's HTTP client on aiohttp's transport (``openai.DefaultAioHttpClient``), with a
    keep-alive pool as large as the concurrency (the default keeps 100 alive, so a run with
    more requests in flight would keep opening new connections) and the process's TLS
    context (:func:`_tls_context`).

    aiohttp parses HTTP in C: 1.3-2.0 ms less client CPU a request than httpx's
    pure-Python stack (h11, httpcore's pool, anyio), measured by ``benchmarks/throughput.py``
    with ``LLMFRAME_HTTP=httpx`` against the default. The SDK's httpx client is used where aiohttp's is not
    available (an SDK without it) or ``LLMFRAME_HTTP=httpx`` asks for it."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    choice = os.environ.get(HTTP_ENV, "aiohttp").strip().lower() or "aiohttp"
    if choice not in ("aiohttp", "httpx"):
        raise ConfigError(f"{HTTP_ENV} must be 'aiohttp' or 'httpx', not {choice!r}")
    aio = getattr(openai, "DefaultAioHttpClient", None) if choice == "aiohttp" else None
    if aio is not None:
        try:
            return aio(limits=limits, verify=_tls_context(httpx))
        except (ImportError, RuntimeError):  # the SDK's aiohttp extra is missing
            pass
    return openai.DefaultAsyncHttpxClient(limits=limits, verify=_tls_context(httpx))


_tls_contexts: dict[tuple[str | None, str | None], Any] = {}
_tls_lock = threading.Lock()


def _tls_context(httpx: Any) -> Any:
    """One TLS context per process, as the HTTP client would build it (certifi's roots, or
    ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``): loading the roots takes ~0.2 s, which every run
    paid before its first request, since each run builds its own client. A context is
    safe to share between connections and threads."""
    where = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    with _tls_lock:
        ctx = _tls_contexts.get(where)
        if ctx is None:
            ctx = _tls_contexts[where] = httpx.create_ssl_context()
        return ctx


def credentials(base_url: str | None, api_key: str | None) -> tuple[str | None, str]:
    """The base URL (``None``: the SDK's default, OpenAI) and the key a call uses: as given,
    else ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``, else a placeholder key (local servers
    accept any)."""
    url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    return url, api_key or os.environ.get("OPENAI_API_KEY") or PLACEHOLDER_KEY


def request_body(
    messages: Sequence[Mapping[str, str]], *, model: str, params: Mapping[str, Any] | None = None,
    response_format: Mapping[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The JSON body of a chat completion: ``params`` (their ``extra_body`` merged in, as
    the SDK merges it), the model, the messages and the response format, as they are.

    The body goes to the SDK's generic ``post`` (its documented way to send any request),
    encoded by :func:`json_bytes`, not to ``chat.completions.create``: ``create`` walks
    every argument against its TypedDicts and ``parse`` builds pydantic models of the
    reply, ~1.3 ms of CPU per request between them (~35% of the SDK's cost), for values
    read once here."""
    body: dict[str, Any] = dict(params or {})
    body.update(body.pop("extra_body", None) or {})
    body["model"] = model
    body["messages"] = list(messages)
    if response_format is not None:
        body["response_format"] = response_format
    return body


def json_bytes(body: Mapping[str, Any]) -> bytes:
    """``body`` encoded as the SDK encodes a ``body=`` (compact, UTF-8, no NaN), for ``content=``,
    which it sends as it is: ~30 us less SDK work a packed request than ``body=``, for ~12 us here."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None


def read_completion(content: bytes, headers: Mapping[str, str], latency: float) -> Completion:
    """A chat completion read from its JSON body (one ``json.loads``, no models);
    :class:`CallError` ``server`` (retryable) for a body that is not one."""
    try:
        reply = json.loads(content)
    except ValueError:
        raise CallError("server", "unreadable response body (not JSON)", True) from None
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not choices or not isinstance(choices, list):
        raise CallError("server", "response has no choices", True)
    try:
        choice = choices[0]
        message = choice.get("message")
        text = message.get("content") if message is not None else None
        finish = choice.get("finish_reason")
        usage = reply.get("usage")
        prompt = usage.get("prompt_tokens") if usage is not None else None
        completion = usage.get("completion_tokens") if usage is not None else None
    except (AttributeError, LookupError, TypeError):
        text = finish = prompt = completion = 0  # not None: marks the body unreadable
    if not isinstance(text, (str, type(None))) or not isinstance(finish, (str, type(None))):
        # JSON, but not a chat completion: as unreadable as garbage.
        raise CallError("server", "unreadable response body (not a chat completion)", True)
    request_id = headers.get("x-request-id") or reply.get("id")
    return Completion(
        content=text, finish_reason=finish, prompt_tokens=_int_or_none(prompt),
        completion_tokens=_int_or_none(completion), request_id=request_id if isinstance(request_id, str) else None,
        headers=headers, latency=latency,
    )  # fmt: skip


class ChatClient:
    """Sends chat completions for one run, on the running event loop.

    Built per run, because an ``AsyncOpenAI`` holds connections bound to the
    event loop that first used it; a client the user passes in is reused as
    is (with SDK retries turned off on a copy).
    """

    __slots__ = ("_api_key", "_client", "_owned", "timeout")

    def __init__(
        self,
        *,
        client: openai.AsyncOpenAI | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_connections: int = 1000,
    ):
        self.timeout = timeout
        if client is not None:
            self._client = client.with_options(max_retries=0, timeout=timeout)
            self._api_key = getattr(client, "api_key", None)
            self._owned = False
        else:
            url, key = credentials(base_url, api_key)
            if key == PLACEHOLDER_KEY and (url is None or urlsplit(url).hostname == "api.openai.com"):
                raise ConfigError(
                    "no API key for OpenAI's endpoint: set OPENAI_API_KEY or pass api_key=; for a local "
                    "server (vLLM, llama.cpp, Ollama) pass base_url= (then no key is needed)"
                )
            self._api_key = key
            self._client = openai.AsyncOpenAI(
                api_key=key,
                base_url=url,
                max_retries=0,
                timeout=timeout,
                http_client=_http_client(max_connections),
            )
            self._owned = True

    @property
    def base_url(self) -> str:
        return str(self._client.base_url)

    @property
    def api_key(self) -> str | None:
        return self._api_key

    async def complete(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        model: str,
        params: Mapping[str, Any] | None = None,
        response_format: Mapping[str, Any] | None = None,
    ) -> Completion:
        """One attempt. Raises :class:`CallError`."""
        content = json_bytes(request_body(messages, model=model, params=params, response_format=response_format))
        start = time.monotonic()
        try:
            response = await self._client.post("/chat/completions", content=content, cast_to=httpx.Response)
        except Exception as exc:  # classify() re-raises what it does not know
            raise classify(exc, api_key=self._api_key, base_url=self.base_url) from None
        return read_completion(response.content, response.headers, time.monotonic() - start)

    async def aclose(self) -> None:
        if self._owned:
            await self._client.close()
