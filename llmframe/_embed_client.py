"""One embeddings request through the ``openai`` SDK, with the SDK's own retries off.

Asks for ``encoding_format="base64"`` and decodes each vector with numpy: the
float32 bytes as sent, several times faster than parsing a JSON list of floats.
The vectors are placed by each item's ``index``, never by position (a server
may list ``data`` in any order); a reply that does not carry every index once,
or whose vectors differ in length, is unreadable and retried like a garbage
body. Errors become :class:`~llmframe._client.CallError` through the chat
client's :func:`~llmframe._client.classify`, so both paths retry, stop and
redact the key alike.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._client import CallError, ChatClient, classify, httpx

__all__ = ["EmbedClient", "EmbedReply"]


@dataclass
class EmbedReply:
    """The vectors of one request, row ``i`` for input ``i``, and what the reply said."""

    vectors: np.ndarray  # (inputs, dims) float32
    prompt_tokens: int | None
    headers: Mapping[str, str]
    latency: float


def decode(body: bytes, n_inputs: int) -> tuple[np.ndarray, int | None]:
    """The (n_inputs, dims) float32 matrix of an embeddings reply body, ordered by ``index``,
    and its ``usage.prompt_tokens``. Raises :class:`CallError` for a reply that is not one."""
    try:
        reply = json.loads(body)
        data = reply["data"]
        if not isinstance(data, list) or len(data) != n_inputs:
            raise CallError("server", f"the reply has {len(data)} vectors for {n_inputs} inputs", True)
        rows: list[np.ndarray | None] = [None] * n_inputs
        for item in data:
            index, value = item["index"], item["embedding"]
            if not isinstance(index, int) or not 0 <= index < n_inputs or rows[index] is not None:
                raise CallError("server", f"the reply's index {index!r} is missing, repeated or out of range", True)
            if isinstance(value, str):
                rows[index] = np.frombuffer(base64.b64decode(value), dtype="<f4")
            else:  # a server that ignores encoding_format sends floats
                rows[index] = np.asarray(value, dtype=np.float32)
        usage = reply.get("usage") or {}
        tokens = usage.get("prompt_tokens")
    except CallError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise CallError("server", "unreadable response body (not an embeddings reply)", True) from None
    lengths = {len(row) for row in rows if row is not None}
    if len(lengths) != 1 or 0 in lengths:
        raise CallError("server", f"the reply's vectors differ in length ({sorted(lengths)})", True)
    return np.stack(rows).astype(np.float32, copy=False), tokens if isinstance(tokens, int) else None  # type: ignore[arg-type]


class EmbedClient(ChatClient):
    """Sends embeddings requests for one run (see :class:`~llmframe._client.ChatClient`
    for why a client is built per run, and how a client passed in is reused)."""

    __slots__ = ()

    async def embed(self, texts: Sequence[str], *, model: str, dimensions: int | None) -> EmbedReply:
        """One attempt. Raises :class:`CallError`."""
        body: dict[str, Any] = {"model": model, "input": list(texts), "encoding_format": "base64"}
        if dimensions is not None:
            body["dimensions"] = dimensions
        start = time.monotonic()
        try:
            # The SDK's generic post, as chat requests go (:meth:`ChatClient.complete`): the body is
            # sent as built, not walked string by string as typed arguments are.
            response = await self._client.post("/embeddings", body=body, cast_to=httpx.Response)
            content = response.content
        except Exception as exc:  # classify() re-raises what it does not know
            raise classify(exc, api_key=self._api_key, base_url=self.base_url) from None
        vectors, tokens = decode(content, len(texts))
        return EmbedReply(vectors, tokens, response.headers, time.monotonic() - start)
