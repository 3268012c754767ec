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

from ._client import CallError, ChatClient, classify

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
        extra: dict[str, Any] = {"input": list(texts)}
        if dimensions is not None:
            extra["dimensions"] = dimensions
        start = time.monotonic()
        try:
            # The inputs travel in extra_body: as a typed argument, the SDK walks every string.
            raw = await self._client.embeddings.with_raw_response.create(
                model=model, input=[], encoding_format="base64", extra_body=extra
            )
            body = raw.http_response.content
        except Exception as exc:  # classify() re-raises what it does not know
            raise classify(exc, api_key=self._api_key, base_url=self.base_url) from None
        vectors, tokens = decode(body, len(texts))
        return EmbedReply(vectors, tokens, raw.headers, time.monotonic() - start)
