"""The Batch API's calls: upload a file, create, retrieve and cancel a batch, download a file.

One ``AsyncOpenAI`` per job step, built from the same options as the live
client (``client=``, ``base_url=``, ``api_key=``, the environment), with the
SDK's retries off: a call that fails for a passing reason (5xx, a connection
reset) is tried again here, with backoff on the injected ``sleep``. A failure
every later call would meet too is raised as one clear error before anything
is charged: a 404 on ``/files`` or ``/batches`` (the endpoint has no Batch API)
as :class:`~llmframe.ConfigError`, a refused key as
:class:`~llmframe.AuthenticationError`, any other 4xx as
:class:`~llmframe.EndpointError`. No message carries the key or the URL's
credentials.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import openai

from ._client import PLACEHOLDER_KEY, CallError, _shown, classify, credentials
from ._errors import AuthenticationError, ConfigError, EndpointError

__all__ = ["BatchClient", "LimitReached"]

#: Tries of one call that fails for a passing reason (a poll: more, it waits for hours anyway).
TRIES = 4
POLL_TRIES = 10
#: Error codes (and message words) of a batch refused because too many tokens are enqueued.
LIMIT_CODES = frozenset({"token_limit_exceeded", "enqueued_token_limit", "rate_limit_exceeded"})


class LimitReached(Exception):
    """The endpoint's enqueued-token limit is reached: submit when earlier batches finish."""


def is_limit(code: str | None, message: str) -> bool:
    return (code or "") in LIMIT_CODES or "enqueued token" in message.lower()


class BatchClient:
    __slots__ = ("_client", "_key", "_owned", "base_url", "sleep")

    def __init__(self, *, client: Any = None, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, sleep: Callable[[float], Awaitable[None]]) -> None:  # fmt: skip
        self.sleep = sleep
        if client is not None:
            self._client = client.with_options(max_retries=0, timeout=timeout)
            self._key, self._owned = getattr(client, "api_key", None), False
        else:
            url, key = credentials(base_url, api_key)
            if key == PLACEHOLDER_KEY and url is None:
                raise ConfigError("no API key for OpenAI's Batch API: set OPENAI_API_KEY or pass api_key=")
            self._client = openai.AsyncOpenAI(api_key=key, base_url=url, max_retries=0, timeout=timeout)
            self._key, self._owned = key, True
        self.base_url = _shown(str(self._client.base_url)).rstrip("/")

    async def aclose(self) -> None:
        if self._owned:
            await self._client.close()

    async def _call(self, what: str, path: str, make: Callable[[], Awaitable[Any]], *, limit: bool = False,
                    tries: int = TRIES) -> Any:  # fmt: skip
        """``make()`` with passing failures tried again; the others raised as clear errors.
        ``limit``: a 429 or an enqueued-token error raises :class:`LimitReached`."""
        for attempt in range(tries):
            try:
                return await make()
            except Exception as exc:
                err = exc if isinstance(exc, CallError) else classify(exc, api_key=self._key, base_url=self.base_url)
            if err.status == 404:
                raise ConfigError(f"{self.base_url}{path} answered HTTP 404 to {what}: this endpoint has no "
                                  "Batch API (or base_url= is wrong); use mode='live'") from None  # fmt: skip
            if err.kind == "auth":
                raise AuthenticationError(f"{what}: {err.message}") from None
            if limit and (err.status == 429 or is_limit(err.code, err.message)):
                raise LimitReached(err.message)
            if not err.retryable or attempt == tries - 1:
                raise EndpointError(f"{what} failed at {self.base_url}{path}: {err.message}") from None
            await self.sleep(min(0.5 * 2**attempt, 8.0) * (1 - 0.25 * random.random()))
        raise AssertionError("unreachable")  # pragma: no cover

    async def upload(self, name: str, data: bytes) -> str:
        """Upload a JSONL input file (purpose ``batch``); its file id."""

        async def make() -> Any:
            return await self._client.files.create(file=(name, data, "application/jsonl"), purpose="batch")

        return str((await self._call("uploading the batch input file", "/files", make)).id)

    async def create(self, file_id: str, metadata: dict[str, str]) -> Any:
        """Create a batch of ``file_id``'s requests (raises :class:`LimitReached`)."""

        async def make() -> Any:
            return await self._client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                                     completion_window="24h", metadata=metadata)  # fmt: skip

        return await self._call("creating the batch", "/batches", make, limit=True)

    async def retrieve(self, batch_id: str) -> Any:
        async def make() -> Any:
            return await self._client.batches.retrieve(batch_id)

        return await self._call(f"polling batch {batch_id}", "/batches", make, tries=POLL_TRIES)

    async def cancel(self, batch_id: str) -> Any:
        async def make() -> Any:
            return await self._client.batches.cancel(batch_id)

        return await self._call(f"cancelling batch {batch_id}", "/batches", make)

    async def content(self, file_id: str | None) -> str:
        """The text of an output or error file ('' for none)."""
        if not file_id:
            return ""

        async def make() -> Any:
            return await self._client.files.content(file_id)

        return str((await self._call(f"downloading file {file_id}", "/files", make)).text)
