"""Structured-output requests: where their schema is, and how their answers go wrong.

This module reads llmframe's wire protocol for structured output on its own
(it does not import llmframe's schema code, so it checks that code):

- **One-row request**: the schema of the whole answer (``ROOT``, an object
  schema) is the ``schema`` of ``response_format={"type": "json_schema", ...}``,
  or else the JSON between the last ``<schema>`` and ``</schema>`` of the
  system (or developer) messages. The reply is the JSON text of
  :func:`~llmframe.testing._schema.fill` of ``ROOT``; a ``ROOT`` that is a
  plain ``{"type": "string"}`` is answered with the text answer, as without a
  schema.
- **Packed request**: the schema of one item (``ITEM``) is
  ``properties["0"]`` of the ``response_format`` schema, its ``$ref`` (to
  ``$defs/llmframe_item``) and the refs inside resolved against that schema;
  or else a ``<schema>`` block of the system message outside the ``<task>``
  block (``ITEM`` then carries its own ``$defs``). Today's text packing, one
  plain ``{"type": "string"}`` per id, is no item schema: the request is
  answered as text.

:class:`ItemSchema` answers the items of a packed request, makes the other
(still valid) values that the duplicate and wrong-id faults and the
degrading model need, and applies the two faults that only structured answers
have: ``wrong_type`` and ``bad_enum`` (see :mod:`llmframe.testing._faults`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmframe.testing._model import (
    UNKNOWN_ANSWER,
    AnswerFn,
    expected_answer,
    message_text,
    one_row_prompt,
    task_span,
)
from llmframe.testing._schema import (
    fill,
    flatten,
    implied_type,
    is_plain_string,
    nullable_branch,
    resolve,
    value_type,
)

__all__ = ["BAD_LABEL", "ItemSchema", "answer_one_row", "dumps", "packed_item", "schema_block"]

#: What ``bad_enum`` puts in place of a label.
BAD_LABEL = "not_a_label"

_SCHEMA_OPEN = "<schema>"
_SCHEMA_CLOSE = "</schema>"
_SYSTEM_ROLES = ("system", "developer")

# The wrong-type value for a value of each type, and the ones tried when a schema admits it.
_WRONG = {"number": "n/a", "integer": "n/a", "string": 12345, "boolean": "maybe",
          "array": "x", "object": 7}  # fmt: skip
_FALLBACK_WRONG: tuple[Any, ...] = ("n/a", 12345, True, [7], {"x": 7})


def dumps(value: Any) -> str:
    """Compact JSON text of any JSON value, non-ASCII kept as is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def schema_block(text: str) -> dict[str, Any] | None:
    """The JSON object between the last ``<schema>`` and ``</schema>`` of ``text``, if any."""
    end = text.rfind(_SCHEMA_CLOSE)
    start = text.rfind(_SCHEMA_OPEN, 0, end) if end >= 0 else -1
    if start < 0:
        return None
    try:
        found = json.loads(text[start + len(_SCHEMA_OPEN) : end])
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def _format_schema(response_format: Any) -> dict[str, Any] | None:
    if not isinstance(response_format, Mapping) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    return schema if isinstance(schema, dict) else None


def _tagged(messages: Sequence[Mapping[str, Any]], *, outside_task: bool) -> dict[str, Any] | None:
    found = None
    for message in messages:
        if message.get("role") not in _SYSTEM_ROLES:
            continue
        text = message_text(message)
        span = task_span(text) if outside_task else None
        if span is not None:  # a template that mentions <schema> is not the schema
            text = text[: span[0]] + text[span[1] :]
        block = schema_block(text)
        if block is not None:
            found = block
    return found


def answer_one_row(
    messages: Sequence[Mapping[str, Any]], response_format: Any, answer_fn: AnswerFn
) -> str:
    """The reply to a one-row request: the text answer, or the filled ``ROOT`` as JSON."""
    prompt = one_row_prompt(messages)
    root = _format_schema(response_format)
    if root is None:
        root = _tagged(messages, outside_task=False)
    if root is None or is_plain_string(root, root):
        return answer_fn(prompt)
    return dumps(fill(prompt, root, root, "", answer_fn))


def packed_item(messages: Sequence[Mapping[str, Any]], response_format: Any) -> ItemSchema | None:
    """The item schema of a packed request, or ``None`` for a text-packed one."""
    root = _format_schema(response_format)
    properties = root.get("properties") if root is not None else None
    if root is not None and isinstance(properties, Mapping) and "0" in properties:
        first = properties["0"]
        if isinstance(first, Mapping) and ("$ref" in first or not is_plain_string(first, root)):
            return ItemSchema(resolve(first, root), root)
    tagged = _tagged(messages, outside_task=True)
    return ItemSchema(tagged, tagged) if tagged is not None else None


@dataclass(frozen=True)
class ItemSchema:
    """The schema of one item of a packed request, and ``root``, where its refs point."""

    schema: dict[str, Any]
    root: dict[str, Any]

    def answer(self, prompt: str | None, answer_fn: AnswerFn) -> Any:
        """The item's answer; an item whose template did not render (``None``) gets a guess:
        the value for the prompt ``""`` with ``"?"`` wherever the text answer would go."""
        if prompt is None:
            return fill("", self.schema, self.root, "", lambda _: UNKNOWN_ANSWER)
        return fill(prompt, self.schema, self.root, "", answer_fn)

    def other(self, seed: str, value: Any) -> Any | None:
        """A valid value other than ``value``, derived from ``seed``; ``None`` if none is found
        (a ``const``, a one-value enum)."""
        for attempt in range(8):
            candidate = fill(f"{seed}\x00{attempt}", self.schema, self.root, "", expected_answer)
            if candidate != value:
                return candidate
        return None

    def different(self, seed: str, value: Any) -> Any:
        """A value other than ``value``: valid if possible, else of a wrong type."""
        other = self.other(seed, value)
        if other is not None:
            return other
        wrong = self._wrong(self.schema, value)
        return wrong if wrong is not None else [value]

    def degraded(self, prompt: str, right: Any) -> Any:
        """The degrading model's wrong (valid) answer to ``prompt``; ``right`` if there is none."""
        other = self.other(f"degraded:{prompt}", right)
        return right if other is None else other

    # -- the structured packing faults; each returns whether it damaged something ----

    def wrong_type(self, pairs: list[tuple[str, Any]], rng: random.Random) -> bool:
        """One random item gets one top-level field (or itself) of a wrong type."""
        fields = self._fields()
        choices: list[tuple[int, str | None, Any]] = []
        for index, (_, value) in enumerate(pairs):
            if fields is not None and isinstance(value, dict) and value:
                choices.extend(
                    (index, name, wrong)
                    for name in value
                    if (wrong := self._wrong(fields.get(name, {}), value[name])) is not None
                )
            elif (wrong := self._wrong(self.schema, value)) is not None:
                choices.append((index, None, wrong))
        if not choices:
            return False
        index = rng.choice(sorted({index for index, _, _ in choices}))
        _, name, wrong = rng.choice([choice for choice in choices if choice[0] == index])
        self._put(pairs, index, name, wrong)
        return True

    def bad_enum(self, pairs: list[tuple[str, Any]], rng: random.Random) -> bool:
        """One random item's first enum field (or the item, if it is a label) gets
        :data:`BAD_LABEL`; nothing happens when the item has no enum."""
        if _enum(self.schema, self.root):
            name = None
            held = list(range(len(pairs)))
        else:
            fields = self._fields() or {}
            name = next((key for key, sub in fields.items() if _enum(sub, self.root)), None)
            if name is None:
                return False
            held = [
                i for i, (_, value) in enumerate(pairs) if isinstance(value, dict) and name in value
            ]
        if not held:
            return False
        self._put(pairs, rng.choice(held), name, BAD_LABEL)
        return True

    def _fields(self) -> dict[str, Any] | None:
        """The top-level properties of an object item, or ``None`` for a scalar item."""
        item = nullable_branch(self.schema, self.root)
        properties = item.get("properties")
        return dict(properties) if isinstance(properties, Mapping) else None

    def _wrong(self, schema: Any, value: Any) -> Any | None:
        """A value whose type ``schema`` does not admit, chosen by the type of ``value``."""
        allowed = _types(schema, self.root)
        kind = value_type(value)
        if kind == "null":
            kind = next((t for t in allowed if t != "null"), "string")
        for candidate in (_WRONG.get(kind), *_FALLBACK_WRONG):
            if candidate is None:
                continue
            got = value_type(candidate)
            if got not in allowed and not (got == "integer" and "number" in allowed):
                return candidate
        return None

    @staticmethod
    def _put(pairs: list[tuple[str, Any]], index: int, name: str | None, new: Any) -> None:
        key, value = pairs[index]
        pairs[index] = (key, new if name is None else {**value, name: new})


def _enum(schema: Any, root: Any) -> bool:
    """Whether ``schema`` (through ``$ref`` and a nullable ``anyOf``) is an enum."""
    enum = nullable_branch(schema, root).get("enum")
    return isinstance(enum, list) and bool(enum)


def _types(schema: Any, root: Any, depth: int = 0) -> list[str]:
    """The JSON types that ``schema`` admits, in order (``number`` admits integers too)."""
    schema = flatten(schema, root)
    found: list[str] = []
    options = schema.get("anyOf", schema.get("oneOf"))
    kind = schema.get("type")
    if isinstance(options, list) and options and depth < 8:
        for option in options:
            found.extend(_types(option, root, depth + 1))
    elif "const" in schema:
        found.append(value_type(schema["const"]))
    elif isinstance(schema.get("enum"), list) and schema["enum"]:
        found.extend(value_type(value) for value in schema["enum"])
    elif isinstance(kind, list):
        found.extend(str(t) for t in kind)
    else:
        found.append(implied_type(schema))
    return list(dict.fromkeys(found))
