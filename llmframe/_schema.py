"""Output schemas: what ``schema=`` and ``labels=`` turn into, and how one answer is checked.

:func:`output_schema` accepts a pydantic model, a ``{field: type}`` dict, a JSON
Schema dict or a single type (``int``, ``datetime.date``, ``Literal[...]``,
``list[str]``, ``X | None``, ...) and gives an :class:`OutputSchema`:

- ``item``: the JSON Schema of one row's answer in the strict subset that
  structured outputs accept (:mod:`._strict`); what requests carry;
- ``adapter``: a pydantic ``TypeAdapter`` that validates one answer on its own
  (types, constraints, enums), so a packed reply is checked row by row;
- ``hash``: a canonical hash of the schema, part of every cache key, so a
  schema change is a new key, never a wrong type read back.

An answer is stored as the canonical JSON pydantic dumps after validation, and
the frame's typed columns are built from that JSON (:mod:`._typed`).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import hashlib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from ._errors import ConfigError
from ._parse import json_candidates
from ._strict import WRAPPER_TITLE, from_json_schema, strict_schema

__all__ = ["InvalidAnswer", "OutputSchema", "answer_form", "classify_schema", "extract_json", "output_schema"]

class InvalidAnswer(ValueError):
    """An answer that does not validate; the message names the field."""


def extract_json(content: str) -> tuple[bool, Any]:
    """The JSON value in a reply (whole, in a code fence, or the outermost ``{...}``/``[...]``)."""
    candidates = json_candidates(content, brackets=("{}", "[]"))
    for candidate in candidates:
        try:
            return True, json.loads(candidate)
        except ValueError:
            continue
    return False, None


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe(err: Any) -> str:
    """A pydantic ``ValidationError`` in one line that names the fields."""
    parts = []
    for e in err.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        where = f"field {loc!r}" if loc else "the answer"
        parts.append(f"{where}: {e['msg']} (got {_short(e.get('input'))})")
    more = len(err.errors()) - 3
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


_NOTHING = object()


def _nulls_left_out(value: Any, err: Any) -> Any:
    """A copy of ``value`` without the object fields whose null failed (``_NOTHING`` if none)."""
    out = copy.deepcopy(value)
    dropped = False
    for e in err.errors(include_url=False):
        loc = e["loc"]
        if e["type"] == "missing" or e.get("input", 0) is not None or not loc or not isinstance(loc[-1], str):
            continue
        node = out
        for key in loc[:-1]:
            node = node[key] if isinstance(node, (dict, list)) and _has(node, key) else None
        if isinstance(node, dict) and loc[-1] in node and node[loc[-1]] is None:
            del node[loc[-1]]
            dropped = True
    return out if dropped else _NOTHING


def _has(node: dict[str, Any] | list[Any], key: Any) -> bool:
    if isinstance(node, dict):
        return key in node
    return isinstance(key, int) and 0 <= key < len(node)


@dataclass(frozen=True, eq=False)
class OutputSchema:
    """One row's answer: its strict JSON Schema, its validator and its hash."""

    item: dict[str, Any]  # strict, self-contained (``$defs`` inside)
    adapter: Any  # pydantic.TypeAdapter of one answer
    labels: tuple[str, ...] | None = None  # classify: the labels, in order
    multi: bool = False  # classify: a list of labels per row
    description: str = "schema"
    #: The JSON Schema as given or generated: what the strict ``item`` leaves out
    #: (``minLength``, defaults, ...) still validates, so it is part of the hash.
    source: Any = None

    @property
    def is_object(self) -> bool:
        return self.item.get("type") == "object" and "properties" in self.item

    @property
    def fields(self) -> list[str]:
        """The answer's top-level fields (empty for a single value)."""
        return list(self.item["properties"]) if self.is_object else []

    @functools.cached_property
    def hash(self) -> str:
        spec = {"item": self.item, "labels": self.labels, "multi": self.multi, "source": _untitled(self.source)}
        text = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    # The schemas below are copies: what a request carries can be changed on its way (a
    # client=, a gateway) without changing the item, its hash or later requests.
    def defs(self) -> dict[str, Any]:
        return copy.deepcopy(dict(self.item.get("$defs") or {}))

    def body(self) -> dict[str, Any]:
        """The item schema without its ``$defs`` (they move to the root of a request)."""
        return copy.deepcopy({k: v for k, v in self.item.items() if k != "$defs"})

    def single_root(self) -> dict[str, Any]:
        """The schema of a one-row reply: the item if it is an object, else ``{"value": item}``
        (structured outputs need an object at the root)."""
        if self.is_object:
            return copy.deepcopy(self.item)
        root: dict[str, Any] = {
            "type": "object",
            "title": WRAPPER_TITLE,
            "properties": {"value": self.body()},
            "required": ["value"],
            "additionalProperties": False,
        }
        if self.defs():
            root["$defs"] = self.defs()
        return root

    def packed_root(self, n_items: int) -> dict[str, Any]:
        """The schema of a packed reply: one ``$ref`` to the item per id ``0..n-1``."""
        ids = [str(i) for i in range(n_items)]
        defs = self.defs()
        defs["llmframe_item"] = self.body()
        return {
            "type": "object",
            "$defs": defs,
            "properties": {i: {"$ref": "#/$defs/llmframe_item"} for i in ids},
            "required": ids,
            "additionalProperties": False,
        }

    # ---- one answer -----------------------------------------------------------------
    def validate(self, value: Any) -> str:
        """The canonical JSON of a valid answer; :class:`InvalidAnswer` naming the field."""
        from pydantic import ValidationError

        try:
            valid = self.adapter.validate_python(value)
        except ValidationError as err:
            # Strict mode sends a field that may be left out as null: a field with a
            # default (``tags: list[str] = []``) then takes its default.
            left_out = _nulls_left_out(value, err)
            if left_out is _NOTHING:
                raise InvalidAnswer(describe(err)) from None
            try:
                valid = self.adapter.validate_python(left_out)
            except ValidationError:
                raise InvalidAnswer(describe(err)) from None
        dumped = str(self.adapter.dump_json(valid, by_alias=True).decode())
        if "null" in dumped:  # NaN and infinity validate as floats but are dumped as null
            from pydantic import ValidationError

            try:
                self.adapter.validate_json(dumped)
            except ValidationError as err:
                raise InvalidAnswer(describe(err) + " (not a finite number?)") from None
        return dumped

    def from_reply(self, content: str | None) -> str:
        """A one-row reply validated: JSON found in the text, the ``{"value": ...}``
        wrapper taken off; a bare label or number in plain text is taken as it is."""
        text = (content or "").strip()
        if not text:
            raise InvalidAnswer("empty answer")
        found, value = extract_json(text)
        if self.is_object:
            if not found:
                raise InvalidAnswer("the reply is not JSON")
            return self.validate(value)
        if found and isinstance(value, dict) and len(value) == 1:
            # {"value": ...}, or the key a model chose in JSON mode ({"answer": ...}).
            return self.validate(next(iter(value.values())))
        if not found:
            return self.validate(text)  # plain text: "billing", "1999", "2001-01-01"
        try:
            return self.validate(value)
        except InvalidAnswer as err:
            if isinstance(value, (dict, list)):
                raise  # JSON of the wrong shape is never taken as text
            try:
                return self.validate(text)  # a str answer that happens to parse as JSON
            except InvalidAnswer:
                raise err from None  # what is wrong with the JSON, not with it read as text

    def instructions(self, *, packed: bool) -> str:
        """What the prompt says about the answer's form; ``<schema>`` tags delimit the JSON."""
        schema = self.item if packed else self.single_root()
        compact = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
        if packed:
            return f"Each answer is JSON that follows this schema:\n<schema>{compact}</schema>"
        return f"Reply with only a JSON object that follows this schema:\n<schema>{compact}</schema>"


_VALUES = frozenset({"default", "enum", "const", "examples"})  # data, not schemas: kept whole


def _untitled(node: Any) -> Any:
    """A JSON Schema without its titles: a model's class name is not part of what it asks."""
    if isinstance(node, Mapping):
        return {k: v if k in _VALUES else _untitled(v) for k, v in node.items()
                if not (k == "title" and isinstance(v, str))}  # fmt: skip
    if isinstance(node, list):
        return [_untitled(v) for v in node]
    return node


def _is_model(obj: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _looks_like_json_schema(d: Mapping[str, Any]) -> bool:
    return any(isinstance(v, (str, dict, list, bool, int, float)) or v is None for v in d.values())


def _unwrap_format(d: Mapping[str, Any]) -> Mapping[str, Any]:
    """``{"type": "json_schema", "json_schema": {...}}`` and ``{"name", "schema"}`` wrappers off."""
    if d.get("type") == "json_schema" and isinstance(d.get("json_schema"), Mapping):
        d = d["json_schema"]
    if isinstance(d.get("schema"), Mapping) and "name" in d:
        d = d["schema"]
    return d


def _shorthand(fields: Mapping[Any, Any]) -> Any:
    from pydantic import create_model

    spec: dict[str, Any] = {}
    for name, kind in fields.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"schema field names must be identifiers, got {name!r}")
        spec[name] = kind if isinstance(kind, tuple) else (kind, ...)
    try:
        return create_model("Answer", **spec)
    except Exception as exc:
        raise ConfigError(f"schema dict could not be made into a model: {exc}") from None


_SINGLE = (str, int, float, bool, dt.date, dt.datetime)


def _is_annotation(obj: Any) -> bool:
    if obj in _SINGLE or _is_model(obj):
        return True
    origin = typing.get_origin(obj)
    return origin is not None or isinstance(obj, types.UnionType)


def output_schema(schema: Any) -> OutputSchema:
    """The :class:`OutputSchema` of what a user passed as ``schema=``; a clear
    :class:`~llmframe.ConfigError` for anything that cannot be one."""
    from pydantic import TypeAdapter

    raw: Any = None
    item: dict[str, Any] = {}
    if isinstance(schema, Mapping):
        if not schema:
            raise ConfigError("schema={} has no fields")
        if _looks_like_json_schema(schema):
            raw = dict(_unwrap_format(schema))
            what = "JSON schema"
            item = strict_schema(raw, what)  # first, so that a refusal names the construct
            annotation = from_json_schema(raw)
        else:
            annotation = _shorthand(schema)
            what = "schema dict"
    elif _is_annotation(schema):
        annotation = schema
        what = schema.__name__ if _is_model(schema) else "schema"
    else:
        raise ConfigError(
            "schema must be a pydantic model, a {field: type} dict, a JSON Schema dict or a type "
            f"(str, int, float, bool, datetime.date, Literal[...], list[...], X | None), got {schema!r}"
        )
    try:
        adapter = TypeAdapter(annotation)
        generated = adapter.json_schema(by_alias=True)
    except Exception as exc:
        raise ConfigError(f"schema {schema!r} cannot be serialized to JSON Schema: {exc}") from None
    if raw is None:
        item = strict_schema(generated, what)
    return OutputSchema(item=item, adapter=adapter, description=what, source=generated if raw is None else raw)


def _label_matcher(labels: Sequence[str]) -> Any:
    """Maps an answer to its label when they differ only in case, spaces or quotes."""
    from ._parse import normalize

    by_norm = {normalize(label): label for label in labels}

    def match(value: Any) -> Any:
        if isinstance(value, str) and value not in labels:
            return by_norm.get(normalize(value), value)
        return value

    return match


def classify_schema(labels: Any, *, multi: bool = False) -> OutputSchema:
    """The schema of ``classify``: exactly one of ``labels`` (or a list of them)."""
    from pydantic import AfterValidator, BeforeValidator, TypeAdapter

    from ._parse import normalize

    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise ConfigError(f"labels must be a list of strings, got {labels!r}")
    names = list(labels)
    if not names:
        raise ConfigError("labels is empty: give at least one label")
    bad = [label for label in names if not isinstance(label, str) or not label.strip()]
    if bad:
        raise ConfigError(f"labels must be non-empty strings, got {bad[0]!r}")
    seen: dict[str, str] = {}
    for label in names:
        twin = seen.setdefault(normalize(label), label)
        if twin != label or names.count(label) > 1:
            raise ConfigError(f"labels repeat: {twin!r} and {label!r} are the same label")
    match = _label_matcher(names)
    one = Annotated[Literal[tuple(names)], BeforeValidator(match)]  # type: ignore[valid-type]
    annotation: Any = one
    if multi:

        def unique(values: list[str]) -> list[str]:
            return list(dict.fromkeys(values))

        annotation = Annotated[list[one], AfterValidator(unique)]  # type: ignore[valid-type]
    adapter = TypeAdapter(annotation)
    item: dict[str, Any] = {"type": "string", "enum": names}
    if multi:
        item = {"type": "array", "items": item}
    return OutputSchema(item=item, adapter=adapter, labels=tuple(names), multi=multi, description="labels")


def answer_form(schema: Any = None, labels: Any = None, multi: Any = False) -> OutputSchema | None:
    """What ``schema=`` or ``labels=``/``multi=`` ask for, as every entry point takes them:
    ``None`` (text), an :class:`OutputSchema` as it is, or one made from them."""
    if not isinstance(multi, bool):
        raise ConfigError(f"multi must be True or False, got {multi!r}")
    if labels is not None:
        if schema is not None:
            raise ConfigError("pass schema= or labels=, not both")
        return classify_schema(labels, multi=multi)
    if multi:
        raise ConfigError("multi=True needs labels=")
    if schema is None or isinstance(schema, OutputSchema):
        return schema
    return output_schema(schema)
