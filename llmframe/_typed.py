"""Typed columns from validated JSON answers: the types a user expects, nulls as real nulls.

Every answer of a schema run is stored as the canonical JSON of a validated
value (:mod:`._schema`), so a fresh run and a cached re-run build the columns
the same way: all rows are decoded at once by polars (``str.json_decode`` into
the schema's dtype, in Rust), then converted for pandas where the frame is one.

=============  ==========================  ===================================
JSON Schema    polars                      pandas
=============  ==========================  ===================================
string         ``String``                  ``string``
integer        ``Int64``                   ``Int64``
number         ``Float64``                 ``Float64``
boolean        ``Boolean``                 ``boolean``
enum (labels)  ``Enum``                    ``category``
date           ``Date``                    ``datetime64``
date-time      ``Datetime(us, UTC)``       ``datetime64[us, UTC]``
array          ``List``                    ``object`` (Python lists)
object         ``Struct``                  ``object`` (Python dicts)
mixed union    ``String`` (the JSON text)  ``string`` (the JSON text)
=============  ==========================  ===================================

A union of different types (``int | str``) has no one column type: the column
holds each answer's validated JSON text (``'5'``, ``'"five"'``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ._errors import ConfigError
from ._schema import OutputSchema

__all__ = ["output_columns", "polars_dtype", "typed_columns"]

_SCALARS = ("string", "int", "float", "bool", "date", "datetime")


def _values_kind(values: list[Any]) -> Any:
    """The kind of an ``enum``: labels, or numbers/booleans; null is a null in any column."""
    values = [v for v in values if v is not None]
    if values and all(isinstance(v, str) for v in values):
        return ("enum", tuple(values))
    if values and all(isinstance(v, bool) for v in values):
        return "bool"
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "int"
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "float"
    return "json"


def _kind(node: Mapping[str, Any], defs: Mapping[str, Any], seen: frozenset[str] = frozenset()) -> Any:
    """A schema node's column kind: a name, or ("enum", labels) / ("list", kind) / ("struct", fields)."""
    if "$ref" in node:
        name = str(node["$ref"]).rsplit("/", 1)[-1]
        if name in seen:  # a recursive model: no dtype is deep enough, so the level below is JSON
            return "json"
        return _kind(defs[name], defs, seen | {name})
    branches = [b for b in node.get("anyOf") or () if b.get("type") != "null"]
    if branches:
        kinds = [_kind(b, defs, seen) for b in branches]
        return kinds[0] if all(k == kinds[0] for k in kinds) else "json"
    types = node.get("type")
    if isinstance(types, list):
        rest = [t for t in types if t != "null"]
        return _kind({**node, "type": rest[0]}, defs, seen) if len(rest) == 1 else "json"
    if "enum" in node:
        return _values_kind(list(node["enum"]))
    if "const" in node:
        return "string" if isinstance(node["const"], str) else _values_kind([node["const"]])
    fmt = node.get("format")
    simple = {"integer": "int", "number": "float", "boolean": "bool"}
    if types == "string":
        return "date" if fmt == "date" else "datetime" if fmt == "date-time" else "string"
    if types in simple:
        return simple[types]
    if types == "array":
        return ("list", _kind(node.get("items") or {}, defs, seen))
    if types == "object":
        return ("struct", tuple((k, _kind(v, defs, seen)) for k, v in node["properties"].items()))
    return "json"


def polars_dtype(kind: Any) -> Any:
    import polars as pl

    if isinstance(kind, tuple):
        tag, inner = kind
        if tag == "enum":
            return pl.Enum(list(inner))
        if tag == "list":
            return pl.List(polars_dtype(inner))
        return pl.Struct({name: polars_dtype(k) for name, k in inner})
    return {
        "string": pl.String, "int": pl.Int64, "float": pl.Float64, "bool": pl.Boolean,
        "date": pl.Date, "datetime": pl.Datetime("us", "UTC"), "json": pl.String,
    }[kind]  # fmt: skip


def _nested_json(kind: Any) -> bool:
    if isinstance(kind, tuple) and kind[0] == "list":
        return kind[1] == "json" or _nested_json(kind[1])
    if isinstance(kind, tuple) and kind[0] == "struct":
        return any(k == "json" or _nested_json(k) for _, k in kind[1])
    return False


def _json_parts_as_text(value: Any, kind: Any) -> Any:
    """``value`` with its parts of no single type as their JSON text, which polars reads as a String."""
    if value is None:
        return None
    if kind == "json":
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if isinstance(kind, tuple) and kind[0] == "list":
        return [_json_parts_as_text(v, kind[1]) for v in value]
    if isinstance(kind, tuple) and kind[0] == "struct":
        return {name: _json_parts_as_text(value.get(name), k) for name, k in kind[1]}
    return value


def _decode(answers: Sequence[str | None], kind: Any) -> Any:
    """All answers at once into a polars Series of the kind's dtype (None stays null)."""
    import polars as pl

    if _nested_json(kind):  # a union or a recursive model inside: polars cannot read an object as a String
        answers = [None if a is None else json.dumps(_json_parts_as_text(json.loads(a), kind), ensure_ascii=False)
                   for a in answers]  # fmt: skip
    texts = pl.Series("answers", answers if isinstance(answers, list) else list(answers), dtype=pl.String)
    if kind == "json":  # mixed types: the validated JSON text, as it is (a JSON null is a null)
        return texts.replace("null", None)
    if kind == "string":  # a bare JSON string decodes the same way
        return texts.str.json_decode(pl.String)
    return texts.str.json_decode(polars_dtype(kind))


def _to_pandas(series: Any, kind: Any) -> Any:
    import pandas as pd
    import pyarrow as pa

    if isinstance(kind, tuple) and kind[0] == "enum":
        codes = series.to_physical().fill_null(-1).to_numpy()
        return pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(list(kind[1])))
    if kind in ("int", "float", "bool", "string"):
        mapper = {pa.int64(): pd.Int64Dtype(), pa.float64(): pd.Float64Dtype(), pa.bool_(): pd.BooleanDtype(),
                  pa.large_string(): pd.StringDtype(), pa.string(): pd.StringDtype()}  # fmt: skip
        return series.to_arrow().to_pandas(types_mapper=mapper.get).array
    if kind in ("date", "datetime"):
        return series.to_pandas().array
    if kind == "json":
        return pd.array(series.to_list(), dtype=pd.StringDtype())
    return pd.Series(series.to_list(), dtype=object).array  # lists and dicts, as Python objects


def output_columns(schema: OutputSchema, output: str, *, unnest: bool = True, prefix: str = "") -> list[str]:
    """The names of the columns a schema run adds."""
    if unnest and schema.is_object:
        return [f"{prefix}{name}" for name in schema.fields]
    return [output]


def typed_columns(
    frame_kind: str, answers: Sequence[str | None], schema: OutputSchema, output: str, *,
    unnest: bool = True, prefix: str = "",
) -> list[tuple[str, Any]]:  # fmt: skip
    """``(name, values)`` for each new column: polars Series, or pandas arrays."""
    kind = _kind(schema.body(), schema.defs())
    series = _decode(answers, kind)
    if unnest and schema.is_object:
        assert isinstance(kind, tuple) and kind[0] == "struct"
        parts = [(f"{prefix}{name}", series.struct.field(name), k) for name, k in kind[1]]
    else:
        parts = [(output, series, kind)]
    if frame_kind == "polars":
        return [(name, s.alias(name)) for name, s, _ in parts]
    if frame_kind != "pandas":
        raise ConfigError(f"unknown frame kind {frame_kind!r}")
    return [(name, _to_pandas(s, k)) for name, s, k in parts]
