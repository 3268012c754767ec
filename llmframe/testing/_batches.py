"""``/v1/batches``: OpenAI's Batch API on the fake server.

``POST /v1/batches`` (``input_file_id``, ``endpoint``, ``completion_window``,
``metadata``: at most 16 string pairs, echoed back in every ``Batch``) answers a
``Batch`` in ``validating`` and starts its life on the server's loop (see
``_batch_lifecycle``); ``GET /v1/batches/{id}`` answers it as it is now,
``POST /v1/batches/{id}/cancel`` cancels it, ``GET /v1/batches`` lists them,
newest first (``limit``, ``after``; ``has_more``). The input file is read when
the batch is created (see ``_batch_input``) but a bad one, or one that would
pass ``batch_enqueued_tpd`` with the batches still running, only shows once
``validating`` is over: the batch ends ``failed`` with ``errors.data``, as
OpenAI's does.

Like the live endpoints, every path answers 401 to a bad key, and with
``batch_api=False`` 404, before anything else (a client can probe with
``GET /v1/batches`` before it uploads anything).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from aiohttp import web

from llmframe.testing._batch_input import ENDPOINTS, estimated_tokens, read_lines
from llmframe.testing._batch_lifecycle import BatchJob, run_batch
from llmframe.testing._files import Files, json_response, listed, refused
from llmframe.testing._handler import Handler
from llmframe.testing._requests import bad_request, error
from llmframe.testing._settings import Settings
from llmframe.testing._stats import ServerStats

__all__ = ["Batches"]

_RUNNING = ("validating", "in_progress", "finalizing", "cancelling")


class Batches(Handler):
    """The batches endpoints and every batch created; :meth:`jobs` is for tests."""

    def __init__(
        self, settings: Callable[[], Settings], stats: ServerStats, seed: int, files: Files
    ) -> None:
        super().__init__(settings, stats, seed)
        self._files = files
        self._jobs: dict[str, BatchJob] = {}
        self._ids = itertools.count(1)
        self._numbers = itertools.count(1)

    def jobs(self) -> list[BatchJob]:
        """Every batch created, oldest first."""
        return list(self._jobs.values())

    def wait(self, batch_id: str, timeout: float) -> dict[str, Any]:
        """The batch's ``Batch`` object once it reaches a final status (from any thread)."""
        job = self._jobs.get(batch_id)
        if job is None:
            raise KeyError(f"no batch {batch_id!r} on this server")
        if not job.finished.wait(timeout):
            raise TimeoutError(f"batch {batch_id} is still {job.status} after {timeout} s")
        return job.object()

    def _enqueued(self) -> int:
        return sum(job.tokens for job in self._jobs.values() if job.status in _RUNNING)

    async def create(self, request: web.Request) -> web.StreamResponse:
        settings = self._settings()
        denied = await refused(request, settings)
        if denied is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return bad_request("The request body must be a JSON object.")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str):
                return bad_request(f"Missing required parameter: '{name}'.", param=name)
        if body["endpoint"] not in ENDPOINTS:
            return bad_request(
                f"Invalid value: '{body['endpoint']}'. Supported values are: {list(ENDPOINTS)}.",
                param="endpoint",
            )
        if body["completion_window"] != "24h":
            return bad_request(
                f"Invalid value: '{body['completion_window']}'. Supported values are: '24h'.",
                param="completion_window",
            )
        problem = _bad_metadata(body.get("metadata"))
        if problem is not None:
            return bad_request(problem, param="metadata")
        stored = self._files.get(body["input_file_id"])
        if stored is None:
            return error(
                404,
                f"No such File object: {body['input_file_id']}",
                "invalid_request_error",
                param="input_file_id",
            )
        if stored.purpose != "batch":
            return bad_request(
                f"File {stored.id} has purpose '{stored.purpose}'; a batch needs purpose 'batch'.",
                param="input_file_id",
            )
        read = read_lines(stored.data, body["endpoint"], settings)
        request_fields = {key: body.get(key) for key in
                          ("input_file_id", "endpoint", "completion_window", "metadata")}  # fmt: skip
        batch_id = f"batch_fake{next(self._ids):020x}"
        lines = [line for line in read if not isinstance(line, dict)]
        job = BatchJob(batch_id, request_fields, lines)
        if len(lines) != len(read):
            job.errors = [problem for problem in read if isinstance(problem, dict)]
        else:
            tokens = estimated_tokens(lines)
            limit = settings.batch_enqueued_tpd
            if limit is not None and tokens + self._enqueued() > limit:
                job.errors = [_token_limit(limit, tokens, self._enqueued())]
            else:
                job.tokens = tokens
        self._jobs[batch_id] = job
        self._stats._batch(batch_id, [] if job.errors else [line.custom_id for line in lines])
        task = asyncio.create_task(
            run_batch(job, self._files, self._settings, self._rng, lambda: next(self._numbers))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return json_response(job.object())

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        found = await self._job(request)
        return found if isinstance(found, web.StreamResponse) else json_response(found.object())

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        found = await self._job(request)
        if isinstance(found, web.StreamResponse):
            return found
        if found.status not in ("validating", "in_progress", "finalizing"):
            return error(
                409,
                f"Cannot cancel a batch with status '{found.status}'.",
                "invalid_request_error",
            )
        found.update("cancelling")
        found.cancel.set()
        return json_response(found.object())

    async def list(self, request: web.Request) -> web.StreamResponse:
        denied = await refused(request, self._settings())
        if denied is not None:
            return denied
        try:
            limit = max(1, min(100, int(request.query.get("limit", "20"))))
        except ValueError:
            return bad_request("'limit' must be an integer.", param="limit")
        jobs = self.jobs()[::-1]  # newest first
        after = request.query.get("after")
        if after is not None:
            ids = [job.id for job in jobs]
            jobs = jobs[ids.index(after) + 1 :] if after in ids else []
        return json_response(listed([job.object() for job in jobs], limit))

    async def _job(self, request: web.Request) -> BatchJob | web.StreamResponse:
        denied = await refused(request, self._settings())
        if denied is not None:
            return denied
        batch_id = request.match_info["batch_id"]
        job = self._jobs.get(batch_id)
        if job is None:
            return error(
                404, f"No batch found with id '{batch_id}'.", "invalid_request_error", param="id"
            )
        return job


def _bad_metadata(metadata: Any) -> str | None:
    """What is wrong with a batch's ``metadata`` (OpenAI's limits), or ``None``."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        return "Invalid type for 'metadata': expected an object of string keys and string values."
    if len(metadata) > 16:
        return f"Invalid 'metadata': too many properties. Expected at most 16, got {len(metadata)}."
    for key, value in metadata.items():
        if len(key) > 64:
            return f"Invalid 'metadata': key {key[:20]!r}... is longer than 64 characters."
        if len(value) > 512:
            return f"Invalid 'metadata': the value of {key!r} is longer than 512 characters."
    return None


def _token_limit(limit: int, tokens: int, enqueued: int) -> dict[str, Any]:
    return {
        "code": "token_limit_exceeded",
        "message": (
            f"Enqueued token limit reached. Limit: {limit} enqueued tokens. This batch holds "
            f"{tokens} tokens and {enqueued} are already enqueued in batches in progress. "
            "Please try again once some in-progress batches have been completed."
        ),
        "param": None,
        "line": None,
    }
