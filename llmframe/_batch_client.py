"""The Batch API's calls: upload, find and delete a file; create, find, retrieve and cancel a batch.

One ``AsyncOpenAI`` per job step, built from the same options as the live
client (``client=``, ``base_url=``, ``api_key=``, the environment), with the
SDK's retries off: a call that fails for a passing reason (5xx, a connection
reset, a 429 rate limit) is tried again here, after the server's retry-after
or a backoff, on the injected ``sleep``. A failure every later call would meet
too is raised as one clear error before anything is charged: a 404 on
``/files`` or ``/batches`` (the endpoint has no Batch API) as
:class:`~llmframe.ConfigError`, a refused key or access (401, 403) as
:class:`~llmframe.AuthenticationError`, a file over the endpoint's size limit
(413) and any other 4xx as :class:`~llmframe.EndpointError`. No message carries
the key or the URL's credentials.

Creating a batch is made safe to repeat: the batch carries a token in its
``metadata``, and before each new attempt after a failure (a 5xx may come
after the batch was made) :meth:`BatchClient.find_batch` looks for a batch with
that token, through ``GET /batches`` newest first, back to when the token was
written down. A file is found again by its name (``GET /files?purpose=batch``).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import openai

from ._batch_jsonl import MAX_BYTES
from ._client import PLACEHOLDER_KEY, CallError, _shown, classify, credentials
from ._errors import AuthenticationError, ConfigError, EndpointError
from ._retry import retry_delay
from ._warn import warn_user

__all__ = ["TOKEN_KEY", "BatchClient", "LimitReached"]

#: Tries of one call that fails for a passing reason (a poll: more, it waits for hours anyway).
TRIES = 4
POLL_TRIES = 10
#: Tries of one call the endpoint keeps answering 429 (rate limited): a pause, not a failure.
RATE_LIMITED_TRIES = 12
#: Error codes (and message words) of a batch refused because too many tokens are enqueued.
LIMIT_CODES = frozenset({"token_limit_exceeded", "enqueued_token_limit"})
#: The ``metadata`` key of the token a batch is found again by.
TOKEN_KEY = "llmframe_batch"
#: Seconds before a token was written down that a lookup still reads (clocks differ).
LOOKBACK = 3600
#: Pages a lookup reads at most (100 batches, 1,000 files each).
LOOKUP_PAGES = 50


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
                    tries: int = TRIES, size: int | None = None) -> Any:  # fmt: skip
        """``make()`` with passing failures tried again; the others raised as clear errors.
        ``limit``: an enqueued-token error, or 429s past :data:`RATE_LIMITED_TRIES`, raise
        :class:`LimitReached`. ``size``: the bytes sent, named by a 413."""
        failures = rate_limited = 0
        while True:
            try:
                return await make()
            except Exception as exc:
                err = exc if isinstance(exc, CallError) else classify(exc, api_key=self._key, base_url=self.base_url)
            where = f"{self.base_url}{path}"
            if err.status == 404:
                raise ConfigError(f"{where} answered HTTP 404 to {what}: this endpoint has no "
                                  "Batch API (or base_url= is wrong); use mode='live'") from None  # fmt: skip
            if err.kind == "auth":
                raise AuthenticationError(f"{what}: {err.message}") from None
            if err.status == 413:
                sent = f"{size:,}-byte file" if size is not None else "request"
                raise EndpointError(f"{what} failed at {where}: the endpoint refused the {sent} as too large "
                                    f"({err.message}). llmframe splits input files at {MAX_BYTES:,} bytes (the "
                                    "Batch API's 200 MB limit); this endpoint, or a proxy in front of it, takes "
                                    "less: submit fewer rows per call") from None  # fmt: skip
            if limit and is_limit(err.code, err.message):
                raise LimitReached(err.message)
            if err.status == 429 and err.retryable:
                rate_limited += 1
                if rate_limited < RATE_LIMITED_TRIES:
                    await self.sleep(retry_delay(rate_limited - 1, err.headers))
                    continue
                if limit:
                    raise LimitReached(err.message)
                raise EndpointError(f"{what} failed at {where} (rate limited {rate_limited} times in a row): "
                                    f"{err.message}") from None  # fmt: skip
            failures += 1
            if not err.retryable or failures >= tries:
                again = f" (after {failures} tries)" if err.retryable else ""
                raise EndpointError(f"{what} failed at {where}{again}: {err.message}") from None
            await self.sleep(retry_delay(failures - 1, err.headers))

    async def upload(self, name: str, data: bytes) -> str:
        """Upload a JSONL input file (purpose ``batch``); its file id."""

        async def make() -> Any:
            return await self._client.files.create(file=(name, data, "application/jsonl"), purpose="batch")

        return str((await self._call("uploading the batch input file", "/files", make, size=len(data))).id)

    async def find_file(self, name: str, since: int) -> str | None:
        """The id of the newest batch input file called ``name`` uploaded since ``since``
        (less :data:`LOOKBACK`), or ``None``."""

        def page(after: dict[str, str]) -> Awaitable[Any]:
            return self._client.files.list(purpose="batch", limit=1000, order="desc", **after)

        found = await self._find("looking up the batch input file", "/files", page, since,
                                 lambda f: bool(f.filename == name))  # fmt: skip
        return None if found is None else str(found.id)

    async def delete_file(self, file_id: str) -> None:
        async def make() -> Any:
            return await self._client.files.delete(file_id)

        await self._call(f"deleting file {file_id}", "/files", make)

    async def create(self, file_id: str, metadata: dict[str, str], *, since: int) -> Any:
        """Create a batch of ``file_id``'s requests (raises :class:`LimitReached`). Every attempt
        after the first looks for a batch with the token of ``metadata`` first: the one before
        may have made it."""
        attempts = 0

        async def make() -> Any:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and (found := await self.find_batch(metadata[TOKEN_KEY], since)) is not None:
                return found
            return await self._client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                                     completion_window="24h", metadata=metadata)  # fmt: skip

        return await self._call("creating the batch", "/batches", make, limit=True)

    async def find_batch(self, token: str, since: int) -> Any | None:
        """The newest batch whose metadata carries ``token``, among those created since
        ``since`` (less :data:`LOOKBACK`), or ``None``."""

        def page(after: dict[str, str]) -> Awaitable[Any]:
            return self._client.batches.list(limit=100, **after)

        return await self._find("looking up the batch", "/batches", page, since,
                                lambda b: (b.metadata or {}).get(TOKEN_KEY) == token)  # fmt: skip

    async def _find(self, what: str, path: str, page: Callable[[dict[str, str]], Awaitable[Any]], since: int,
                    match: Callable[[Any], bool]) -> Any | None:  # fmt: skip
        """The first object of a list (newest first) that ``match``es, read page by page until
        the objects are older than ``since`` less :data:`LOOKBACK`; ``None`` if none does."""
        after: dict[str, str] = {}
        for _ in range(LOOKUP_PAGES):
            got = await self._lookup(what, path, functools.partial(page, after))
            if got is None:
                return None
            for item in got.data:
                if match(item):
                    return item
            if not got.data or not got.has_more or min(i.created_at for i in got.data) < since - LOOKBACK:
                return None
            after = {"after": str(got.data[-1].id)}
        return None

    async def _lookup(self, what: str, path: str, make: Callable[[], Awaitable[Any]]) -> Any | None:
        """A page of a list; ``None`` (and a warning) where the endpoint cannot list."""
        try:
            return await self._call(what, path, make)
        except ConfigError:
            warn_user(f"{self.base_url}{path} cannot be listed (HTTP 404): a batch or file whose id a crash kept "
                      "from being written cannot be found again, and is sent again")  # fmt: skip
            return None

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
