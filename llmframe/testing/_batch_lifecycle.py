"""One batch's life on the fake server, on an accelerated clock.

``validating`` lasts ``batch_validate_seconds``; a batch whose input file is
bad (see ``_batch_input``) or would pass ``batch_enqueued_tpd`` then ends
``failed`` with ``errors.data``. Otherwise it goes ``in_progress`` for
``batch_seconds``, its lines finishing one after another, spread evenly, in a
seeded shuffled order (which is the order of the output file); then
``finalizing`` for ``batch_validate_seconds``, and ``completed``.

Each line is answered by the same code as the live endpoint (``_completion``),
so it gets the very body a live request would, but outside the live RPM/TPM
buckets. As OpenAI does, a line answered 200 goes to the output file, and a
line answered otherwise (a 4xx of the live endpoint, or a ``batch_error_rate``
500) goes to the error file with its ``response``; both count in
``request_counts``. ``batch_broken_rate`` damages a packed line's answer with
one of the packing faults (an id dropped, wrong or doubled).

``batch_expire_rate`` of the lines are never reached: the batch ends
``expired`` and they go to the error file with ``response: null`` and the
error code ``batch_expired``. A cancel (``cancelling``) stops the lines not yet
done, which go to the error file with code ``batch_cancelled``; the batch ends
``cancelled``, its done lines in the output file. Neither kind counts in
``request_counts.failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from llmframe.testing._batch_input import RequestLine
from llmframe.testing._completion import complete, completion_body, measure
from llmframe.testing._embeddings import embeddings_body
from llmframe.testing._faults import Faults
from llmframe.testing._files import Files
from llmframe.testing._requests import parse_chat, parse_embeddings
from llmframe.testing._settings import Settings

__all__ = ["BatchJob", "run_batch"]

#: The packing faults a broken batch line may get: each leaves an id missing, wrong or doubled.
BROKEN_KINDS = ("drop", "wrong_id", "duplicate")
_TIMES = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
          "cancelling_at", "cancelled_at")  # fmt: skip
SERVER_ERROR = {
    "error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}
UNFINISHED = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was not executed because the batch was cancelled.",
}
DAY = 24 * 3600


class BatchJob:
    """One batch: the fields of its ``Batch`` object, written on the server's loop and
    read from any thread through :meth:`object`."""

    def __init__(self, batch_id: str, request: dict[str, Any], lines: list[RequestLine]) -> None:
        self.id = batch_id
        self.request = request  # input_file_id, endpoint, completion_window, metadata
        self.lines = lines
        self.created_at = int(time.time())
        self.model: str | None = lines[0].body["model"] if lines else None
        self.status = "validating"
        self.times: dict[str, int | None] = dict.fromkeys(_TIMES)
        self.errors: list[dict[str, Any]] | None = None
        self.tokens = 0  # what it holds of batch_enqueued_tpd while it runs
        self.counts = {"total": 0, "completed": 0, "failed": 0}
        self.output_file_id: str | None = None
        self.error_file_id: str | None = None
        self.cancel = asyncio.Event()
        #: Set once the batch reaches a final status (completed, failed, expired, cancelled).
        self.finished = threading.Event()
        self._lock = threading.Lock()

    def update(self, status: str | None = None, **fields: Any) -> None:
        with self._lock:
            if self.status == "cancelling" and status not in (None, "cancelled"):
                status = None  # a cancelled batch only goes on to cancelled
            if status is not None:
                self.status = status
                stamp = {"cancelling": "cancelling_at"}.get(status, f"{status}_at")
                if stamp in self.times:
                    self.times[stamp] = int(time.time())
            for name, value in fields.items():
                setattr(self, name, value)

    def count(self, ok: bool) -> None:
        with self._lock:
            self.counts["completed" if ok else "failed"] += 1

    def object(self) -> dict[str, Any]:
        """The ``Batch`` object the API answers for this batch."""
        with self._lock:
            errors = None if self.errors is None else {"object": "list", "data": list(self.errors)}
            return {
                "id": self.id,
                "object": "batch",
                "endpoint": self.request["endpoint"],
                "model": self.model,
                "errors": errors,
                "input_file_id": self.request["input_file_id"],
                "completion_window": self.request["completion_window"],
                "status": self.status,
                "output_file_id": self.output_file_id,
                "error_file_id": self.error_file_id,
                "created_at": self.created_at,
                "expires_at": self.created_at + DAY,
                **self.times,
                "request_counts": dict(self.counts),
                "metadata": self.request.get("metadata"),
            }


async def _pause(job: BatchJob, seconds: float) -> None:
    """Sleep ``seconds``, or less if the batch is cancelled meanwhile; at least yield, so
    that a long batch never holds up the live requests on the same loop."""
    if seconds > 0 and not job.cancel.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(job.cancel.wait(), seconds)
    else:
        await asyncio.sleep(0)


def _answer(line: RequestLine, endpoint: str, settings: Settings, faults: Faults,
            rng: random.Random, number: int) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """The status and body the live endpoint would answer to the line's body."""
    raw = json.dumps(line.body).encode()
    if endpoint == "/v1/embeddings":
        request = parse_embeddings(raw)
        answered = (
            request
            if isinstance(request, web.Response)
            else embeddings_body(request, settings, number, rng)
        )
    else:
        chat = parse_chat(raw, settings)
        if isinstance(chat, web.Response):
            answered = chat
        else:
            prompt_tokens, _, too_long = measure(chat, settings)
            done = (
                complete(chat, settings, faults, rng, prompt_tokens)
                if too_long is None
                else too_long
            )
            answered = (
                done
                if isinstance(done, web.Response)
                else completion_body(number, chat.model, done)
            )
    if isinstance(answered, web.Response):
        assert isinstance(answered.body, bytes)
        return answered.status, json.loads(answered.body)
    return 200, answered


def _write(files: Files, job: BatchJob, kind: str, lines: list[dict[str, Any]]) -> str | None:
    if not lines:
        return None
    data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
    return files.add(data, f"{job.id}_{kind}.jsonl", "batch_output").id


async def run_batch(job: BatchJob, files: Files, settings: Callable[[], Settings],
                    rng: random.Random, numbers: Callable[[], int]) -> None:  # fmt: skip
    """Take ``job`` from ``validating`` to its final status; ``numbers`` gives response ids."""
    try:
        await _run(job, files, settings, rng, numbers)
    finally:
        job.finished.set()


async def _run(job: BatchJob, files: Files, settings: Callable[[], Settings],
               rng: random.Random, numbers: Callable[[], int]) -> None:  # fmt: skip
    now = settings()
    await _pause(job, now.batch_validate_seconds)
    if job.errors is not None:
        job.update("cancelled" if job.cancel.is_set() else "failed")
        return
    job.counts["total"] = len(job.lines)
    job.update("in_progress")  # (a batch cancelled while validating stays cancelling)
    order = list(job.lines)
    rng.shuffle(order)
    unreached = round(len(order) * now.batch_expire_rate)
    reached = order[: len(order) - unreached]
    output: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    start, step = loop.time(), now.batch_seconds / max(1, len(reached))
    done = 0  # lines answered
    for line in reached:
        await _pause(job, start + (done + 1) * step - loop.time())
        if job.cancel.is_set():
            break
        current = settings()
        number = numbers()
        if rng.random() < current.batch_error_rate:
            status, body = 500, SERVER_ERROR
        else:
            broken = rng.random() < current.batch_broken_rate
            kind = rng.choice(BROKEN_KINDS)
            faults = Faults(**{f"{kind}_rate": 1.0}) if broken else Faults()
            status, body = _answer(line, job.request["endpoint"], current, faults, rng, number)
        entry = {"id": f"batch_req_fake{number:020x}", "custom_id": line.custom_id,
                 "response": {"status_code": status, "request_id": f"req_{number:032x}", "body": body},
                 "error": None}  # fmt: skip
        (output if status == 200 else failed).append(entry)
        job.count(status == 200)
        done += 1
    cancelled = job.cancel.is_set()
    code = "batch_cancelled" if cancelled else "batch_expired"
    for line in (reached[done:] if cancelled else []) + order[len(reached) :]:
        failed.append({"id": f"batch_req_fake{numbers():020x}", "custom_id": line.custom_id,
                       "response": None, "error": {"code": code, "message": UNFINISHED[code]}})  # fmt: skip
    if not cancelled:
        job.update("finalizing")
        await _pause(job, now.batch_validate_seconds)
    job.update(output_file_id=_write(files, job, "output", output),
               error_file_id=_write(files, job, "error", failed))  # fmt: skip
    # A cancel that came while finalizing still ends the batch cancelled, every line done.
    final = "cancelled" if job.cancel.is_set() else "expired" if unreached else "completed"
    job.update(final)
