"""The model's side of one chat request: its answer, usage and response body.

Both the live endpoint (``_chat``) and the Batch API (``_batch_lifecycle``)
answer a chat request body with these functions, so that a request sent in a
batch gets exactly the body it would get live: the same ``answer_fn``, packing,
schema and lines formats, degrading model and ``max_tokens`` cut. Limits,
latency and transport faults are the caller's business.
"""

from __future__ import annotations

import random
import time
from typing import Any, NamedTuple

from aiohttp import web

from llmframe import _tokens
from llmframe.testing._faults import Faults
from llmframe.testing._model import expected_answer, parse_packed, truncate_to_tokens
from llmframe.testing._packed import answer_packed
from llmframe.testing._requests import ChatRequest, bad_request, context_exceeded
from llmframe.testing._schema import SchemaError
from llmframe.testing._settings import Settings
from llmframe.testing._structured import answer_one_row, packed_item

__all__ = ["Completion", "complete", "completion_body", "measure"]


class Completion(NamedTuple):
    """One generated answer: its text and what the request log and counters record."""

    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    n_items: int  # rows carried: 1, or the items of a packed request
    applied: list[str]  # the packing faults that damaged it
    degraded: int  # packed items the degrading model answered wrong on purpose


def measure(request: ChatRequest, settings: Settings) -> tuple[int, int, web.Response | None]:
    """The prompt tokens of ``request``, its estimate (prompt plus ``max_tokens``), and
    the ``400`` if that does not fit ``model_context``."""
    tokenizer = _tokens.get_tokenizer(request.model)
    prompt_tokens = _tokens.count_messages(request.messages, tokenizer)
    estimate = prompt_tokens + (request.max_out or 0)
    if estimate > settings.model_context:
        return (
            prompt_tokens,
            estimate,
            context_exceeded(settings.model_context, prompt_tokens, request.max_out),
        )
    return prompt_tokens, estimate, None


def complete(
    request: ChatRequest,
    settings: Settings,
    faults: Faults,
    rng: random.Random,
    prompt_tokens: int,
) -> Completion | web.Response:
    """The answer to ``request`` with the packing ``faults`` drawn from ``rng``, or the
    ``400`` for a JSON schema that cannot be answered."""
    tokenizer = _tokens.get_tokenizer(request.model)
    messages, response_format = request.messages, request.response_format
    answer_fn = settings.answer_fn or expected_answer
    packed = parse_packed(messages)
    applied: list[str] = []
    degraded = 0
    try:
        if packed is None:
            content = answer_one_row(messages, response_format, answer_fn)
        else:
            content, applied, degraded = answer_packed(
                packed,
                answer_fn,
                faults,
                rng,
                settings.degrade,
                packed_item(messages, response_format),
            )
    except SchemaError as exc:
        return bad_request(f"Invalid schema: {exc}", param="response_format")
    finish_reason = "length" if "truncate" in applied else "stop"
    if request.max_out is not None:
        cut = truncate_to_tokens(content, request.max_out, tokenizer.count)
        if cut != content:
            content, finish_reason = cut, "length"
    return Completion(
        content,
        finish_reason,
        prompt_tokens,
        tokenizer.count(content),
        1 if packed is None else len(packed.items),
        applied,
        degraded,
    )


def completion_body(number: int, model: str, completion: Completion) -> dict[str, Any]:
    """The ``chat.completion`` object of the ``number``-th answer."""
    usage = completion.prompt_tokens + completion.completion_tokens
    return {
        "id": f"chatcmpl-fake{number:016x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.content, "refusal": None},
                "logprobs": None,
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": usage,
        },
        "system_fingerprint": "fp_llmframe_fake",
    }
