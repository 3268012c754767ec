"""``/v1/files``: the fake server's file store, as the Batch API uses it.

``POST /v1/files`` (multipart/form-data with ``purpose`` and ``file``) stores
the bytes and answers a ``FileObject``; ``GET /v1/files`` lists them, newest
first (``purpose``, ``order``, ``limit``, ``after``; ``has_more``);
``GET /v1/files/{id}`` answers one again, ``GET /v1/files/{id}/content`` its
bytes, ``DELETE /v1/files/{id}`` removes it. The server's own output and error
files of batches live here too (purpose ``batch_output``). An upload is checked
for its form (and a ``batch`` file for its ``.jsonl`` name, as OpenAI does); the
lines of a batch input file are validated when a batch is created from it. An
upload may reach :data:`MAX_UPLOAD_BYTES` (OpenAI's 512 MB per file), more than
the server takes on other paths, so that a 200 MB batch input file meets the
Batch API's own check, not a 413. With ``batch_api=False`` every path answers
404, as servers without the Batch API (vLLM, llama.cpp) do.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from llmframe.testing._requests import bad_request, error, not_found, unauthorized
from llmframe.testing._settings import Settings
from llmframe.testing._stats import ServerStats

__all__ = ["MAX_UPLOAD_BYTES", "Files", "StoredFile", "json_response", "listed", "refused"]

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
#: The largest upload body (OpenAI takes files up to 512 MB); above it, a 413.
MAX_UPLOAD_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class StoredFile:
    id: str
    data: bytes
    filename: str
    purpose: str
    created_at: int

    def object(self) -> dict[str, Any]:
        """The ``FileObject`` the API answers for this file."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json"
    )


def listed(objects: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """The first ``limit`` of ``objects`` as a page of a list, as OpenAI's list endpoints answer."""
    page = objects[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(objects) > limit,
    }


async def refused(request: web.Request, settings: Settings) -> web.StreamResponse | None:
    """The 404 of a server without the Batch API, or the 401 of a bad key; else ``None``."""
    if not settings.batch_api:
        return await not_found(request)
    return unauthorized(request, settings.api_keys)


def _missing(file_id: str) -> web.Response:
    return error(404, f"No such File object: {file_id}", "invalid_request_error", param="id")


class Files:
    """The stored files, by id; thread-safe, so tests may read them from any thread."""

    def __init__(self, settings: Callable[[], Settings], stats: ServerStats) -> None:
        self._settings = settings
        self._stats = stats
        self._files: dict[str, StoredFile] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def add(self, data: bytes, filename: str, purpose: str) -> StoredFile:
        with self._lock:
            stored = StoredFile(
                f"file-fake{next(self._ids):020x}", data, filename, purpose, int(time.time())
            )
            self._files[stored.id] = stored
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        with self._lock:
            return self._files.get(file_id)

    # ------------------------------------------------------------ handlers

    async def upload(self, request: web.Request) -> web.StreamResponse:
        denied = await refused(request, self._settings())
        if denied is not None:
            return denied
        if not request.content_type.startswith("multipart/form-data"):
            return bad_request(
                "Invalid request: expected a multipart/form-data body with 'purpose' and 'file'."
            )
        request = request.clone(client_max_size=MAX_UPLOAD_BYTES)  # read at request time: tests lower it
        try:
            form = await request.post()
        except web.HTTPRequestEntityTooLarge:
            return error(
                413,
                f"The file is too large: uploads take at most {MAX_UPLOAD_BYTES:,} bytes.",
                "invalid_request_error",
                param="file",
            )
        purpose = form.get("purpose")
        if not isinstance(purpose, str) or not purpose:
            return bad_request("Missing required parameter: 'purpose'.", param="purpose")
        if purpose not in PURPOSES:
            return bad_request(
                f"'{purpose}' is not one of {list(PURPOSES)} - 'purpose'", param="purpose"
            )
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return bad_request("Missing required parameter: 'file'.", param="file")
        if purpose == "batch" and not (upload.filename or "").endswith(".jsonl"):
            return bad_request("Invalid file format for Batch API. Must be .jsonl", param="file")
        stored = self.add(upload.file.read(), upload.filename or "upload", purpose)
        self._stats._count("files_uploaded")
        return json_response(stored.object())

    async def list(self, request: web.Request) -> web.StreamResponse:
        denied = await refused(request, self._settings())
        if denied is not None:
            return denied
        query = request.query
        try:
            limit = max(1, min(10_000, int(query.get("limit", "10000"))))
        except ValueError:
            return bad_request("'limit' must be an integer.", param="limit")
        with self._lock:
            stored = list(self._files.values())  # oldest first (ids grow)
        if query.get("order", "desc") == "desc":
            stored.reverse()
        if "purpose" in query:
            stored = [f for f in stored if f.purpose == query["purpose"]]
        after = query.get("after")
        if after is not None:
            ids = [f.id for f in stored]
            stored = stored[ids.index(after) + 1 :] if after in ids else []
        return json_response(listed([f.object() for f in stored], limit))

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        found = await self._found(request)
        return found if isinstance(found, web.StreamResponse) else json_response(found.object())

    async def content(self, request: web.Request) -> web.StreamResponse:
        found = await self._found(request)
        if isinstance(found, web.StreamResponse):
            return found
        return web.Response(body=found.data, content_type="application/octet-stream")

    async def delete(self, request: web.Request) -> web.StreamResponse:
        found = await self._found(request)
        if isinstance(found, web.StreamResponse):
            return found
        with self._lock:
            self._files.pop(found.id, None)
        return json_response({"id": found.id, "object": "file", "deleted": True})

    async def _found(self, request: web.Request) -> StoredFile | web.StreamResponse:
        """The file the path names, or the 404 (401, or 404 without the Batch API)."""
        denied = await refused(request, self._settings())
        if denied is not None:
            return denied
        stored = self.get(request.match_info["file_id"])
        return _missing(request.match_info["file_id"]) if stored is None else stored
