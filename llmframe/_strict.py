"""JSON Schema both ways: to the strict subset structured outputs accept, and to a pydantic type.

:func:`strict_schema` makes a schema what OpenAI's strict ``json_schema`` mode
(and vLLM, SGLang, Ollama's grammars) accept: every property required, a field
that may be left out becomes ``anyOf [..., null]``, every object closes with
``additionalProperties: false``, a ``$ref`` with siblings is inlined. Titles,
defaults and the constraints strict mode ignores (``minLength``, ...) are left
out of what is sent: each answer is still validated against the full schema.
A construct strict mode cannot express (free-form objects, ``dict[str, X]``,
tuples, ``not``, ``if``) is a :class:`~llmframe.ConfigError` before any request.

:func:`from_json_schema` turns a JSON Schema dict into a pydantic type, so a
schema given as JSON is validated per row like a model.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from ._errors import ConfigError

__all__ = ["WRAPPER_TITLE", "from_json_schema", "strict_schema"]

#: The string formats strict structured outputs accept; others are validated, not sent.
STRICT_FORMATS = frozenset({"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"})
#: The title of the ``{"value": ...}`` object a single value is wrapped in for one-row replies.
WRAPPER_TITLE = "llmframe_value"

_KEEP = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "anyOf", "enum", "const",
    "$ref", "$defs", "definitions", "description", "format", "pattern", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems", "maxItems",
})  # fmt: skip
_REFUSED = {
    "not": "'not'",
    "if": "if/then/else",
    "patternProperties": "patternProperties (keys chosen by the model)",
    "propertyNames": "propertyNames (keys chosen by the model)",
    "prefixItems": "tuples (prefixItems); use a list or an object",
    "contains": "'contains'",
    "dependentRequired": "dependentRequired",
    "dependentSchemas": "dependentSchemas",
    "unevaluatedProperties": "unevaluatedProperties",
}


def _refuse(path: str, what: str, source: str) -> ConfigError:
    where = f" at {path}" if path else ""
    return ConfigError(
        f"the {source} uses {what}{where}, which strict structured outputs cannot express; "
        "use fixed field names (a model, or a list of objects) instead"
    )


def _nullable(node: Mapping[str, Any]) -> bool:
    t = node.get("type")
    if t == "null" or (isinstance(t, list) and "null" in t):
        return True
    return any(isinstance(b, Mapping) and _nullable(b) for b in node.get("anyOf") or ())


def strict_schema(schema: Mapping[str, Any], source: str = "schema") -> dict[str, Any]:
    """``schema`` in the strict subset (see the module docstring); the input is not changed."""
    root_defs = dict(schema.get("$defs") or {}) | dict(schema.get("definitions") or {})

    def resolve(ref: str, path: str) -> Mapping[str, Any]:
        name = ref.rsplit("/", 1)[-1]
        if not ref.startswith(("#/$defs/", "#/definitions/")) or name not in root_defs:
            raise ConfigError(f"the {source} has a $ref {ref!r}{' at ' + path if path else ''} "
                              "that does not point into its own $defs")  # fmt: skip
        return root_defs[name]  # type: ignore[no-any-return]

    def walk(node: Any, path: str) -> dict[str, Any]:
        if not isinstance(node, Mapping):
            raise ConfigError(f"the {source} has {node!r} where a schema belongs{' at ' + path if path else ''}")
        for key, what in _REFUSED.items():
            if key in node:
                raise _refuse(path, what, source)
        node = dict(node)
        if "oneOf" in node:  # pydantic's tagged unions: validation still picks exactly one
            node["anyOf"] = node.pop("oneOf")
        if "allOf" in node:
            parts = node.pop("allOf")
            if len(parts) != 1:
                raise _refuse(path, "allOf with several schemas", source)
            node = {**parts[0], **node}
        if "$ref" in node and len(set(node) - {"$ref", "title", "default"}) > 0:
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            node = {**resolve(node["$ref"], path), **siblings}  # inlined: $ref takes no siblings
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key not in _KEEP:
                continue
            if key in ("$defs", "definitions"):
                continue  # gathered at the root below
            if key == "properties":
                out[key] = {name: walk(sub, f"{path}.{name}".lstrip(".")) for name, sub in value.items()}
            elif key == "items":
                if not isinstance(value, Mapping):
                    raise _refuse(path, "tuples (items as a list)", source)
                out[key] = walk(value, f"{path}[]")
            elif key == "anyOf":
                out[key] = [walk(b, path) for b in value]
            elif key == "format" and value not in STRICT_FORMATS:
                continue  # strict mode refuses other formats (uri, ...); validation keeps them
            elif key == "$ref":
                resolve(value, path)
                out[key] = "#/$defs/" + value.rsplit("/", 1)[-1]  # definitions move to $defs
            else:
                out[key] = value
        kind = out.get("type")
        if kind == "object" or "properties" in out:
            extra = node.get("additionalProperties", False)
            if extra not in (False, None) or not out.get("properties"):
                raise _refuse(path, "an object without fixed fields (dict[str, ...] or a free-form object)", source)
            required = set(node.get("required") or ())
            for name, sub in out["properties"].items():
                if name not in required and not _nullable(sub):
                    out["properties"][name] = {"anyOf": [sub, {"type": "null"}]}
            out["type"] = "object"
            out["required"] = list(out["properties"])
            out["additionalProperties"] = False
        elif kind == "array" and "items" not in out:
            raise _refuse(path, "a list without an item type", source)
        if not ({"type", "anyOf", "enum", "const", "$ref"} & set(out)):
            raise _refuse(path, "a value of any type (no 'type')", source)
        return out

    top = walk(schema, "")
    if root_defs:
        top["$defs"] = {name: walk(sub, f"$defs.{name}") for name, sub in root_defs.items()}
    return top


# ---- JSON Schema -> a pydantic type ------------------------------------------------------
def from_json_schema(schema: Mapping[str, Any]) -> Any:
    """A type pydantic validates like ``schema`` (a JSON Schema dict given as ``schema=``)."""
    from pydantic import BaseModel, Field, create_model

    defs = dict(schema.get("$defs") or {}) | dict(schema.get("definitions") or {})
    made: dict[str, Any] = {}
    resolving: set[str] = set()

    def conv(node: Mapping[str, Any], hint: str) -> Any:
        if not isinstance(node, Mapping):
            raise ConfigError(f"the JSON schema has {node!r} where a schema belongs")
        if "allOf" in node:  # one schema merged, as strict_schema does; several are refused there
            parts = node["allOf"]
            if not isinstance(parts, list) or len(parts) != 1 or not isinstance(parts[0], Mapping):
                raise ConfigError("the JSON schema uses allOf with several schemas, which is not supported")
            node = {**parts[0], **{k: v for k, v in node.items() if k != "allOf"}}
        if "$ref" in node:
            name = str(node["$ref"]).rsplit("/", 1)[-1]
            if name not in defs:
                raise ConfigError(f"the JSON schema's $ref {node['$ref']!r} is not in its $defs")
            if name in resolving:
                raise ConfigError(f"the JSON schema's $defs.{name} refers to itself; recursive schemas are not supported")
            if name not in made:
                resolving.add(name)
                made[name] = conv(defs[name], name)
                resolving.discard(name)
            return made[name]
        branches = node.get("anyOf") or node.get("oneOf")
        if branches:
            return Union[tuple(conv(b, hint) for b in branches)]  # noqa: UP007
        if "enum" in node:
            return Literal[tuple(node["enum"])]
        if "const" in node:
            return Literal[node["const"]]
        kind = node.get("type")
        if isinstance(kind, list):
            return Union[tuple(conv({**node, "type": k}, hint) for k in kind)]  # noqa: UP007
        constraints: dict[str, Any] = {}
        for key, arg in (("minimum", "ge"), ("maximum", "le"), ("exclusiveMinimum", "gt"),
                         ("exclusiveMaximum", "lt"), ("multipleOf", "multiple_of"), ("minLength", "min_length"),
                         ("maxLength", "max_length"), ("pattern", "pattern"), ("minItems", "min_length"),
                         ("maxItems", "max_length")):  # fmt: skip
            if key in node:
                constraints[arg] = node[key]
        base: Any
        if kind == "string":
            fmt = node.get("format")
            base = dt.date if fmt == "date" else dt.datetime if fmt == "date-time" else str
        elif kind == "integer":
            base = int
        elif kind == "number":
            base = float
        elif kind == "boolean":
            base = bool
        elif kind == "null":
            return type(None)
        elif kind == "array":
            base = list[conv(node.get("items") or {}, hint + "Item")]  # type: ignore[misc]
        elif kind == "object" or "properties" in node:
            required = set(node.get("required") or ())
            fields: dict[str, Any] = {}
            props = node.get("properties") or {}
            for i, (name, sub) in enumerate(props.items()):
                ann = conv(sub, name.title().replace("_", ""))
                about = sub.get("description") if isinstance(sub, Mapping) else None
                key, alias = name, None
                if not name.isidentifier() or name.startswith(("_", "model_")) or hasattr(BaseModel, name):
                    key, alias = f"field_{i}", name  # "_id", "schema", "model_config": pydantic's own names
                    while key in props:
                        key += "_"
                if name in required:
                    fields[key] = (ann, Field(alias=alias, description=about))
                else:
                    fields[key] = (ann | None, Field(default=None, alias=alias, description=about))
            try:
                return create_model(str(node.get("title") or hint or "Answer"), **fields)
            except Exception as exc:
                raise ConfigError(f"the JSON schema's object {hint!r} cannot be a model: {exc}") from None
        else:
            raise ConfigError(f"the JSON schema has a value of unknown type {kind!r} ({dict(node)!r})")
        return Annotated[base, Field(**constraints)] if constraints else base

    return conv(schema, str(schema.get("title") or "Answer"))
