"""The fake server's life cycle: start, stop, configure, and the table of routes.

:class:`FakeServer` runs an aiohttp application on its own event loop in a
daemon thread, so synchronous code, notebooks and ``asyncio`` tests all talk to
it over real HTTP with the real ``openai`` client, exactly as they would talk
to OpenAI, vLLM or a gateway. It serves::

    POST /v1/chat/completions   deterministic answers (one-row and packed), usage,
                                RPM/TPM limits with OpenAI's 429s and headers,
                                latency, and injected faults          (_chat)
    POST /v1/embeddings         deterministic unit vectors derived from a hash, with the
                                same limits and transport faults as chat (_embeddings)
    GET  /v1/models             a short list of model names           (_catalog)
    /v1/files, /v1/batches      OpenAI's Batch API on an accelerated clock (_files,
                                _batches, _batch_input, _batch_lifecycle)

This module starts and stops the thread and the loop, and applies
:meth:`FakeServer.configure` on that loop; what a request gets is up to its
handler, which reads it with ``_requests`` and the :class:`~._settings.Settings`
in force. Every setting can change while the server runs, and
:attr:`FakeServer.stats` counts what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from aiohttp import web

from llmframe import _tokens
from llmframe._config import UNSET  # "not passed", as distinct from None (no limit)
from llmframe.testing._batches import Batches
from llmframe.testing._catalog import Catalog
from llmframe.testing._chat import ChatCompletions
from llmframe.testing._degrade import Degrade
from llmframe.testing._embeddings import Embeddings
from llmframe.testing._faults import Faults
from llmframe.testing._files import Files
from llmframe.testing._model import AnswerFn
from llmframe.testing._open_files import LISTEN_BACKLOG, raise_open_file_limit
from llmframe.testing._requests import not_found
from llmframe.testing._settings import Settings
from llmframe.testing._stats import ServerStats

__all__ = ["FakeServer"]

logger = logging.getLogger("llmframe.testing")

DEFAULT_API_KEY = "fake-key"
HOST = "127.0.0.1"
WARM_MODEL = "gpt-4o-mini"
MAX_BODY_BYTES = 64 * 1024 * 1024  # past aiohttp's 1 MiB, for large requests; /v1/files: its own
class FakeServer:
    """A fake OpenAI-compatible server on ``127.0.0.1``, answering deterministically.

    Use it as a context manager (or call :meth:`start` and :meth:`stop`); point
    any OpenAI client at :attr:`base_url` with :attr:`api_key`. The answer to a
    prompt is :func:`~llmframe.testing.expected_answer` of the prompt (or
    ``answer_fn``), and a packed request answers every row exactly as its
    one-row request would be answered. A request for structured output (a JSON
    schema) gets :func:`~llmframe.testing.expected_value` for every row.

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
    - ``unsupported_params``: body parameters answered with OpenAI's 400 ``unsupported_parameter``.
    - ``models``: the model names served (else OpenAI's 404 ``model_not_found``); ``None``: any.
    - ``embeddings_shuffled``: embeddings replies list ``data`` in shuffled order
      (each item keeps its ``index``, as the API allows).
    - ``embedding_length``: ``(n) -> length`` of the vectors of the n-th embeddings
      reply, whatever ``dimensions`` asked: a model whose vectors change length.
    - ``hang_seconds``: a hang fault's sleep; ``model_context``: the context window in tokens.
    - ``batch_api``: serve the Batch API (``False``: 404 there, as vLLM and llama.cpp).
    - ``batch_seconds``, ``batch_validate_seconds``: wall seconds a batch spends in
      progress (its lines finish spread over them), and validating (and finalizing).
    - ``batch_expire_rate``, ``batch_error_rate``, ``batch_broken_rate``: shares of a
      batch's lines left unreached (the batch ends ``expired``), answered 500, and
      packed with an id dropped, wrong or doubled; see ``_batch_lifecycle``.
    - ``batch_max_requests``, ``batch_max_bytes``, ``batch_enqueued_tpd``: the limits of
      an input file, and of prompt tokens in batches at once (``None``: no limit).
    - ``slots``: chat requests the model works on at once, others wait (llama-cpp-python: 1).
    - ``port``: 0 picks a free port.

    A batch line gets the very body a live request would get (outside the live
    RPM/TPM buckets); :meth:`batches` shows every batch, and ``stats.batch_lines``
    logs each line submitted.
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
        embeddings_shuffled: bool = False,
        embedding_length: Callable[[int], int] | None = None,
        batch_api: bool = True,
        batch_seconds: float = 1.0,
        batch_validate_seconds: float = 0.05,
        batch_expire_rate: float = 0.0,
        batch_error_rate: float = 0.0,
        batch_broken_rate: float = 0.0,
        batch_max_requests: int = 50_000,
        batch_max_bytes: int = 200 * 1024 * 1024,
        batch_enqueued_tpd: int | None = None,
        slots: int | None = None,
    ) -> None:
        # locals() is still just the arguments: those named like a setting are read.
        self._settings = Settings.of(locals())
        self._requested_port = port
        self.stats = ServerStats()
        self._chat = ChatCompletions(lambda: self._settings, self.stats, seed)
        #: Counters of embeddings requests (``items``: inputs embedded), apart from the chat ones.
        self.embedding_stats = ServerStats()
        self._embeddings = Embeddings(lambda: self._settings, self.embedding_stats, seed)
        self._catalog = Catalog(lambda: self._settings)
        self._files = Files(lambda: self._settings, self.stats)
        self._batches = Batches(lambda: self._settings, self.stats, seed, self._files)
        # Owned by the server thread while it runs.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
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
            raise_open_file_limit()
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
        """Zero the counters and the request logs (``in_flight`` keeps describing the present)."""
        self.stats.reset()
        self.embedding_stats.reset()

    def batches(self) -> list[dict[str, Any]]:
        """Every batch created, oldest first, as its ``Batch`` object now."""
        return [job.object() for job in self._batches.jobs()]

    def wait_batch(self, batch_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until the batch reaches a final status; its ``Batch`` object then."""
        return self._batches.wait(batch_id, timeout)

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
        embeddings_shuffled: bool = UNSET,
        embedding_length: Callable[[int], int] | None = UNSET,
        batch_api: bool = UNSET,
        batch_seconds: float = UNSET,
        batch_validate_seconds: float = UNSET,
        batch_expire_rate: float = UNSET,
        batch_error_rate: float = UNSET,
        batch_broken_rate: float = UNSET,
        batch_max_requests: int = UNSET,
        batch_max_bytes: int = UNSET,
        batch_enqueued_tpd: int | None = UNSET,
        slots: int | None = UNSET,
    ) -> None:
        """Change settings while the server runs (thread-safe); unnamed settings stay.

        A limit that did not exist starts with a full bucket; a changed limit keeps
        what was used, capped at the new capacity. ``seed`` restarts the fault draws.
        The change applies to requests that arrive after this call returns.
        """
        settings = self._settings.changed(locals())  # the arguments, as in __init__
        self._in_loop(lambda: self._apply(settings, None if seed is UNSET else seed))

    def __repr__(self) -> str:
        where = self.base_url if self._port is not None else "stopped"
        s = self._settings
        return f"FakeServer({where}, rpm={s.rpm}, tpm={s.tpm}, latency={s.latency})"

    # ------------------------------------------------------------ life cycle

    def _apply(self, settings: Settings, seed: int | None) -> None:
        self._settings = settings
        self._chat.configure(settings, seed)
        self._embeddings.configure(settings, seed)
        self._batches.configure(settings, seed)

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
        app.router.add_post("/v1/chat/completions", self._chat.handle)
        app.router.add_post("/v1/embeddings", self._embeddings.handle)
        app.router.add_get("/v1/models", self._catalog.list_models)
        app.router.add_get("/v1/models/{model}", self._catalog.get_model)
        app.router.add_post("/v1/files", self._files.upload)
        app.router.add_get("/v1/files", self._files.list)
        app.router.add_get("/v1/files/{file_id}", self._files.retrieve)
        app.router.add_get("/v1/files/{file_id}/content", self._files.content)
        app.router.add_delete("/v1/files/{file_id}", self._files.delete)
        app.router.add_post("/v1/batches", self._batches.create)
        app.router.add_get("/v1/batches", self._batches.list)
        app.router.add_get("/v1/batches/{batch_id}", self._batches.retrieve)
        app.router.add_post("/v1/batches/{batch_id}/cancel", self._batches.cancel)
        app.router.add_route("*", "/{tail:.*}", not_found)
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
        await self._chat.cancel_all()
        await self._embeddings.cancel_all()
        await self._batches.cancel_all()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
