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
``str.format_map`` (:func:`render_item`); :mod:`llmframe.testing._packed`
answers each item exactly as the one-row request of the rendered prompt would
be answered, in the compact JSON object ``{"0":"...","1":"..."}``.

The **lines** style is recognised the same way: every non-blank line of the user
message is an integer id, a space and the item: its value (a JSON string when it
starts with a quote) for a template with one field, a JSON object of its fields
otherwise. Such a request is answered in lines, ``id answer`` per item, an answer
with a line break as a JSON string (:mod:`llmframe.testing._packed`).

A request that asks for structured output (a JSON schema) is answered with
deterministic values of that schema: :mod:`llmframe.testing._structured`
finds the schema, :mod:`llmframe.testing._schema` fills it.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "UNKNOWN_ANSWER",
    "AnswerFn",
    "PackedRequest",
    "expected_answer",
    "message_text",
    "one_row_prompt",
    "parse_packed",
    "render_item",
    "task_span",
    "truncate_to_tokens",
]

AnswerFn = Callable[[str], str]

#: What a model "guesses" when the template names a field the item lacks.
UNKNOWN_ANSWER = "?"

_LINE_ITEM = re.compile(r"(\d+) (.*)")
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
    """A parsed packed request: the task template and the items, in request order;
    ``style`` is how they came and how the answer goes: ``"json"`` or ``"lines"``."""

    template: str
    items: list[tuple[int, dict[str, Any]]]
    style: str = "json"


def task_span(system: str) -> tuple[int, int] | None:
    """Where the last ``<task>`` block of ``system`` starts and ends (tags included)."""
    end = system.rfind(_TASK_CLOSE)
    if end < 0:
        return None
    start = system.rfind(_TASK_OPEN, 0, end + 1)
    if start < 0:
        return None
    return start, end + len(_TASK_CLOSE)


def _task_template(system: str) -> str | None:
    span = task_span(system)
    if span is None:
        return None
    return system[span[0] + len(_TASK_OPEN) : span[1] - len(_TASK_CLOSE)]


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


def _template_fields(template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return []
    names: list[str] = []
    for _, name, _, _ in parsed:
        if name is not None and name not in names:
            names.append(name)
    return names


def _parse_lines(text: str, template: str) -> list[tuple[int, dict[str, Any]]] | None:
    fields = _template_fields(template)
    items: list[tuple[int, dict[str, Any]]] = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        found = _LINE_ITEM.fullmatch(line)
        if found is None:
            return None
        rest = found.group(2)
        value: Any = rest
        if rest.startswith(("{", '"')):
            try:
                value = json.loads(rest)
            except ValueError:
                return None
        if isinstance(value, dict):
            item = value
        elif isinstance(value, str) and len(fields) == 1:
            item = {fields[0]: value}
        else:
            return None
        items.append((int(found.group(1)), item))
    return items or None


def parse_packed(messages: Sequence[Mapping[str, Any]]) -> PackedRequest | None:
    """The packed request in ``messages``, or ``None`` if it is a one-row request.

    A request is packed when a system (or developer) message has a
    ``<task>`` block and every non-blank line of the last user message is a
    JSON object with an integer ``"id"`` (or, in the lines style, an id, a space
    and the item).
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
    if items is not None:
        return PackedRequest(template, items)
    lines = _parse_lines(user, template)
    return None if lines is None else PackedRequest(template, lines, "lines")


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
