"""Reading a request, and every answer that refuses one before any model work.

Each function takes the raw request (or its body) and returns either what
the handler needs or the rejection to send back, in OpenAI's error body
``{"error": {message, type, param, code}}`` and with OpenAI's wording, so
that llmframe's error handling is tested against what real servers say:

- :func:`unauthorized`: 401 ``invalid_api_key``, the key masked as OpenAI does;
- :func:`parse_chat`: 400 for a body that is not a chat request, an
  unsupported ``response_format`` or parameter, a bad ``max_tokens``; 404
  ``model_not_found``; llama-cpp-python's 500 with ``rejects_like="llama.cpp"``;
- :func:`context_exceeded`: 400 ``context_length_exceeded``;
- :func:`parse_embeddings`: 400 for a body that is not an embeddings request;
- :func:`not_found`: 404 for a path the server does not serve.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from aiohttp import web

from llmframe.testing._settings import Settings

__all__ = [
    "ChatRequest",
    "EmbeddingsRequest",
    "bad_request",
    "context_exceeded",
    "error",
    "not_found",
    "parse_chat",
    "parse_embeddings",
    "unauthorized",
]


class ChatRequest(NamedTuple):
    model: str
    messages: list[dict[str, Any]]
    max_out: int | None  # the smaller of max_completion_tokens and max_tokens, if given
    response_format: dict[str, Any] | None = None  # as sent, if it is an object


class EmbeddingsRequest(NamedTuple):
    model: str
    inputs: list[str | list[int]]
    dimensions: int
    as_base64: bool


def error(
    status: int,
    message: str,
    kind: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An error response with OpenAI's body: ``{"error": {message, type, param, code}}``."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


def bad_request(message: str, param: str | None = None, code: str | None = None) -> web.Response:
    return error(400, message, "invalid_request_error", param=param, code=code)


def unauthorized(request: web.Request, keys: tuple[str, ...] | None) -> web.Response | None:
    """OpenAI's 401 unless the bearer key is one of ``keys`` (``None`` accepts any key)."""
    if keys is None:
        return None
    header = request.headers.get("Authorization", "")
    key = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if key in keys:
        return None
    if not key:
        message = (
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    else:
        shown = (
            f"{key[:3]}{'*' * max(0, len(key) - 7)}{key[-4:]}"
            if len(key) > 7
            else "*" * len(key)
        )
        message = (
            f"Incorrect API key provided: {shown}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
    return error(401, message, "invalid_request_error", code="invalid_api_key")


def parse_chat(raw: bytes, settings: Settings) -> ChatRequest | web.Response:
    """What a chat request body asks for, or the rejection."""
    try:
        body = json.loads(raw)
    except ValueError:
        return bad_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly.)"
        )
    if not isinstance(body, dict):
        return bad_request("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return bad_request("you must provide a model parameter", param="model")
    if settings.models is not None and model not in settings.models:
        return error(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            code="model_not_found",
        )
    messages = body.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
    ):
        return bad_request(
            "'messages' must be a non-empty array of objects with a 'role'.", param="messages"
        )
    if body.get("stream"):
        return bad_request("The llmframe fake server does not support 'stream'.", param="stream")
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        supported = {"json_schema": settings.json_schema, "json_object": settings.json_object}
        if not supported.get(str(kind), True):
            if settings.rejects_like == "llama.cpp":
                return _llama_cpp_format_error(kind, [k for k, ok in supported.items() if ok])
            return bad_request(
                f"Invalid parameter: 'response_format' of type '{kind}' is not supported with this model.",
                param="response_format",
            )
    for name in settings.unsupported_params:
        if name in body:
            return bad_request(
                f"Unsupported parameter: '{name}' is not supported with this model.",
                param=name,
                code="unsupported_parameter",
            )
    limits: list[int] = []
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return bad_request(
                f"Invalid '{name}': expected an integer of at least 1, got {value!r}.",
                param=name,
                code="integer_below_min_value",
            )
        limits.append(value)
    return ChatRequest(
        model,
        messages,
        min(limits) if limits else None,
        response_format if isinstance(response_format, dict) else None,
    )


def _llama_cpp_format_error(kind: Any, accepted: list[str]) -> web.Response:
    """llama-cpp-python 0.3's answer to a ``response_format`` type it lacks: a 500 whose
    message is the pydantic validation error, with no ``param``."""
    expected = " or ".join(repr(k) for k in ["text", *accepted])
    message = (
        "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', "
        f"'type'), 'msg': \"Input should be {expected}\", 'input': {kind!r}, 'ctx': "
        f"{{'expected': \"{expected}\"}}}}\n\n  File \"llama_cpp/server/app.py\", line 376, "
        "in create_chat_completion\n    POST /v1/chat/completions"
    )
    return error(500, message, "internal_server_error")


def context_exceeded(context: int, prompt_tokens: int, max_out: int | None) -> web.Response:
    """OpenAI's 400 for a prompt plus ``max_tokens`` beyond the context window."""
    if max_out:
        asked = (
            f"However, you requested {prompt_tokens + max_out} tokens ({prompt_tokens} in the "
            f"messages, {max_out} in the completion). Please reduce the length of the messages "
            "or completion."
        )
    else:
        asked = (
            f"However, your messages resulted in {prompt_tokens} tokens. "
            "Please reduce the length of the messages."
        )
    return bad_request(
        f"This model's maximum context length is {context} tokens. {asked}",
        param="messages",
        code="context_length_exceeded",
    )


def parse_embeddings(raw: bytes) -> EmbeddingsRequest | web.Response:
    """What an embeddings request body asks for, or the rejection."""
    try:
        body = json.loads(raw)
    except ValueError:
        return bad_request("We could not parse the JSON body of your request.")
    if not isinstance(body, dict):
        return bad_request("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return bad_request("You must provide a model parameter.", param="model")
    inputs = _embedding_inputs(body.get("input"))
    if inputs is None:
        return bad_request(
            "'input' must be a string, a list of strings, or token arrays.", param="input"
        )
    dimensions = body.get("dimensions") or (3072 if model.endswith("-large") else 1536)
    if not isinstance(dimensions, int) or not 1 <= dimensions <= 8192:
        return bad_request(
            "'dimensions' must be an integer between 1 and 8192.", param="dimensions"
        )
    return EmbeddingsRequest(model, inputs, dimensions, body.get("encoding_format") == "base64")


def _embedding_inputs(raw: Any) -> list[str | list[int]] | None:
    """The inputs of an embeddings request: one string or token array, or a list of them."""
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list) or not raw:
        return None
    if all(isinstance(x, int) for x in raw):
        return [raw]
    if all(isinstance(x, str) or (isinstance(x, list) and x) for x in raw):
        return list(raw)
    return None


async def not_found(request: web.Request) -> web.StreamResponse:
    """OpenAI's 404 for a path the server does not serve, naming the ones it does."""
    return error(
        404,
        f"Invalid URL ({request.method} {request.path}): the llmframe fake server serves "
        "POST /v1/chat/completions, POST /v1/embeddings and GET /v1/models.",
        "invalid_request_error",
    )
