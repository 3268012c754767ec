"""The fake model: deterministic, verifiable answers to chat requests.

The answer to a prompt is a pure function of the prompt (:func:`expected_answer`
by default, or the server's ``answer_fn``), so a test can compute what every row
should get without asking the server.

A **one-row request** (an optional system message and a user message) is
answered with ``answer_fn(user_message)``.

A **packed request** is recognised by its format (``llmframe._packing``
describes it): the last ``<task>`` block of the system message holds the
template, and the user message holds one JSON object per line, each with an
integer ``"id"`` and the item's fields. This module parses that format on its
own, without importing ``llmframe._packing``, so that it checks the packing code
instead of sharing its mistakes. Each item's template is rendered with
``str.format_map`` and answered exactly as the one-row request of the rendered
prompt would be; the reply is the compact JSON object ``{"0":"...","1":"..."}``.
A template field missing from an item (or a template that does not render)
gets the answer ``"?"``, as a model would guess.

The degrading model of :mod:`llmframe.testing._degrade` (wrong answers that
grow more likely with the number of items, a shift by one row) is applied
first, to the answers; the packing faults of :mod:`llmframe.testing._faults`
then damage the list of ``(id, answer)`` pairs and the JSON text.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmframe.testing._degrade import Degrade, degrade_answers
from llmframe.testing._faults import PACKING_FAULTS, Faults

__all__ = [
    "UNKNOWN_ANSWER",
    "AnswerFn",
    "PackedRequest",
    "answer_packed",
    "expected_answer",
    "message_text",
    "one_row_prompt",
    "parse_packed",
    "render_item",
    "truncate_to_tokens",
]

AnswerFn = Callable[[str], str]

#: What a model "guesses" when the template names a field the item lacks.
UNKNOWN_ANSWER = "?"

_TASK_OPEN = "<task>\n"
_TASK_CLOSE = "\n</task>"


def expected_answer(prompt: str) -> str:
    """The fake model's default answer to ``prompt``: short, deterministic, distinct.

    Eight characters (a few tokens), derived from a hash of the prompt, so two
    different prompts practically never share an answer and a misassigned
    answer is caught.

    Example::

        >>> from llmframe.testing import expected_answer
        >>> expected_answer("Classify: great value") == expected_answer("Classify: great value")
        True
        >>> len(expected_answer("anything"))
        8
    """
    digest = hashlib.blake2b(prompt.encode("utf-8", "surrogatepass"), digest_size=4)
    return "a" + digest.hexdigest()[:7]


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a chat message, whether ``content`` is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""


@dataclass(frozen=True)
class PackedRequest:
    """A parsed packed request: the task template and the items, in request order."""

    template: str
    items: list[tuple[int, dict[str, Any]]]


def _task_template(system: str) -> str | None:
    end = system.rfind(_TASK_CLOSE)
    if end < 0:
        return None
    start = system.rfind(_TASK_OPEN, 0, end + 1)
    if start < 0:
        return None
    return system[start + len(_TASK_OPEN) : end]


def _parse_items(text: str) -> list[tuple[int, dict[str, Any]]] | None:
    items: list[tuple[int, dict[str, Any]]] = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            return None
        if not isinstance(item, dict):
            return None
        item_id = item.pop("id", None)
        # bool is an int in Python, but never a valid id.
        if not isinstance(item_id, int) or isinstance(item_id, bool):
            return None
        items.append((item_id, item))
    return items or None


def parse_packed(messages: Sequence[Mapping[str, Any]]) -> PackedRequest | None:
    """The packed request in ``messages``, or ``None`` if it is a one-row request.

    A request is packed when a system (or developer) message has a
    ``<task>`` block and every non-blank line of the last user message is a
    JSON object with an integer ``"id"``.
    """
    template = None
    user = None
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            found = _task_template(message_text(message))
            if found is not None:
                template = found
        elif role == "user":
            user = message_text(message)
    if template is None or user is None:
        return None
    items = _parse_items(user)
    if items is None:
        return None
    return PackedRequest(template, items)


def render_item(template: str, fields: Mapping[str, Any]) -> str | None:
    """``template`` rendered for one item, or ``None`` if it cannot be rendered."""
    try:
        return template.format_map(fields)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError):
        return None


def one_row_prompt(messages: Sequence[Mapping[str, Any]]) -> str:
    """The prompt of a one-row request: the text of its last user message."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message)
    return message_text(messages[-1]) if messages else ""


def _dumps(pairs: Sequence[tuple[str, str]]) -> str:
    # Built by hand rather than from a dict so that a duplicate key can be written.
    return (
        "{"
        + ",".join(
            f"{json.dumps(key)}:{json.dumps(value, ensure_ascii=False)}" for key, value in pairs
        )
        + "}"
    )


def answer_packed(
    packed: PackedRequest,
    answer_fn: AnswerFn,
    faults: Faults,
    rng: random.Random,
    degrade: Degrade | None = None,
) -> tuple[str, list[str], int]:
    """The JSON answer text of a packed request, the packing faults applied to it, and
    how many items the degrading model answered wrong (0 without ``degrade``)."""
    pairs: list[tuple[str, str]] = []
    prompts: dict[str, str] = {}
    for item_id, fields in packed.items:
        key = str(item_id)
        if key in prompts:  # a repeated id in the request is answered once
            continue
        rendered = render_item(packed.template, fields)
        prompts[key] = rendered if rendered is not None else ""
        pairs.append((key, answer_fn(rendered) if rendered is not None else UNKNOWN_ANSWER))

    degraded = 0
    if degrade is not None and pairs:
        right = [value for _, value in pairs]
        answers = degrade_answers(
            degrade, [prompts[key] for key, _ in pairs], right, len(packed.items)
        )
        degraded = sum(a != r for a, r in zip(answers, right, strict=True))
        pairs = [(key, answer) for (key, _), answer in zip(pairs, answers, strict=True)]

    applied: list[str] = []
    for kind in PACKING_FAULTS:
        rate = faults.packing_rate(kind)
        if rate <= 0.0 or rng.random() >= rate:
            continue
        if kind == "shuffle":
            if not pairs:
                continue
            # Only a swap of two different answers is a visible fault. If no answer
            # differs from the one at i, all answers are equal and none can be swapped.
            i = rng.randrange(len(pairs))
            others = [j for j, (_, value) in enumerate(pairs) if value != pairs[i][1]]
            if not others:
                continue
            j = rng.choice(others)
            (key_i, value_i), (key_j, value_j) = pairs[i], pairs[j]
            pairs[i], pairs[j] = (key_i, value_j), (key_j, value_i)
        elif kind == "drop":
            if not pairs:
                continue
            del pairs[rng.randrange(len(pairs))]
        elif kind == "wrong_id":
            asked = {key for key, _ in pairs} | set(prompts)
            new_id = max((item_id for item_id, _ in packed.items), default=-1) + 1
            while str(new_id) in asked:
                new_id += 1
            pairs.insert(
                rng.randrange(len(pairs) + 1), (str(new_id), expected_answer(f"wrong:{new_id}"))
            )
        elif kind == "duplicate":
            if not pairs:
                continue
            index = rng.randrange(len(pairs))
            key, value = pairs[index]
            other = expected_answer(f"duplicate:{prompts.get(key, key)}")
            if other == value:
                other += "x"
            pairs.insert(rng.randrange(index + 1, len(pairs) + 1), (key, other))
        # "prose" and "truncate" change the text, below.
        applied.append(kind)

    text = _dumps(pairs)
    if "prose" in applied:
        text = f"Here are the answers:\n\n```json\n{text}\n```\n\nLet me know if you need anything else."
    if "truncate" in applied:
        # Any proper prefix of a JSON object is invalid JSON: its closing brace comes last.
        start, end = text.find("{") + 1, text.rfind("}")
        text = text[: rng.randrange(start, end) if end > start else start]
    return text, applied, degraded


def truncate_to_tokens(text: str, max_tokens: int, count: Callable[[str], int]) -> str:
    """The longest prefix of ``text`` (in characters) that counts at most ``max_tokens``."""
    if count(text) <= max_tokens:
        return text
    low, high = 0, len(text)  # count(text[:low]) <= max_tokens < count(text[:high])
    while high - low > 1:
        middle = (low + high) // 2
        if count(text[:middle]) <= max_tokens:
            low = middle
        else:
            high = middle
    return text[:low]
