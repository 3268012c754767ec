"""``POST /v1/chat/completions``: the fake server's answers, limits, latency and faults.

What happens to one chat request, in order:

1. ``401`` if ``api_keys`` is set and the bearer key is not one of them;
2. ``400`` for a body that is not a chat request, an unsupported
   ``response_format`` (``json_schema=False`` / ``json_object=False``), or a
   prompt plus ``max_tokens`` beyond ``model_context`` (see ``_requests``);
3. ``429`` unless the RPM and TPM buckets admit it (see ``_limits``);
4. one draw for the transport faults (5xx, hang, garbage; see ``_faults``);
5. the answer (see ``_completion`` and ``_model``; a structured one, to a JSON schema, see
   ``_structured``; a schema that cannot be answered is a ``400``), degraded
   if ``degrade`` is set (see ``_degrade``), the packing faults, the
   ``max_tokens`` cut;
6. the server sleeps ``latency + latency_per_token * completion_tokens``
   (the request holds its estimated tokens meanwhile), corrects the token
   debit to the real usage, and answers.

:class:`ChatCompletions` owns what only chat requests use: the RPM/TPM
buckets, the random draws of the faults, the response ids, and the requests
in progress (so that stopping the server can cancel them, hangs included).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import time
from collections.abc import Callable

from aiohttp import web

from llmframe.testing._completion import complete, completion_body, measure
from llmframe.testing._handler import Handler
from llmframe.testing._limits import Rejection
from llmframe.testing._requests import (
    error,
    parse_chat,
    unauthorized,
)
from llmframe.testing._settings import Settings
from llmframe.testing._stats import CLIENT_CLOSED, RequestRecord, ServerStats

__all__ = ["ChatCompletions"]

logger = logging.getLogger("llmframe.testing")

TRANSPORT_ERRORS = {
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
}
GARBAGE_BODY = (
    b'<html><head><title>502 Bad Gateway</title></head><body>upstream reset {"id": "chatcmpl-'
)


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


class ChatCompletions(Handler):
    """The chat completions endpoint; :meth:`handle` is its aiohttp handler.

    ``settings`` is called once per request for the settings in force, so a
    request keeps one consistent view even if ``configure()`` runs meanwhile.
    """

    def __init__(self, settings: Callable[[], Settings], stats: ServerStats, seed: int) -> None:
        super().__init__(settings, stats, seed)
        self._ids = itertools.count(1)
        self._slots: tuple[int, asyncio.Semaphore] | None = None

    def _slot(self, slots: int) -> asyncio.Semaphore:
        """The model's slots (made on the server's loop; new when ``slots`` changes)."""
        if self._slots is None or self._slots[0] != slots:
            self._slots = (slots, asyncio.Semaphore(slots))
        return self._slots[1]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        self._stats._begin()
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        outcome = _Outcome()
        try:
            return await self._answer(request, outcome, started)
        except asyncio.CancelledError:
            outcome.set(CLIENT_CLOSED, None)
            raise
        except Exception as exc:
            # A bug here, or an answer_fn that raised: say so rather than hang the client.
            logger.exception("llmframe.testing: the fake server failed on a chat request")
            outcome.set(500, None)
            return error(500, f"llmframe fake server error: {exc!r}", "server_error")
        finally:
            if task is not None:
                self._tasks.discard(task)
            self._stats._end(
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

    async def _answer(
        self, request: web.Request, outcome: _Outcome, started: float
    ) -> web.StreamResponse:
        settings = self._settings()  # one consistent view, even if configure() runs meanwhile
        denied = unauthorized(request, settings.api_keys)
        if denied is not None:
            outcome.set(401, "unauthorized")
            return denied

        parsed = parse_chat(await request.read(), settings)
        if isinstance(parsed, web.Response):
            # Rejected before any model work (400, 404, or llama.cpp-style 500s): counted
            # with the bad requests, logged with the status sent.
            outcome.set(parsed.status, "bad_requests")
            return parsed
        model = parsed.model
        prompt_tokens, estimate, too_long = measure(parsed, settings)
        outcome.prompt_tokens = prompt_tokens
        if too_long is not None:
            outcome.set(400, "bad_requests")
            return too_long

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
            return error(
                status, TRANSPORT_ERRORS[status], "server_error", headers=self._headers(started)
            )
        if draw < faults.error_rate + faults.hang_rate:
            self._stats._count("hangs")
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

        done = complete(parsed, settings, faults, self._rng, prompt_tokens)
        if isinstance(done, web.Response):  # a schema that cannot be answered
            self._limits.settle(estimate, 0, time.monotonic())  # nothing was generated
            outcome.set(done.status, "bad_requests")
            return done
        outcome.n_items = done.n_items
        if done.applied:
            self._stats._count(kinds=done.applied)
        if done.degraded:
            self._stats._add("degraded", done.degraded)
        outcome.completion_tokens = done.completion_tokens

        delay = settings.latency + settings.latency_per_token * done.completion_tokens
        if settings.slots is not None:  # the model works on so many requests at once
            async with self._slot(settings.slots):
                await asyncio.sleep(delay)
        elif delay > 0:
            await asyncio.sleep(delay)
        # The answer is known once generated: until then the request holds its estimate.
        self._limits.settle(estimate, prompt_tokens + done.completion_tokens, time.monotonic())

        number = next(self._ids)
        body = completion_body(number, model, done)
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
        return error(
            429,
            rejection.message(model),
            rejection.kind,
            code="rate_limit_exceeded",
            headers=headers,
        )
