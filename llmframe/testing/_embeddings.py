"""``POST /v1/embeddings``: deterministic unit vectors, derived from a hash of each input.

Equal texts get equal vectors and different texts different ones, in any
``dimensions`` from 1 to 8192 (1536 by default, 3072 for ``*-large`` models),
as floats or as the base64 of little-endian float32 (what the SDK asks for).
A test recomputes any vector with :func:`embedding`.

What happens to one request, in order, as for chat (see ``_chat``):

1. ``401`` if ``api_keys`` is set and the key is not one of them; ``404``
   ``model_not_found`` for a model outside ``models``;
2. ``400`` for a body that is not an embeddings request, more than
   :data:`MAX_INPUTS` inputs, an input over :data:`MAX_INPUT_TOKENS` tokens, or
   more than :data:`MAX_REQUEST_TOKENS` tokens in all (the API's limits);
3. ``429`` unless the RPM and TPM buckets admit the input tokens (``_limits``;
   the buckets are this endpoint's own, as OpenAI's limits are per model);
4. one draw for the transport faults (5xx, hang, garbage; ``_faults``);
5. the vectors, ``data`` shuffled when ``embeddings_shuffled`` is set (each
   item keeps its ``index``), of ``embedding_length(n)`` values when that is set.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import math
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from aiohttp import web

from llmframe import _tokens
from llmframe._embed_plan import MAX_INPUT_TOKENS, MAX_INPUTS, MAX_REQUEST_TOKENS
from llmframe.testing._chat import GARBAGE_BODY, TRANSPORT_ERRORS
from llmframe.testing._handler import Handler
from llmframe.testing._requests import (
    EmbeddingsRequest,
    bad_request,
    error,
    parse_embeddings,
    unauthorized,
)
from llmframe.testing._settings import Settings
from llmframe.testing._stats import CLIENT_CLOSED, RequestRecord, ServerStats

__all__ = ["MAX_INPUTS", "MAX_INPUT_TOKENS", "MAX_REQUEST_TOKENS", "Embeddings", "embedding", "embeddings_body",
           "vectors"]  # fmt: skip



def vectors(texts: list[str], dimensions: int) -> np.ndarray:
    """The unit vectors of ``texts``, one row each, as float32: what the server sends."""
    out = np.empty((len(texts), dimensions), dtype=np.float32)
    for row, text in enumerate(texts):
        digest = hashlib.shake_256(text.encode("utf-8", "surrogatepass")).digest(4 * dimensions)
        values = np.frombuffer(digest, dtype="<u4") / 2_147_483_648.0 - 1.0
        norm = math.sqrt(float(values @ values)) or 1.0
        out[row] = values / norm
    return out


def embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for ``text``: equal texts, equal vectors (float32 values)."""
    return [float(v) for v in vectors([text], dimensions)[0]]


class Embeddings(Handler):
    """The embeddings endpoint; :meth:`handle` is its aiohttp handler."""

    def __init__(self, settings: Callable[[], Settings], stats: ServerStats, seed: int = 0) -> None:
        super().__init__(settings, stats, seed)
        self._replies = itertools.count(1)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        self._stats._begin()
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        outcome = [0, None, 0, 0]  # status, counter, prompt tokens, inputs
        try:
            return await self._answer(request, outcome)
        except asyncio.CancelledError:
            outcome[:2] = [CLIENT_CLOSED, None]
            raise
        finally:
            if task is not None:
                self._tasks.discard(task)
            status, counter, tokens, items = outcome
            self._stats._end(RequestRecord(started, time.monotonic(), int(status or 0), int(tokens or 0), 0,
                                           int(items or 0)), counter)  # type: ignore[arg-type]  # fmt: skip

    async def _answer(self, request: web.Request, outcome: list[Any]) -> web.StreamResponse:
        settings = self._settings()
        denied = unauthorized(request, settings.api_keys)
        if denied is not None:
            outcome[:2] = [401, "unauthorized"]
            return denied
        parsed = parse_embeddings(await request.read())
        if isinstance(parsed, web.Response):
            outcome[:2] = [parsed.status, "bad_requests"]
            return parsed
        model = parsed.model
        rejected = _checked(parsed, settings)
        if isinstance(rejected, web.Response):
            outcome[:2] = [rejected.status, "bad_requests"]
            return rejected
        texts, tokens = rejected
        outcome[2] = tokens
        refused = self._limits.admit(tokens, time.monotonic())
        if refused is not None:
            outcome[:2] = [429, "rate_limited"]
            headers = self._limits.headers(time.monotonic())
            if not refused.never_fits:
                headers["retry-after-ms"] = str(max(1, math.ceil(refused.wait * 1000)))
                headers["retry-after"] = str(max(1, math.ceil(refused.wait)))
            return error(429, refused.message(model), refused.kind, code="rate_limit_exceeded", headers=headers)
        faults = settings.faults
        transport = faults.error_rate + faults.hang_rate + faults.garbage_rate
        draw = self._rng.random() if transport > 0 else 1.0
        if draw < faults.error_rate:
            self._limits.settle(tokens, 0, time.monotonic())
            status = self._rng.choice(tuple(TRANSPORT_ERRORS))
            outcome[:2] = [status, "server_errors"]
            return error(status, TRANSPORT_ERRORS[status], "server_error", headers=self._limits.headers(time.monotonic()))
        if draw < faults.error_rate + faults.hang_rate:
            self._stats._count("hangs")
            await asyncio.sleep(settings.hang_seconds)
        elif draw < transport:
            outcome[:2] = [200, "garbage"]
            return web.Response(status=200, body=GARBAGE_BODY, content_type="application/json")
        number = next(self._replies)
        reply = _reply(parsed, texts, tokens, settings, number, self._rng)
        if settings.latency:
            await asyncio.sleep(settings.latency)
        outcome[:2] = [200, "ok"]
        outcome[3] = len(texts)
        headers = self._limits.headers(time.monotonic())
        headers["x-request-id"] = f"req_emb{number:029x}"
        return web.Response(status=200, body=json.dumps(reply).encode(), content_type="application/json",
                            headers=headers)  # fmt: skip


def embeddings_body(
    request: EmbeddingsRequest, settings: Settings, number: int, rng: random.Random
) -> dict[str, Any] | web.Response:
    """The ``number``-th reply to ``request``, or its 404 or 400, limits and faults aside
    (the Batch API answers its embeddings lines with this, as the endpoint does)."""
    checked = _checked(request, settings)
    if isinstance(checked, web.Response):
        return checked
    return _reply(request, *checked, settings, number, rng)


def _checked(request: EmbeddingsRequest, settings: Settings) -> tuple[list[str], int] | web.Response:
    """The texts and their tokens, or the 404 of an unknown model or the 400 of a request over a limit."""
    if settings.models is not None and request.model not in settings.models:
        return error(404, f"The model `{request.model}` does not exist or you do not have access to it.",
                     "invalid_request_error", code="model_not_found")  # fmt: skip
    return _over_limits(request.inputs, request.model)


def _reply(request: EmbeddingsRequest, texts: list[str], tokens: int, settings: Settings, number: int,
           rng: random.Random) -> dict[str, Any]:  # fmt: skip
    """The ``number``-th reply: the vectors of ``texts`` (``embedding_length``, shuffled ``data``)."""
    length = request.dimensions if settings.embedding_length is None else int(settings.embedding_length(number))
    matrix = vectors(texts, length)
    data: list[dict[str, Any]] = []
    for index, row in enumerate(matrix):
        encoded: Any = base64.b64encode(row.astype("<f4").tobytes()).decode() if request.as_base64 else row.tolist()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    if settings.embeddings_shuffled:
        rng.shuffle(data)
    return {"object": "list", "data": data, "model": request.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip


def _over_limits(inputs: list[str | list[int]], model: str) -> tuple[list[str], int] | web.Response:
    """The texts and their tokens, or the API's 400 for a request over one of its limits."""
    if len(inputs) > MAX_INPUTS:
        return bad_request(f"'$.input' is invalid. Please check the API reference: array too long, "
                           f"{len(inputs)} items, maximum {MAX_INPUTS}.", param="input")  # fmt: skip
    tokenizer = _tokens.get_tokenizer(model)
    texts: list[str] = []
    total = 0
    for item in inputs:
        text = item if isinstance(item, str) else ",".join(map(str, item))
        count = tokenizer.count(item) if isinstance(item, str) else len(item)
        if count > MAX_INPUT_TOKENS:
            return bad_request(f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however you "
                               f"requested {count} tokens in one input. Please reduce your prompt.",
                               param="input", code="context_length_exceeded")  # fmt: skip
        texts.append(text)
        total += count
    if total > MAX_REQUEST_TOKENS:
        return bad_request(f"Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per request",
                           param="input", code="max_tokens_per_request")  # fmt: skip
    return texts, total
