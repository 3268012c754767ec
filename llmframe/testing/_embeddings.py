"""``POST /v1/embeddings``: deterministic unit vectors, derived from a hash of each input.

Equal texts get equal vectors and different texts different ones, in any
``dimensions`` from 1 to 8192 (1536 by default, 3072 for ``*-large`` models),
as floats or as the base64 of little-endian float32 (what the SDK asks for).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import struct
from collections.abc import Callable
from typing import Any

from aiohttp import web

from llmframe import _tokens
from llmframe.testing._requests import parse_embeddings, unauthorized
from llmframe.testing._settings import Settings

__all__ = ["Embeddings", "embedding"]


def embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for ``text``: equal texts, equal vectors."""
    digest = hashlib.shake_256(text.encode("utf-8", "surrogatepass")).digest(4 * dimensions)
    values = [x / 2_147_483_648.0 - 1.0 for x in struct.unpack(f"<{dimensions}I", digest)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


class Embeddings:
    """The embeddings endpoint; :meth:`handle` is its aiohttp handler."""

    def __init__(self, settings: Callable[[], Settings]) -> None:
        self._settings = settings

    async def handle(self, request: web.Request) -> web.StreamResponse:
        settings = self._settings()
        denied = unauthorized(request, settings.api_keys)
        if denied is not None:
            return denied
        parsed = parse_embeddings(await request.read())
        if isinstance(parsed, web.Response):
            return parsed
        model, inputs, dimensions, as_base64 = parsed
        tokenizer = _tokens.get_tokenizer(model)
        data: list[dict[str, Any]] = []
        tokens = 0
        for index, item in enumerate(inputs):
            text = item if isinstance(item, str) else ",".join(map(str, item))
            tokens += tokenizer.count(item) if isinstance(item, str) else len(item)
            vector = embedding(text, dimensions)
            encoded: Any = (
                base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
                if as_base64
                else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        if settings.latency:
            await asyncio.sleep(settings.latency)
        reply = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return web.json_response(reply)
