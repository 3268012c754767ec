"""The Batch API's files: the JSONL input written from requests, the output and error files read.

One input line is one packed request (:class:`~llmframe._requests.Request`), the
very body the live path would send, under a ``custom_id`` the job state maps back
to its rows. Inputs are split into files of at most :data:`MAX_REQUESTS` lines
and :data:`MAX_BYTES` bytes (the Batch API's 50,000 requests and 200 MB). A
result line becomes a :class:`~llmframe._client.Completion` or a
:class:`~llmframe._client.CallError`, classified as the live path classifies an
HTTP error, so the engine treats both alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._capabilities import is_context_overflow
from ._client import CallError, Completion
from ._errors import ConfigError
from ._requests import Request
from ._retry import is_retryable_status

__all__ = ["CHAT_URL", "MAX_BYTES", "MAX_REQUESTS", "Result", "input_line", "read_results", "split_lines"]

#: The most requests and bytes one input file may hold (the Batch API's limits).
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024
#: The endpoint every line targets.
CHAT_URL = "/v1/chat/completions"
#: The error codes of a line the batch never ran: its window passed, or the batch was cancelled.
UNFINISHED_CODES = frozenset({"batch_expired", "batch_cancelled"})


def input_line(custom_id: str, request: Request, model: str) -> bytes:
    """One line of an input file: the body the live path sends (:class:`~llmframe._client.ChatClient`)."""
    body: dict[str, Any] = {"model": model, **request.params, "messages": request.messages}
    extra = body.pop("extra_body", None)
    if isinstance(extra, Mapping):
        body.update(extra)
    if request.response_format is not None:
        body["response_format"] = request.response_format
    line = {"custom_id": custom_id, "method": "POST", "url": CHAT_URL, "body": body}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def split_lines(
    lines: Iterable[tuple[str, bytes]], *, max_requests: int | None = None, max_bytes: int | None = None
) -> list[list[tuple[str, bytes]]]:
    """``(custom_id, line)`` pairs in files of at most ``max_requests`` lines and ``max_bytes``
    bytes (by default :data:`MAX_REQUESTS` and :data:`MAX_BYTES`), in order. A line larger
    than a whole file is refused before anything is sent."""
    max_requests = max_requests or MAX_REQUESTS
    max_bytes = max_bytes or MAX_BYTES
    files: list[list[tuple[str, bytes]]] = []
    current: list[tuple[str, bytes]] = []
    size = 0
    for custom_id, line in lines:
        if len(line) > max_bytes:
            raise ConfigError(f"request {custom_id} takes {len(line):,} bytes, more than a Batch API input file "
                              f"may hold ({max_bytes:,}); shorten its rows or lower batch_size=")  # fmt: skip
        if current and (len(current) >= max_requests or size + len(line) > max_bytes):
            files.append(current)
            current, size = [], 0
        current.append((custom_id, line))
        size += len(line)
    if current:
        files.append(current)
    return files


@dataclass
class Result:
    """One line of an output or error file: a reply, or why there is none."""

    custom_id: str
    completion: Completion | None = None
    error: CallError | None = None
    unfinished: bool = False  # never ran: the batch expired or was cancelled first


def read_results(text: str, latency: float = 0.0) -> dict[str, Result]:
    """The lines of output and error files by ``custom_id`` (they come in any order).
    ``latency``: the seconds to show for each reply (the batch's, one request has none)."""
    found: dict[str, Result] = {}
    for raw in text.splitlines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            custom_id = str(line["custom_id"])
        except (ValueError, KeyError, TypeError):
            continue  # a line without a custom_id cannot be matched to rows: they are asked again
        found[custom_id] = _result(custom_id, line, latency)
    return found


def _result(custom_id: str, line: Mapping[str, Any], latency: float) -> Result:
    error = line.get("error")
    response = line.get("response")
    if isinstance(error, Mapping) and not isinstance(response, Mapping):
        code = str(error.get("code") or "")
        message = str(error.get("message") or code or "the request failed")
        if code in UNFINISHED_CODES:
            return Result(custom_id, error=CallError("expired" if code == "batch_expired" else "cancelled",
                                                     message, True, code=code), unfinished=True)  # fmt: skip
        return Result(custom_id, error=CallError("server", message, True, code=code))
    if not isinstance(response, Mapping):
        return Result(custom_id, error=CallError("server", "a result line with no response", True))
    status = int(response.get("status_code") or 0)
    body = response.get("body")
    if status != 200:
        return Result(custom_id, error=line_error(status, body))
    completion = _completion(body, response.get("request_id"), latency)
    if completion is None:
        return Result(custom_id, error=CallError("server", "unreadable response body (not a chat completion)", True))
    return Result(custom_id, completion=completion)


def _completion(body: Any, request_id: Any, latency: float) -> Completion | None:
    try:
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        content = (choice.get("message") or {}).get("content")
        if not isinstance(content, (str, type(None))):
            return None
        return Completion(
            content=content,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            request_id=str(request_id or body.get("id") or "") or None,
            headers={},
            latency=latency,
        )
    except (KeyError, IndexError, TypeError, AttributeError):
        return None


def line_error(status: int, body: Any) -> CallError:
    """The :class:`CallError` of a line answered with HTTP ``status``, as
    :func:`llmframe._client.classify` makes it for the same answer live."""
    err = body.get("error", body) if isinstance(body, Mapping) else {}
    err = err if isinstance(err, Mapping) else {}
    code = str(err.get("code") or err.get("type") or "") or None
    param = err.get("param") if isinstance(err.get("param"), str) else None
    detail = str(err.get("message") or "no message")
    message = f"HTTP {status}: {detail}"
    if status in (401, 403):
        return CallError("auth", message + " (check the key's access)", False, status, code, fatal=True)
    if status == 404:
        return CallError("endpoint", message + " (check model=)", False, status, code, param=param, fatal=True)
    if code == "context_length_exceeded" or is_context_overflow(status, detail):
        return CallError("too_large", message + " (shorten this row or lower max_tokens)", False, status, code,
                         param=param)  # fmt: skip
    if is_retryable_status(status):
        return CallError("rate_limit" if status == 429 else "server", message, True, status, code, param=param)
    return CallError("bad_request", message, False, status, code, param=param)
