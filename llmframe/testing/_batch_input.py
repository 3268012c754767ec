"""Reading a batch input file: its request lines, or the errors that fail the batch.

OpenAI checks a batch's input file while the batch is ``validating``, not at
upload: a bad file makes a batch that ends ``failed`` with ``errors.data``, one
``{code, message, param, line}`` per problem (codes as OpenAI's:
``invalid_json_line``, ``missing_required_parameter``, ``duplicate_custom_id``,
``url_mismatch``, ``model_mismatch``, ``empty_file``, ``too_many_tasks``,
``file_too_large``). A line that is well formed but asks for an unknown model
or an unsupported parameter is not an error here: it is answered, in the output
file, with the status and body the live endpoint would send.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from llmframe import _tokens
from llmframe.testing._settings import Settings

__all__ = ["ENDPOINTS", "RequestLine", "estimated_tokens", "read_lines"]

#: The endpoints a batch can target on this server.
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
#: errors.data lists at most this many problems, as OpenAI's does.
MAX_ERRORS = 10


class RequestLine(NamedTuple):
    custom_id: str
    body: dict[str, Any]
    line: int  # from 1, as errors.data counts them


def _problem(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _one(text: str, number: int, endpoint: str) -> RequestLine | dict[str, Any]:
    try:
        request = json.loads(text)
    except ValueError:
        request = None
    if not isinstance(request, dict):
        return _problem("invalid_json_line", "This line is not parseable as valid JSON.", number)
    for name in ("custom_id", "method", "url", "body"):
        if name not in request:
            return _problem(
                "missing_required_parameter", f"Missing required parameter: '{name}'.", number, name
            )
    custom_id, body = request["custom_id"], request["body"]
    if not isinstance(custom_id, str) or not custom_id:
        return _problem(
            "invalid_request", "'custom_id' must be a non-empty string.", number, "custom_id"
        )
    if str(request["method"]).upper() != "POST":
        return _problem("invalid_request", "Only the 'POST' method is supported.", number, "method")
    if request["url"] != endpoint:
        return _problem(
            "url_mismatch",
            f"The provided URL '{request['url']}' does not match the batch endpoint '{endpoint}'.",
            number,
            "url",
        )
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return _problem(
            "missing_required_parameter", "Missing required parameter: 'body.model'.", number,
            "body.model",
        )  # fmt: skip
    return RequestLine(custom_id, body, number)


def read_lines(
    data: bytes, endpoint: str, settings: Settings
) -> list[RequestLine] | list[dict[str, Any]]:
    """The request lines of an input file, or the ``errors.data`` that fail its batch."""
    if len(data) > settings.batch_max_bytes:
        return [_problem("file_too_large", f"The input file is larger than the maximum of "
                         f"{settings.batch_max_bytes} bytes.", None)]  # fmt: skip
    try:
        texts = [t for t in data.decode("utf-8").splitlines() if t.strip()]
    except UnicodeDecodeError:
        return [_problem("invalid_json_line", "The input file is not UTF-8 text.", None)]
    if not texts:
        return [_problem("empty_file", "The input file is empty.", None)]
    if len(texts) > settings.batch_max_requests:
        return [_problem("too_many_tasks", f"The batch holds {len(texts)} requests; the maximum "
                         f"is {settings.batch_max_requests}.", None)]  # fmt: skip
    lines: list[RequestLine] = []
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    for number, text in enumerate(texts, 1):
        read = _one(text, number, endpoint)
        if isinstance(read, dict):
            problems.append(read)
            continue
        if read.custom_id in seen:
            problems.append(_problem("duplicate_custom_id", f"The custom_id '{read.custom_id}' "
                                     "is not unique within the batch.", number, "custom_id"))  # fmt: skip
            continue
        seen.add(read.custom_id)
        model = model or read.body["model"]
        if read.body["model"] != model:
            problems.append(_problem("model_mismatch", "Every request in a batch must use the "
                                     f"same model ('{model}').", number, "body.model"))  # fmt: skip
            continue
        lines.append(read)
    return problems[:MAX_ERRORS] if problems else lines


def estimated_tokens(lines: list[RequestLine]) -> int:
    """The prompt tokens the lines enqueue, as counted against the enqueued token limit."""
    total = 0
    for line in lines:
        tokenizer = _tokens.get_tokenizer(line.body["model"])
        messages = line.body.get("messages")
        if isinstance(messages, list):
            total += _tokens.count_messages([m for m in messages if isinstance(m, dict)], tokenizer)
        inputs = line.body.get("input")
        for item in [inputs] if isinstance(inputs, str) else inputs or []:
            total += tokenizer.count(item) if isinstance(item, str) else 1
    return total
