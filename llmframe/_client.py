"""One chat completion through the ``openai`` SDK, with the SDK's own retries off.

Every attempt must pass llmframe's shared limiter, so the SDK may not retry on
its own (``max_retries=0``). This module turns each outcome into either a
:class:`Completion` or a :class:`CallError` that says whether to retry, and it
never puts the API key into an error message.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai

from ._capabilities import is_context_overflow
from ._errors import ConfigError
from ._headers import parse_retry_after
from ._retry import is_retryable_status

__all__ = ["PLACEHOLDER_KEY", "UNREACHABLE", "CallError", "ChatClient", "Completion", "credentials"]

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


def _unreachable(exc: BaseException) -> str | None:
    """Why no connection could be opened, when that is what ``exc`` says (``None`` for a
    connection that broke after it was open, which a retry may well get past)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    connect = False
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, socket.gaierror):
            return "the host name does not resolve"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused: nothing listens there"
        if isinstance(cause, OSError) and cause.errno in _NO_ROUTE:
            return "no route to the host"
        connect = connect or type(cause).__name__ == "ConnectError"  # httpx's: opening failed
        cause = cause.__cause__ or cause.__context__
    return "the connection could not be opened" if connect else None


def _shown(url: str) -> str:
    """``url`` without credentials or a query, which may carry secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return urlunsplit((parts.scheme, host if parts.port is None else f"{host}:{parts.port}", parts.path, "", ""))


def classify(exc: BaseException, *, api_key: str | None = None, base_url: str = "") -> CallError:
    """Map an SDK exception to a :class:`CallError`."""
    if isinstance(exc, openai.APITimeoutError):
        return CallError("timeout", "no answer within the timeout", True)
    if isinstance(exc, openai.APIConnectionError):
        where = f" {_shown(base_url)}" if base_url else ""
        why = _unreachable(exc)
        if why is not None:
            return CallError("connection", f"could not connect to the endpoint{where} ({why}); check base_url= "
                             "and that the server is running", True, code=UNREACHABLE)  # fmt: skip
        return CallError("connection", f"could not reach the endpoint{where} ({type(exc.__cause__ or exc).__name__})", True)
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


def _http_client(max_connections: int) -> Any:
    """The SDK's default HTTP client, with a keep-alive pool as large as the concurrency:
    the default keeps 100 alive, so a run with more requests in flight would keep
    opening new connections. Its TLS context is the process's (:func:`_tls_context`)."""
    try:
        import httpx2 as httpx  # the transport of openai >= 3
    except ImportError:  # pragma: no cover - openai 1.x/2.x
        import httpx  # type: ignore[no-redef]
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
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
        kwargs: dict[str, Any] = dict(params or {})
        # The messages and the response format travel in extra_body, which the SDK merges
        # into the JSON body as is. Passed as typed arguments, the SDK walks them key by key
        # against its TypedDicts: ~3 ms of CPU per request, which caps one core at a few
        # hundred requests/s, below what high-tier rate limits allow.
        extra = dict(kwargs.pop("extra_body", None) or {})
        extra["messages"] = list(messages)
        if response_format is not None:
            extra["response_format"] = response_format
        kwargs["extra_body"] = extra
        start = time.monotonic()
        try:
            raw = await self._client.chat.completions.with_raw_response.create(
                model=model, messages=[], **kwargs
            )
            completion = raw.parse()
        except Exception as exc:  # classify() re-raises what it does not know
            raise classify(exc, api_key=self._api_key, base_url=self.base_url) from None
        latency = time.monotonic() - start
        if not getattr(completion, "choices", None):
            raise CallError("server", "response has no choices", True)
        try:
            choice = completion.choices[0]
            usage = completion.usage
            done: Completion | None = Completion(
                content=choice.message.content if choice.message else None,
                finish_reason=choice.finish_reason,
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
                request_id=raw.headers.get("x-request-id") or getattr(completion, "id", None),
                headers=raw.headers,
                latency=latency,
            )
        except (AttributeError, LookupError, TypeError):
            done = None
        if done is None or not isinstance(done.content, (str, type(None))):
            # JSON, but not a chat completion (the SDK does not validate): as unreadable as garbage.
            raise CallError("server", "unreadable response body (not a chat completion)", True)
        return done

    async def aclose(self) -> None:
        if self._owned:
            await self._client.close()
