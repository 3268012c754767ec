"""A fake OpenAI-compatible HTTP server on loopback, for tests, demos and benchmarks.

:class:`FakeServer` runs an aiohttp application on its own event loop in a
daemon thread, so synchronous code, notebooks and ``asyncio`` tests all talk to
it over real HTTP with the real ``openai`` client, exactly as they would talk
to OpenAI, vLLM or a gateway. It serves::

    POST /v1/chat/completions   deterministic answers (one-row and packed), usage,
                                RPM/TPM limits with OpenAI's 429s and headers,
                                latency, and injected faults
    POST /v1/embeddings         deterministic unit vectors derived from a hash
    GET  /v1/models             a short list of model names

What happens to one chat request, in order:

1. ``401`` if ``api_keys`` is set and the bearer key is not one of them;
2. ``400`` for a body that is not a chat request, an unsupported
   ``response_format`` (``json_schema=False`` / ``json_object=False``), or a
   prompt plus ``max_tokens`` beyond ``model_context``;
3. ``429`` unless the RPM and TPM buckets admit it (see ``_limits``);
4. one draw for the transport faults (5xx, hang, garbage; see ``_faults``);
5. the answer (see ``_model``), degraded if ``degrade`` is set (see
   ``_degrade``), the packing faults, the ``max_tokens`` cut;
6. the server sleeps ``latency + latency_per_token * completion_tokens``
   (the request holds its estimated tokens meanwhile), corrects the token
   debit to the real usage, and answers.

Every setting can change while the server runs (:meth:`FakeServer.configure`),
and :attr:`FakeServer.stats` counts what happened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import logging
import math
import random
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

from aiohttp import web

from llmframe import _tokens
from llmframe._config import UNSET  # "not passed", as distinct from None (no limit)
from llmframe.testing._degrade import Degrade
from llmframe.testing._faults import Faults
from llmframe.testing._limits import Limits, Rejection
from llmframe.testing._model import (
    AnswerFn,
    answer_packed,
    expected_answer,
    one_row_prompt,
    parse_packed,
    truncate_to_tokens,
)
from llmframe.testing._stats import CLIENT_CLOSED, RequestRecord, ServerStats

__all__ = ["FakeServer"]

logger = logging.getLogger("llmframe.testing")

DEFAULT_API_KEY = "fake-key"
HOST = "127.0.0.1"
MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "text-embedding-3-small",
    "text-embedding-3-large",
)
WARM_MODEL = "gpt-4o-mini"
# Large packed requests and context-length tests send bodies far beyond aiohttp's 1 MiB default.
MAX_BODY_BYTES = 64 * 1024 * 1024
# Benchmarks open thousands of connections at once; the kernel caps this at somaxconn.
LISTEN_BACKLOG = 4096
# Each loopback connection costs two descriptors when client and server share a process.
WANTED_OPEN_FILES = 16_384
TRANSPORT_ERRORS = {
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
}
GARBAGE_BODY = (
    b'<html><head><title>502 Bad Gateway</title></head><body>upstream reset {"id": "chatcmpl-'
)




@dataclass(frozen=True)
class _Settings:
    rpm: float | None
    tpm: float | None
    latency: float
    latency_per_token: float
    faults: Faults
    answer_fn: AnswerFn | None
    api_keys: tuple[str, ...] | None
    burst_seconds: float
    json_schema: bool
    json_object: bool
    hang_seconds: float
    model_context: int
    degrade: Degrade | None = None
    rejects_like: str = "openai"
    unsupported_params: tuple[str, ...] = ()
    models: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(
                    f"{name} must be a positive number or None (no limit), got {value!r}"
                )
        for name in ("latency", "latency_per_token", "hang_seconds"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        if not (isinstance(self.burst_seconds, (int, float)) and self.burst_seconds > 0):
            raise ValueError(f"burst_seconds must be > 0, got {self.burst_seconds!r}")
        if not (isinstance(self.model_context, int) and self.model_context > 0):
            raise ValueError(f"model_context must be a positive int, got {self.model_context!r}")
        if self.answer_fn is not None and not callable(self.answer_fn):
            raise TypeError("answer_fn must be a callable (prompt: str) -> str, or None")
        if self.api_keys is not None and not self.api_keys:
            raise ValueError("api_keys must hold at least one key, or be None to accept any key")
        if self.rejects_like not in ("openai", "llama.cpp"):
            raise ValueError(f"rejects_like must be 'openai' or 'llama.cpp', got {self.rejects_like!r}")


def _api_keys(value: Iterable[str] | str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


class _Outcome:
    """What the request log and the counters record about one chat request."""

    __slots__ = ("completion_tokens", "counter", "n_items", "prompt_tokens", "status")

    def __init__(self) -> None:
        self.status = 0
        self.counter: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.n_items = 0

    def set(self, status: int, counter: str | None) -> None:
        self.status = status
        self.counter = counter


def _error(
    status: int,
    message: str,
    kind: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An error response with OpenAI's body: ``{"error": {message, type, param, code}}``."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


def _bad_request(message: str, param: str | None = None, code: str | None = None) -> web.Response:
    return _error(400, message, "invalid_request_error", param=param, code=code)


def _raise_open_file_limit() -> None:
    """Raise this process's soft limit of open files (best effort) so benchmarks can open
    thousands of connections; many systems start at 1024 (macOS at 256)."""
    try:
        import resource
    except ImportError:  # Windows has no such limit to raise
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = (
            WANTED_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, WANTED_OPEN_FILES)
        )
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (OSError, ValueError):
        pass


def _embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for ``text``: equal texts, equal vectors."""
    digest = hashlib.shake_256(text.encode("utf-8", "surrogatepass")).digest(4 * dimensions)
    values = [x / 2_147_483_648.0 - 1.0 for x in struct.unpack(f"<{dimensions}I", digest)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


class FakeServer:
    """A fake OpenAI-compatible server on ``127.0.0.1``, answering deterministically.

    Use it as a context manager (or call :meth:`start` and :meth:`stop`); point
    any OpenAI client at :attr:`base_url` with :attr:`api_key`. The answer to a
    prompt is :func:`~llmframe.testing.expected_answer` of the prompt (or
    ``answer_fn``), and a packed request answers every row exactly as its
    one-row request would be answered.

    Example::

        >>> import openai
        >>> from llmframe.testing import FakeServer, Faults, expected_answer
        >>> with FakeServer(rpm=600, tpm=100_000) as server:
        ...     client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key)
        ...     reply = client.chat.completions.create(
        ...         model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
        ...     )
        ...     server.configure(faults=Faults(error_rate=0.5))  # while it runs
        >>> reply.choices[0].message.content == expected_answer("Hi")
        True
        >>> server.stats.ok
        1

    Parameters (all keyword-only; :meth:`configure` changes any of them later):

    - ``rpm``, ``tpm``: requests and tokens per minute, or ``None`` for no limit.
      Buckets hold ``burst_seconds`` worth of the limit (a minute by default).
    - ``latency``, ``latency_per_token``: seconds slept before each answer, plus
      per completion token.
    - ``faults``: a :class:`~llmframe.testing.Faults` (or a dict of its fields);
      random per attempt from ``random.Random(seed)``.
    - ``degrade``: a :class:`~llmframe.testing.Degrade` (or a dict of its fields),
      a model whose packed answers go wrong more often the more items a request
      carries, and optionally run one row behind; ``None`` (the default) answers
      every packed item right. Deterministic per prompt, see ``Degrade``.
    - ``answer_fn``: ``(prompt) -> answer``, instead of ``expected_answer``.
    - ``api_keys``: the accepted keys; ``None`` accepts any key.
    - ``json_schema``, ``json_object``: whether ``response_format`` of that type
      is supported (else rejected, like endpoints without structured outputs).
    - ``rejects_like``: how an unsupported ``response_format`` is rejected:
      ``"openai"`` (400 naming ``param``) or ``"llama.cpp"`` (500 with
      llama-cpp-python's pydantic message and no ``param``, as its server does).
    - ``unsupported_params``: body parameters answered with OpenAI's 400
      ``unsupported_parameter`` (e.g. ``("seed", "max_tokens")``).
    - ``models``: the chat model names served (else OpenAI's 404
      ``model_not_found``); ``None`` serves any name.
    - ``hang_seconds``: how long a hang fault sleeps before answering.
    - ``model_context``: the context window, in tokens (prompt + ``max_tokens``).
    - ``port``: 0 picks a free port.
    """

    def __init__(
        self,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        latency: float = 0.0,
        latency_per_token: float = 0.0,
        faults: Faults | dict[str, Any] | None = None,
        seed: int = 0,
        answer_fn: AnswerFn | None = None,
        api_keys: Iterable[str] | str | None = None,
        burst_seconds: float = 60.0,
        json_schema: bool = True,
        json_object: bool = True,
        hang_seconds: float = 3600.0,
        model_context: int = 128_000,
        port: int = 0,
        degrade: Degrade | dict[str, Any] | None = None,
        rejects_like: str = "openai",
        unsupported_params: Iterable[str] = (),
        models: Iterable[str] | None = None,
    ) -> None:
        self._settings = _Settings(
            rpm=rpm,
            tpm=tpm,
            latency=latency,
            latency_per_token=latency_per_token,
            faults=Faults.coerce(faults),
            answer_fn=answer_fn,
            api_keys=_api_keys(api_keys),
            burst_seconds=burst_seconds,
            json_schema=json_schema,
            json_object=json_object,
            hang_seconds=hang_seconds,
            model_context=model_context,
            degrade=Degrade.coerce(degrade),
            rejects_like=rejects_like,
            unsupported_params=tuple(unsupported_params),
            models=None if models is None else tuple(models),
        )
        self._requested_port = port
        self._rng = random.Random(seed)
        self._limits = Limits()
        self._limits.configure(rpm, tpm, burst_seconds, time.monotonic())
        self._ids = itertools.count(1)
        self.stats = ServerStats()
        # Owned by the server thread while it runs.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._port: int | None = None
        self._start_error: BaseException | None = None
        self._lifecycle = threading.Lock()

    # ----------------------------------------------------------------- public

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``, for ``openai.OpenAI(base_url=...)``."""
        return f"http://{HOST}:{self.port}/v1"

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._port is None:
            raise RuntimeError("FakeServer is not running: call start() or use it in a with block")
        return self._port

    @property
    def api_key(self) -> str:
        """A key the server accepts: the first of ``api_keys``, or ``"fake-key"``."""
        keys = self._settings.api_keys
        return keys[0] if keys else DEFAULT_API_KEY

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> FakeServer:
        """Start serving in a daemon thread; returns once the port is open. Idempotent."""
        with self._lifecycle:
            if self.running:
                return self
            _raise_open_file_limit()
            ready = threading.Event()
            self._start_error = None
            self._thread = threading.Thread(
                target=self._serve, args=(ready,), name="llmframe-fake-server", daemon=True
            )
            self._thread.start()
            ready.wait()
            if self._start_error is not None:
                self._thread.join()
                self._thread = None
                raise RuntimeError(
                    f"FakeServer could not start: {self._start_error}"
                ) from self._start_error
            return self

    def stop(self) -> None:
        """Stop serving: cancel requests in progress (hangs included), close every connection."""
        with self._lifecycle:
            thread, loop = self._thread, self._loop
            if thread is None or loop is None:
                return
            if threading.current_thread() is thread:
                raise RuntimeError(
                    "FakeServer.stop() cannot be called from the server's own thread"
                )
            if loop.is_running():
                future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
                try:
                    future.result(timeout=10)
                except Exception:  # pragma: no cover - stopping must not fail the caller
                    logger.exception("llmframe.testing: error while stopping the fake server")
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            self._thread = None
            self._port = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def reset_stats(self) -> None:
        """Zero the counters and the request log (``in_flight`` keeps describing the present)."""
        self.stats.reset()

    def configure(
        self,
        *,
        rpm: float | None = UNSET,
        tpm: float | None = UNSET,
        latency: float = UNSET,
        latency_per_token: float = UNSET,
        faults: Faults | dict[str, Any] | None = UNSET,
        seed: int = UNSET,
        answer_fn: AnswerFn | None = UNSET,
        api_keys: Iterable[str] | str | None = UNSET,
        burst_seconds: float = UNSET,
        json_schema: bool = UNSET,
        json_object: bool = UNSET,
        hang_seconds: float = UNSET,
        model_context: int = UNSET,
        degrade: Degrade | dict[str, Any] | None = UNSET,
        rejects_like: str = UNSET,
        unsupported_params: Iterable[str] = UNSET,
    ) -> None:
        """Change settings while the server runs (thread-safe); unnamed settings stay.

        A limit that did not exist starts with a full bucket; a changed limit keeps
        what was used, capped at the new capacity. ``seed`` restarts the fault draws.
        The change applies to requests that arrive after this call returns.
        """
        given: dict[str, Any] = {
            "rpm": rpm,
            "tpm": tpm,
            "latency": latency,
            "latency_per_token": latency_per_token,
            "answer_fn": answer_fn,
            "burst_seconds": burst_seconds,
            "json_schema": json_schema,
            "json_object": json_object,
            "hang_seconds": hang_seconds,
            "model_context": model_context,
            "rejects_like": rejects_like,
        }
        changes = {name: value for name, value in given.items() if value is not UNSET}
        if faults is not UNSET:
            changes["faults"] = Faults.coerce(faults)
        if api_keys is not UNSET:
            changes["api_keys"] = _api_keys(api_keys)
        if degrade is not UNSET:
            changes["degrade"] = Degrade.coerce(degrade)
        if unsupported_params is not UNSET:
            changes["unsupported_params"] = tuple(unsupported_params)
        settings = replace(self._settings, **changes)  # validates before anything changes
        self._in_loop(lambda: self._apply(settings, None if seed is UNSET else seed))

    def __repr__(self) -> str:
        where = self.base_url if self._port is not None else "stopped"
        s = self._settings
        return f"FakeServer({where}, rpm={s.rpm}, tpm={s.tpm}, latency={s.latency})"

    # ------------------------------------------------------------ life cycle

    def _apply(self, settings: _Settings, seed: int | None) -> None:
        self._settings = settings
        self._limits.configure(settings.rpm, settings.tpm, settings.burst_seconds, time.monotonic())
        if seed is not None:
            self._rng.seed(seed)

    def _in_loop(self, change: Callable[[], None]) -> None:
        """Run ``change`` on the server's loop (where the buckets live) and wait for it."""
        loop, thread = self._loop, self._thread
        if (
            loop is None
            or thread is None
            or not loop.is_running()
            or threading.current_thread() is thread
        ):
            change()
            return

        async def run() -> None:
            change()

        asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=10)

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            # Loading an encoding takes a few hundred ms once per process: pay it now, not
            # inside the first request, where it would trip a short client timeout.
            # (suppress: under -W error the once-only offline notice is raised; counting works.)
            with contextlib.suppress(Exception):
                _tokens.get_tokenizer(WARM_MODEL)
            self._port = loop.run_until_complete(self._open())
            self._loop = loop
        except BaseException as exc:
            self._start_error = exc
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._loop = None

    async def _open(self) -> int:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._model)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,  # thousands of requests per second: logging them would dominate
            handler_cancellation=True,  # a client that gives up (timeout) ends its request here too
            shutdown_timeout=0.5,
        )
        await runner.setup()
        site = web.TCPSite(runner, HOST, self._requested_port, backlog=LISTEN_BACKLOG)
        await site.start()
        self._runner = runner
        return int(runner.addresses[0][1])

    async def _shutdown(self) -> None:
        handlers = [task for task in self._handlers if not task.done()]
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=1.0)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -------------------------------------------------------------- handlers

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        keys = self._settings.api_keys
        if keys is None:
            return None
        header = request.headers.get("Authorization", "")
        key = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if key in keys:
            return None
        if not key:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        else:
            shown = (
                f"{key[:3]}{'*' * max(0, len(key) - 7)}{key[-4:]}"
                if len(key) > 7
                else "*" * len(key)
            )
            message = (
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
        return _error(401, message, "invalid_request_error", code="invalid_api_key")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        self.stats._begin()
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        outcome = _Outcome()
        try:
            return await self._answer_chat(request, outcome, started)
        except asyncio.CancelledError:
            outcome.set(CLIENT_CLOSED, None)
            raise
        except Exception as exc:
            # A bug here, or an answer_fn that raised: say so rather than hang the client.
            logger.exception("llmframe.testing: the fake server failed on a chat request")
            outcome.set(500, None)
            return _error(500, f"llmframe fake server error: {exc!r}", "server_error")
        finally:
            if task is not None:
                self._handlers.discard(task)
            self.stats._end(
                RequestRecord(
                    started,
                    time.monotonic(),
                    outcome.status,
                    outcome.prompt_tokens,
                    outcome.completion_tokens,
                    outcome.n_items,
                ),
                outcome.counter,
            )

    async def _answer_chat(
        self, request: web.Request, outcome: _Outcome, started: float
    ) -> web.StreamResponse:
        settings = self._settings  # one consistent view, even if configure() runs meanwhile
        denied = self._unauthorized(request)
        if denied is not None:
            outcome.set(401, "unauthorized")
            return denied

        parsed = _parse_chat(await request.read(), settings)
        if isinstance(parsed, web.Response):
            # Rejected before any model work (400, 404, or llama.cpp-style 500s): counted
            # with the bad requests, logged with the status sent.
            outcome.set(parsed.status, "bad_requests")
            return parsed
        model, messages, max_out = parsed

        tokenizer = _tokens.get_tokenizer(model)
        prompt_tokens = _tokens.count_messages(messages, tokenizer)
        outcome.prompt_tokens = prompt_tokens
        estimate = prompt_tokens + (max_out or 0)
        if estimate > settings.model_context:
            outcome.set(400, "bad_requests")
            return _context_exceeded(settings.model_context, prompt_tokens, max_out)

        rejection = self._limits.admit(estimate, time.monotonic())
        if rejection is not None:
            outcome.set(429, "rate_limited")
            return self._rate_limited(rejection, model)

        faults = settings.faults
        transport = faults.error_rate + faults.hang_rate + faults.garbage_rate
        draw = self._rng.random() if transport > 0 else 1.0
        if draw < faults.error_rate:
            self._limits.settle(estimate, 0, time.monotonic())  # nothing was generated
            status = self._rng.choice(tuple(TRANSPORT_ERRORS))
            outcome.set(status, "server_errors")
            return _error(
                status, TRANSPORT_ERRORS[status], "server_error", headers=self._headers(started)
            )
        if draw < faults.error_rate + faults.hang_rate:
            self.stats._count("hangs")
            await asyncio.sleep(settings.hang_seconds)
        elif draw < transport:
            if settings.latency:
                await asyncio.sleep(settings.latency)
            outcome.set(200, "garbage")
            return web.Response(
                status=200,
                body=GARBAGE_BODY,
                content_type="application/json",
                headers=self._headers(started),
            )

        answer_fn = settings.answer_fn or expected_answer
        packed = parse_packed(messages)
        applied: list[str] = []
        if packed is None:
            content = answer_fn(one_row_prompt(messages))
            outcome.n_items = 1
        else:
            content, applied, degraded = answer_packed(
                packed, answer_fn, faults, self._rng, settings.degrade
            )
            outcome.n_items = len(packed.items)
            if applied:
                self.stats._count(kinds=applied)
            if degraded:
                self.stats._add("degraded", degraded)
        finish_reason = "length" if "truncate" in applied else "stop"
        if max_out is not None:
            cut = truncate_to_tokens(content, max_out, tokenizer.count)
            if cut != content:
                content, finish_reason = cut, "length"
        completion_tokens = tokenizer.count(content)
        outcome.completion_tokens = completion_tokens

        delay = settings.latency + settings.latency_per_token * completion_tokens
        if delay > 0:
            await asyncio.sleep(delay)
        # The answer is known once generated: until then the request holds its estimate.
        self._limits.settle(estimate, prompt_tokens + completion_tokens, time.monotonic())

        number = next(self._ids)
        body = {
            "id": f"chatcmpl-fake{number:016x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": "fp_llmframe_fake",
        }
        outcome.set(200, "ok")
        return web.Response(
            status=200,
            body=json.dumps(body, ensure_ascii=False).encode(),
            content_type="application/json",
            headers=self._headers(started, number),
        )

    def _headers(self, started: float, number: int | None = None) -> dict[str, str]:
        now = time.monotonic()
        headers = self._limits.headers(now)
        headers["x-request-id"] = f"req_{number if number is not None else next(self._ids):032x}"
        headers["openai-processing-ms"] = str(round((now - started) * 1000))
        return headers

    def _rate_limited(self, rejection: Rejection, model: str) -> web.Response:
        headers = self._headers(time.monotonic())
        if not rejection.never_fits:
            headers["retry-after-ms"] = str(max(1, math.ceil(rejection.wait * 1000)))
            headers["retry-after"] = str(max(1, math.ceil(rejection.wait)))
        return _error(
            429,
            rejection.message(model),
            rejection.kind,
            code="rate_limit_exceeded",
            headers=headers,
        )

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _bad_request("We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return _bad_request("The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _bad_request("You must provide a model parameter.", param="model")
        inputs = _embedding_inputs(body.get("input"))
        if inputs is None:
            return _bad_request(
                "'input' must be a string, a list of strings, or token arrays.", param="input"
            )
        dimensions = body.get("dimensions") or (3072 if model.endswith("-large") else 1536)
        if not isinstance(dimensions, int) or not 1 <= dimensions <= 8192:
            return _bad_request(
                "'dimensions' must be an integer between 1 and 8192.", param="dimensions"
            )
        as_base64 = body.get("encoding_format") == "base64"
        tokenizer = _tokens.get_tokenizer(model)
        data: list[dict[str, Any]] = []
        tokens = 0
        for index, item in enumerate(inputs):
            text = item if isinstance(item, str) else ",".join(map(str, item))
            tokens += tokenizer.count(item) if isinstance(item, str) else len(item)
            vector = _embedding(text, dimensions)
            encoded: Any = (
                base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
                if as_base64
                else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        if self._settings.latency:
            await asyncio.sleep(self._settings.latency)
        reply = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return web.json_response(reply)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        return web.json_response(
            {"object": "list", "data": [_model_entry(name) for name in MODELS]}
        )

    async def _model(self, request: web.Request) -> web.StreamResponse:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        return web.json_response(_model_entry(request.match_info["model"]))

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        return _error(
            404,
            f"Invalid URL ({request.method} {request.path}): the llmframe fake server serves "
            "POST /v1/chat/completions, POST /v1/embeddings and GET /v1/models.",
            "invalid_request_error",
        )


def _embedding_inputs(raw: Any) -> list[str | list[int]] | None:
    """The inputs of an embeddings request: one string or token array, or a list of them."""
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list) or not raw:
        return None
    if all(isinstance(x, int) for x in raw):
        return [raw]
    if all(isinstance(x, str) or (isinstance(x, list) and x) for x in raw):
        return list(raw)
    return None


def _model_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "llmframe-fake"}


def _parse_chat(
    raw: bytes, settings: _Settings
) -> tuple[str, list[dict[str, Any]], int | None] | web.Response:
    """``(model, messages, max output tokens)`` of a chat request body, or the rejection."""
    try:
        body = json.loads(raw)
    except ValueError:
        return _bad_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly.)"
        )
    if not isinstance(body, dict):
        return _bad_request("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _bad_request("you must provide a model parameter", param="model")
    if settings.models is not None and model not in settings.models:
        return _error(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            code="model_not_found",
        )
    messages = body.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
    ):
        return _bad_request(
            "'messages' must be a non-empty array of objects with a 'role'.", param="messages"
        )
    if body.get("stream"):
        return _bad_request("The llmframe fake server does not support 'stream'.", param="stream")
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        supported = {"json_schema": settings.json_schema, "json_object": settings.json_object}
        if not supported.get(str(kind), True):
            if settings.rejects_like == "llama.cpp":
                return _llama_cpp_format_error(kind, [k for k, ok in supported.items() if ok])
            return _bad_request(
                f"Invalid parameter: 'response_format' of type '{kind}' is not supported with this model.",
                param="response_format",
            )
    for name in settings.unsupported_params:
        if name in body:
            return _bad_request(
                f"Unsupported parameter: '{name}' is not supported with this model.",
                param=name,
                code="unsupported_parameter",
            )
    limits: list[int] = []
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return _bad_request(
                f"Invalid '{name}': expected an integer of at least 1, got {value!r}.",
                param=name,
                code="integer_below_min_value",
            )
        limits.append(value)
    return model, messages, min(limits) if limits else None


def _llama_cpp_format_error(kind: Any, accepted: list[str]) -> web.Response:
    """llama-cpp-python 0.3's answer to a ``response_format`` type it lacks: a 500 whose
    message is the pydantic validation error, with no ``param``."""
    expected = " or ".join(repr(k) for k in ["text", *accepted])
    message = (
        "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', "
        f"'type'), 'msg': \"Input should be {expected}\", 'input': {kind!r}, 'ctx': "
        f"{{'expected': \"{expected}\"}}}}\n\n  File \"llama_cpp/server/app.py\", line 376, "
        "in create_chat_completion\n    POST /v1/chat/completions"
    )
    return _error(500, message, "internal_server_error")


def _context_exceeded(context: int, prompt_tokens: int, max_out: int | None) -> web.Response:
    if max_out:
        asked = (
            f"However, you requested {prompt_tokens + max_out} tokens ({prompt_tokens} in the "
            f"messages, {max_out} in the completion). Please reduce the length of the messages "
            "or completion."
        )
    else:
        asked = (
            f"However, your messages resulted in {prompt_tokens} tokens. "
            "Please reduce the length of the messages."
        )
    return _bad_request(
        f"This model's maximum context length is {context} tokens. {asked}",
        param="messages",
        code="context_length_exceeded",
    )
