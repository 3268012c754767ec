"""The fake model's structured answers: a deterministic value for a JSON schema.

:func:`fill` answers ``prompt`` with a value of ``schema``; every choice comes
from ``h``, the integer of ``blake2b(f"{prompt}\\x00{path}")``, where ``path``
says where the value sits in the answer (``""`` for the answer itself,
``"/name"`` for a property, ``"/name/0"`` for an array's first element). So a
test recomputes every field of every row (:func:`expected_value`), two rows
practically never share an answer, and two fields of one row are unrelated.

- ``$ref`` (``#/$defs/Name``, ``#/definitions/Name``, any local JSON pointer)
  is resolved against ``root``; ``allOf`` is merged.
- ``anyOf``/``oneOf``, or ``type`` given as a list, with ``null`` among them:
  ``None`` when ``h % 4 == 0``, else the first other branch at the same path;
  without ``null``: branch ``h % len``.
- ``const``: itself. ``enum``: ``enum[h % len]``, but at path ``""`` (a label)
  or as an object's field (not a list's item) the answer ``answer_fn(prompt)``
  if it is one of the values, so a test or a demo can steer labels; at path
  ``""`` also, as it is, if it is a label but for case, spaces and surrounding
  punctuation or quotes (a model that writes ``"  Bug."`` for ``"bug"``, for
  llmframe to match).
- ``string``: ``format: "date"`` a date from 2000-01-01 on; ``"date-time"`` a
  UTC datetime; else ``answer_fn(prompt)`` at path ``""`` (so a plain string
  answer is the text answer) and ``expected_answer(f"{prompt}\\x00{path}")``
  elsewhere.
- ``integer``: ``lo + h % (hi - lo + 1)``, ``lo``/``hi`` from ``minimum`` /
  ``maximum`` (exclusive bounds moved in by one), default ``0..lo + 100``.
- ``number``: ``round(lo + (h % 1000) / 1000 * (hi - lo), 3)``, default 0..100;
  exclusive bounds are the bounds, and a value that lands on one becomes the
  midpoint.
- ``boolean``: ``h % 2 == 1``. ``null``: ``None``.
- ``array``: ``1 + h % 3`` elements, clamped to ``minItems``/``maxItems``,
  element ``i`` at path ``f"{path}/{i}"`` (``prefixItems`` first). Elements of
  an ``enum`` are distinct where the enum allows (rotated from ``h``), so a
  multi-label answer repeats no label.
- ``object``: every property, in schema order, at ``f"{path}/{name}"``.
  llmframe's wrapper of a single value (titled ``llmframe_value``, one
  property ``value``) is ``{"value": ...}`` with the value at the wrapper's own
  path, so a one-row answer holds exactly the packed item's answer.
- A schema without ``type`` is an object if it has ``properties``, an array if
  it has ``items``, else a string. Other keywords (``title``, ``default``,
  ``pattern``, ...) are ignored.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from typing import Any

from llmframe.testing._model import AnswerFn, expected_answer

__all__ = [
    "WRAPPER_TITLE",
    "SchemaError",
    "expected_value",
    "fill",
    "flatten",
    "implied_type",
    "is_plain_string",
    "is_wrapper",
    "nullable_branch",
    "resolve",
    "value_type",
]

#: The title of llmframe's wrapper around a single (non-object) value.
WRAPPER_TITLE = "llmframe_value"

# Past this depth a recursive schema stops growing: nullable values are None and
# arrays are as short as allowed. A schema that still recurses is an error.
_SHRINK_DEPTH = 12
_MAX_DEPTH = 48
_MANY = 1 << 30


class SchemaError(ValueError):
    """A schema the fake cannot answer: an unresolvable ``$ref``, or endless recursion."""


def _hash(prompt: str, path: str) -> int:
    digest = hashlib.blake2b(f"{prompt}\x00{path}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest, "big")


def resolve(schema: Any, root: Any) -> dict[str, Any]:
    """``schema`` with its ``$ref`` followed (repeatedly) against ``root``."""
    for _ in range(64):
        if not isinstance(schema, Mapping):
            return {}  # `true` (anything); `false` cannot be answered anyway
        ref = schema.get("$ref")
        if not isinstance(ref, str):
            return dict(schema)
        schema = _pointer(root, ref)
    raise SchemaError("a $ref chain that does not end")


def _pointer(root: Any, ref: str) -> Any:
    if not ref.startswith("#"):
        raise SchemaError(f"only local $refs are supported, got {ref!r}")
    node = root
    for raw in ref[1:].split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise SchemaError(f"$ref {ref!r} does not resolve")
    return node


def _merge_all_of(schema: dict[str, Any], root: Any) -> dict[str, Any]:
    merged = {key: value for key, value in schema.items() if key != "allOf"}
    for part in schema["allOf"]:
        sub = resolve(part, root)
        if "allOf" in sub:
            sub = _merge_all_of(sub, root)
        for key, value in sub.items():
            if key in ("properties", "$defs") and isinstance(value, Mapping):
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged.setdefault(key, value)
    return merged


def _is_null(schema: Mapping[str, Any]) -> bool:
    return schema.get("type") == "null" or ("const" in schema and schema["const"] is None)


def _branches(schema: dict[str, Any], root: Any) -> list[dict[str, Any]] | None:
    """The alternatives of ``schema`` (``anyOf``/``oneOf``, or a ``type`` list), or None."""
    options = schema.get("anyOf", schema.get("oneOf"))
    if isinstance(options, list) and options:
        return [resolve(option, root) for option in options]
    types = schema.get("type")
    if isinstance(types, list) and types:
        rest = {key: value for key, value in schema.items() if key != "type"}
        return [{**rest, "type": kind} for kind in types]
    return None


def flatten(schema: Any, root: Any) -> dict[str, Any]:
    """``schema`` with its ``$ref`` resolved and its ``allOf`` merged."""
    schema = resolve(schema, root)
    return _merge_all_of(schema, root) if "allOf" in schema else schema


def nullable_branch(schema: Any, root: Any) -> dict[str, Any]:
    """``schema`` flattened and, if it admits null, its first other branch."""
    schema = flatten(schema, root)
    branches = _branches(schema, root)
    if branches:
        others = [branch for branch in branches if not _is_null(branch)]
        if others and len(others) < len(branches):
            return nullable_branch(others[0], root)
    return schema


def implied_type(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


def value_type(value: Any) -> str:
    """The JSON type name of ``value``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def is_plain_string(schema: Any, root: Any) -> bool:
    """Whether ``schema`` is a bare ``{"type": "string"}``: the answer is the text answer."""
    resolved = resolve(schema, root)
    return (
        resolved.get("type") == "string"
        and not {"enum", "const", "format", "anyOf", "oneOf", "allOf"} & resolved.keys()
    )


def is_wrapper(schema: Mapping[str, Any]) -> bool:
    properties = schema.get("properties")
    return (
        schema.get("title") == WRAPPER_TITLE
        and isinstance(properties, Mapping)
        and list(properties) == ["value"]
    )


def fill(
    prompt: str,
    schema: Any,
    root: Any,
    path: str = "",
    answer_fn: AnswerFn = expected_answer,
    depth: int = 0,
) -> Any:
    """The fake model's value of ``schema`` for ``prompt`` at ``path`` (see the module doc)."""
    if depth > _MAX_DEPTH:
        raise SchemaError("the schema recurses without end (no value is finite)")
    schema = flatten(schema, root)
    h = _hash(prompt, path)
    shrink = depth > _SHRINK_DEPTH
    branches = _branches(schema, root)
    if branches:
        others = [branch for branch in branches if not _is_null(branch)]
        if len(others) < len(branches):
            if not others or h % 4 == 0 or shrink:
                return None
            return fill(prompt, others[0], root, path, answer_fn, depth + 1)
        return fill(prompt, branches[h % len(branches)], root, path, answer_fn, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        if path == "" or not path.rsplit("/", 1)[-1].isdigit():  # a label, or an object's field
            answer = answer_fn(prompt)
            if answer in enum or (path == "" and _loosely_in(answer, enum)):
                return answer
        return enum[h % len(enum)]
    kind = implied_type(schema)
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, Mapping):
            return {}
        if is_wrapper(schema):
            return {"value": fill(prompt, properties["value"], root, path, answer_fn, depth + 1)}
        return {
            name: fill(prompt, sub, root, f"{path}/{name}", answer_fn, depth + 1)
            for name, sub in properties.items()
        }
    if kind == "array":
        return _array(prompt, schema, root, path, answer_fn, depth, h)
    if kind == "integer":
        low, high = _bounds(schema, integer=True)
        return int(low) + h % (int(high) - int(low) + 1)
    if kind == "number":
        return _number(schema, h)
    if kind == "boolean":
        return h % 2 == 1
    if kind == "null":
        return None
    return _string(prompt, schema, path, answer_fn, h)


_EDGE = " \t\n.,;:!?\"'`()[]\u201c\u201d\u2018\u2019\u00ab\u00bb"


def _loose(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split()).strip(_EDGE)


def _loosely_in(answer: Any, enum: list[Any]) -> bool:
    """Whether ``answer`` is one of the string values but for case, spaces and edge marks."""
    if not isinstance(answer, str) or not _loose(answer):
        return False
    return any(isinstance(value, str) and _loose(value) == _loose(answer) for value in enum)


def _string(prompt: str, schema: Mapping[str, Any], path: str, answer_fn: AnswerFn, h: int) -> str:
    form = schema.get("format")
    if form == "date":
        return (date(2000, 1, 1) + timedelta(days=h % 9000)).isoformat()
    if form == "date-time":
        start = datetime(2000, 1, 1, tzinfo=timezone.utc)
        return (start + timedelta(seconds=h % (9000 * 86400))).isoformat()
    return answer_fn(prompt) if path == "" else expected_answer(f"{prompt}\x00{path}")


def _array(
    prompt: str,
    schema: Mapping[str, Any],
    root: Any,
    path: str,
    answer_fn: AnswerFn,
    depth: int,
    h: int,
) -> list[Any]:
    low = _count(schema.get("minItems"), 0)
    high = max(low, _count(schema.get("maxItems"), _MANY))
    n = low if depth > _SHRINK_DEPTH else min(max(1 + h % 3, low), high)
    prefix = schema.get("prefixItems")
    prefix = list(prefix) if isinstance(prefix, list) else []
    items = schema.get("items")
    if prefix:
        n = max(n, len(prefix)) if isinstance(items, Mapping) else len(prefix)
    else:
        element = resolve(items, root) if isinstance(items, Mapping) else {}
        enum = element.get("enum")
        if isinstance(enum, list) and enum and not _branches(element, root):
            if len(enum) >= low:
                n = min(n, len(enum))
            return [enum[(h + i) % len(enum)] for i in range(n)]
    schemas = [prefix[i] if i < len(prefix) else items for i in range(n)]
    return [
        fill(prompt, sub, root, f"{path}/{i}", answer_fn, depth + 1)
        for i, sub in enumerate(schemas)
    ]


def _count(value: Any, default: int) -> int:
    return (
        value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default
    )


def _num(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


def _bounds(schema: Mapping[str, Any], *, integer: bool) -> tuple[float, float]:
    low, high = _num(schema.get("minimum")), _num(schema.get("maximum"))
    ex_low, ex_high = _num(schema.get("exclusiveMinimum")), _num(schema.get("exclusiveMaximum"))
    if integer:
        low = math.ceil(low) if low is not None else None
        high = math.floor(high) if high is not None else None
        if ex_low is not None:
            low = max(low, math.floor(ex_low) + 1) if low is not None else math.floor(ex_low) + 1
        if ex_high is not None:
            above = math.ceil(ex_high) - 1
            high = min(high, above) if high is not None else above
    else:
        if ex_low is not None:
            low = max(low, ex_low) if low is not None else ex_low
        if ex_high is not None:
            high = min(high, ex_high) if high is not None else ex_high
    if low is None:
        low = 0 if high is None or high >= 0 else high - 100
    if high is None or high < low:
        high = low + 100 if high is None else low
    return low, high


def _number(schema: Mapping[str, Any], h: int) -> float:
    low, high = _bounds(schema, integer=False)
    value = round(low + (h % 1000) / 1000 * (high - low), 3)
    ex_low, ex_high = _num(schema.get("exclusiveMinimum")), _num(schema.get("exclusiveMaximum"))
    if (ex_low is not None and value <= ex_low) or (ex_high is not None and value >= ex_high):
        value = (low + high) / 2
    return float(value)


def expected_value(
    prompt: str, schema: Mapping[str, Any], *, answer_fn: AnswerFn | None = None
) -> Any:
    """What the fake server answers for the one-row ``prompt`` asked for a value of ``schema``.

    ``schema`` is the item's JSON schema as a caller would write it, or as
    pydantic makes it (``Model.model_json_schema()``, ``TypeAdapter(T).json_schema()``;
    its ``$ref`` are resolved against ``schema`` itself). A packed request
    answers each item with this same value, its rendered prompt as ``prompt``;
    a single value that llmframe wraps as ``{"value": ...}`` holds it under
    ``"value"``. ``answer_fn`` is the server's (``None``: :func:`expected_answer`):
    it answers plain strings at the top and may pick a top-level label.

    Example::

        >>> from llmframe.testing import expected_answer, expected_value
        >>> expected_value("Review: great", {"type": "string"}) == expected_answer("Review: great")
        True
        >>> labels = {"enum": ["positive", "negative"]}
        >>> expected_value("Review: great", labels, answer_fn=lambda prompt: "negative")
        'negative'
        >>> schema = {"type": "object", "properties": {"stars": {"type": "integer", "minimum": 1,
        ...           "maximum": 5}, "tags": {"type": "array", "items": {"type": "string"}}}}
        >>> answer = expected_value("Review: great", schema)
        >>> 1 <= answer["stars"] <= 5 and 1 <= len(answer["tags"]) <= 3
        True
        >>> answer == expected_value("Review: great", schema)
        True
    """
    return fill(prompt, schema, schema, "", answer_fn or expected_answer)
