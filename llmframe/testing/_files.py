"""``/v1/files``: the fake server's file store, as the Batch API uses it.

``POST /v1/files`` (multipart/form-data with ``purpose`` and ``file``) stores
the bytes and answers a ``FileObject``; ``GET /v1/files/{id}`` answers it
again, ``GET /v1/files/{id}/content`` the bytes, ``DELETE /v1/files/{id}``
removes it. The server's own output and error files of batches live here too
(purpose ``batch_output``). An upload is only checked for its form; the lines
of a batch input file are validated when a batch is created from it, as OpenAI
does. With ``batch_api=False`` every path answers 404, as servers without the
Batch API (vLLM, llama.cpp) do.
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

__all__ = ["Files", "StoredFile", "json_response", "refused"]

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


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
        form = await request.post()
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
        stored = self.add(upload.file.read(), upload.filename or "upload", purpose)
        self._stats._count("files_uploaded")
        return json_response(stored.object())

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
