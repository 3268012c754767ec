"""JSON Schema both ways: the strict subset structured outputs accept, and a pydantic type."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from llmframe import ConfigError
from llmframe._strict import from_json_schema, strict_schema


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """``strict_schema``, checking on the way that the input is left as it was."""
    before = copy.deepcopy(schema)
    out = strict_schema(schema)
    assert schema == before, "strict_schema mutated its input"
    return out


def objects(node: Any) -> list[dict[str, Any]]:
    """Every object schema in ``node``, nested ones and ``$defs`` included."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if node.get("type") == "object":
            found.append(node)
        for value in node.values():
            found.extend(objects(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(objects(value))
    return found


def keys(node: Any) -> set[str]:
    """Every key used anywhere in ``node`` except property names."""
    out: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            out.add(key)
            subs = list(value.values()) if key == "properties" else value  # names are not keys
            out |= keys(subs)
    elif isinstance(node, list):
        for value in node:
            out |= keys(value)
    return out


# ---- strict_schema: what it makes ----------------------------------------------------------
def test_every_property_is_required_and_optional_ones_become_nullable() -> None:
    out = strict({
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}, "c": {"type": "number"}},
        "required": ["a"],
    })  # fmt: skip
    assert out["required"] == ["a", "b", "c"]
    assert out["properties"]["a"] == {"type": "string"}
    assert out["properties"]["b"] == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert out["properties"]["c"] == {"anyOf": [{"type": "number"}, {"type": "null"}]}
    assert out["additionalProperties"] is False


@pytest.mark.parametrize(
    "nullable",
    [
        {"type": ["integer", "null"]},
        {"type": "null"},
        {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        {"anyOf": [{"type": "string"}, {"anyOf": [{"type": "integer"}, {"type": "null"}]}]},
    ],
)
def test_an_optional_property_already_nullable_is_not_wrapped_again(nullable: dict[str, Any]) -> None:
    out = strict({"type": "object", "properties": {"a": nullable}})
    assert out["properties"]["a"] == nullable
    assert out["required"] == ["a"]


def test_a_required_property_is_never_made_nullable() -> None:
    out = strict({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    assert out["properties"]["a"] == {"type": "integer"}


def test_additional_properties_false_on_every_object_nested_and_in_defs() -> None:
    schema = {
        "type": "object",
        "properties": {
            "inner": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
            "rows": {"type": "array", "items": {"type": "object", "properties": {"y": {"type": "string"}}}},
            "ref": {"$ref": "#/$defs/Thing"},
        },
        "required": ["inner", "rows", "ref"],
        "$defs": {"Thing": {"type": "object", "properties": {"z": {"type": "boolean"}}, "required": ["z"]}},
    }
    out = strict(schema)
    found = objects(out)
    assert len(found) == 4  # the root, inner, the list's items, $defs.Thing
    assert all(o["additionalProperties"] is False for o in found)
    assert all(o["required"] == list(o["properties"]) for o in found)
    assert out["properties"]["rows"]["items"]["properties"]["y"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert out["$defs"]["Thing"]["properties"]["z"] == {"type": "boolean"}


def test_titles_defaults_and_ignored_constraints_are_left_out() -> None:
    schema = {
        "title": "Answer",
        "type": "object",
        "properties": {
            "name": {"title": "Name", "type": "string", "minLength": 1, "maxLength": 9, "default": "x",
                     "examples": ["Ann"]},
            "n": {"type": "integer", "minimum": 0, "maximum": 9, "description": "how many"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": True},
        },
        "required": ["name", "n", "tags"],
    }  # fmt: skip
    out = strict(schema)
    assert not {"title", "default", "minLength", "maxLength", "examples", "uniqueItems"} & keys(out)
    assert out["properties"]["name"] == {"type": "string"}
    # what strict mode does express is kept
    assert out["properties"]["n"] == {"type": "integer", "minimum": 0, "maximum": 9, "description": "how many"}
    assert out["properties"]["tags"]["minItems"] == 1


def test_a_property_named_like_a_keyword_is_a_property() -> None:
    out = strict({"type": "object", "properties": {"title": {"type": "string"}, "default": {"type": "integer"}},
                  "required": ["title", "default"]})  # fmt: skip
    assert out["properties"] == {"title": {"type": "string"}, "default": {"type": "integer"}}


def test_a_ref_alone_is_kept_and_its_def_made_strict() -> None:
    out = strict({
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/A", "title": "A", "default": None}},
        "required": ["a"],
        "$defs": {"A": {"type": "object", "properties": {"x": {"type": "integer"}}, "title": "A"}},
    })  # fmt: skip
    assert out["properties"]["a"] == {"$ref": "#/$defs/A"}
    assert out["$defs"]["A"] == {"type": "object", "properties": {"x": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
                                 "required": ["x"], "additionalProperties": False}  # fmt: skip


def test_a_ref_with_siblings_is_inlined() -> None:
    out = strict({
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/Kind", "description": "the kind"}},
        "required": ["a"],
        "$defs": {"Kind": {"type": "string", "enum": ["x", "y"], "title": "Kind"}},
    })  # fmt: skip
    assert out["properties"]["a"] == {"type": "string", "enum": ["x", "y"], "description": "the kind"}


def test_one_of_becomes_any_of() -> None:
    out = strict({"oneOf": [{"type": "integer"}, {"type": "string"}]})
    assert out == {"anyOf": [{"type": "integer"}, {"type": "string"}]}


def test_a_single_all_of_is_merged() -> None:
    out = strict({
        "type": "object",
        "properties": {"a": {"allOf": [{"$ref": "#/$defs/Kind"}], "description": "the kind"}},
        "required": ["a"],
        "$defs": {"Kind": {"type": "string", "enum": ["x", "y"]}},
    })  # fmt: skip
    assert out["properties"]["a"] == {"type": "string", "enum": ["x", "y"], "description": "the kind"}
    assert strict({"allOf": [{"type": "integer", "minimum": 1}]}) == {"type": "integer", "minimum": 1}


def test_pydantic_schemas_come_out_strict() -> None:
    class Address(BaseModel):
        city: str
        zip: str | None = None

    class Person(BaseModel):
        name: str = Field(description="full name", min_length=1)
        age: int = Field(ge=0)
        home: Address
        past: list[Address] = []

    out = strict(TypeAdapter(Person).json_schema())
    assert out["required"] == ["name", "age", "home", "past"]
    assert out["properties"]["name"] == {"type": "string", "description": "full name"}
    assert out["properties"]["age"] == {"type": "integer", "minimum": 0}
    assert out["properties"]["home"] == {"$ref": "#/$defs/Address"}
    assert out["properties"]["past"]["anyOf"][1] == {"type": "null"}
    assert out["$defs"]["Address"]["required"] == ["city", "zip"]
    assert "title" not in keys(out)


def test_a_recursive_model_stays_a_ref() -> None:
    class Node(BaseModel):
        name: str
        children: list[Node]

    out = strict(TypeAdapter(Node).json_schema())
    assert out["type"] == "object" and out["required"] == ["name", "children"]
    assert out["properties"]["children"] == {"type": "array", "items": {"$ref": "#/$defs/Node"}}
    assert out["$defs"]["Node"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string"},
        {"type": "integer", "minimum": 1, "maximum": 5},
        {"type": "string", "format": "date"},
        {"type": "string", "enum": ["a", "b"]},
        {"const": "x"},
        {"type": "array", "items": {"type": "number"}, "maxItems": 3},
        {"type": ["string", "null"]},
    ],
)
def test_what_is_strict_already_comes_out_equal(schema: dict[str, Any]) -> None:
    assert strict(schema) == schema


# ---- strict_schema: what it refuses ----------------------------------------------------------
@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "object", "additionalProperties": {"type": "integer"}}, "without fixed fields"),
        ({"type": "object"}, "without fixed fields"),
        ({"type": "object", "properties": {"a": {"type": "object"}}, "required": ["a"]}, "free-form object) at a,"),
        ({"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": True}, "without fixed fields"),
        ({"type": "array", "prefixItems": [{"type": "integer"}]}, "tuples"),
        ({"type": "array", "items": [{"type": "integer"}]}, "tuples"),
        ({"not": {"type": "integer"}}, "'not'"),
        ({"type": "integer", "if": {"minimum": 0}, "then": {"maximum": 9}}, "if/then/else"),
        ({"type": "object", "patternProperties": {"^a": {"type": "integer"}}}, "patternProperties"),
        ({"type": "object", "propertyNames": {"pattern": "^a"}}, "propertyNames"),
        ({"allOf": [{"type": "integer"}, {"minimum": 0}]}, "allOf with several"),
        ({"$ref": "https://example.com/thing.json"}, "does not point into its own $defs"),
        ({"$ref": "#/$defs/Missing"}, "does not point into its own $defs"),
        ({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"$ref": "#/properties/a"}},
          "required": ["a", "b"]}, "at b that does not point"),
        ({"type": "object", "properties": {"a": {}}, "required": ["a"]}, "any type"),
        ({"type": "object", "properties": {"a": {"description": "anything"}}, "required": ["a"]}, "any type"),
        ({"type": "array", "items": {}}, "any type"),
        ({"type": "array"}, "a list without an item type"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "required": ["a"],
          "$defs": {"A": {"type": "object", "additionalProperties": {"type": "string"}}}}, "at $defs.A"),
    ],
)  # fmt: skip
def test_constructs_strict_mode_cannot_express_are_refused(schema: dict[str, Any], words: str) -> None:
    before = copy.deepcopy(schema)
    with pytest.raises(ConfigError, match=r"strict|\$defs") as info:
        strict_schema(schema)
    assert words in str(info.value)
    assert schema == before


@pytest.mark.parametrize("annotation", [dict[str, int], tuple[int, str], Any])
def test_pydantic_types_strict_mode_cannot_express_are_refused(annotation: Any) -> None:
    with pytest.raises(ConfigError):
        strict_schema(TypeAdapter(annotation).json_schema())


def test_the_refusal_names_the_source() -> None:
    with pytest.raises(ConfigError, match="the JSON schema uses 'not'"):
        strict_schema({"not": {}}, "JSON schema")


# ---- from_json_schema ----------------------------------------------------------------------------
def adapter(schema: dict[str, Any]) -> TypeAdapter[Any]:
    before = copy.deepcopy(schema)
    made = TypeAdapter(from_json_schema(schema))
    assert schema == before, "from_json_schema mutated its input"
    return made


def valid(schema: dict[str, Any], value: Any) -> Any:
    return adapter(schema).validate_python(value)


def invalid(schema: dict[str, Any], value: Any) -> None:
    with pytest.raises(ValidationError):
        adapter(schema).validate_python(value)


@pytest.mark.parametrize(
    ("schema", "good", "bad"),
    [
        ({"type": "string"}, "x", 1),
        ({"type": "integer"}, 3, 3.5),
        ({"type": "number"}, 2.5, "many"),
        ({"type": "boolean"}, False, "perhaps"),
        ({"type": "null"}, None, 0),
        ({"type": ["integer", "null"]}, None, "x"),
        ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, 4, "x"),
        ({"oneOf": [{"type": "integer"}, {"type": "boolean"}]}, True, "x"),
        ({"enum": ["a", "b"]}, "b", "c"),
        ({"type": "string", "enum": ["a", "b"]}, "a", "A"),
        ({"enum": [1, 2]}, 2, 3),
        ({"const": "x"}, "x", "y"),
        ({"type": "integer", "minimum": 0, "maximum": 10}, 10, 11),
        ({"type": "integer", "minimum": 0, "maximum": 10}, 0, -1),
        ({"type": "integer", "exclusiveMinimum": 0}, 1, 0),
        ({"type": "number", "exclusiveMaximum": 1}, 0.5, 1.0),
        ({"type": "number", "multipleOf": 0.5}, 1.5, 1.3),
        ({"type": "string", "minLength": 2}, "ab", "a"),
        ({"type": "string", "maxLength": 2}, "ab", "abc"),
        ({"type": "string", "pattern": "^[a-z]+$"}, "abc", "ABC"),
        ({"type": "string", "format": "date"}, "2024-02-29", "2023-02-29"),
        ({"type": "string", "format": "date-time"}, "2024-01-02T03:04:05Z", "yesterday"),
        ({"type": "array", "items": {"type": "integer"}}, [1, 2], ["x"]),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 1}, [1], []),
        ({"type": "array", "items": {"type": "integer"}, "maxItems": 2}, [1, 2], [1, 2, 3]),
    ],
)
def test_the_type_validates_like_the_schema(schema: dict[str, Any], good: Any, bad: Any) -> None:
    valid(schema, good)
    invalid(schema, bad)


def test_formats_give_dates_and_datetimes() -> None:
    assert valid({"type": "string", "format": "date"}, "2024-01-02") == dt.date(2024, 1, 2)
    when = valid({"type": "string", "format": "date-time"}, "2024-01-02T03:04:05Z")
    assert when == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert valid({"type": "string", "format": "email"}, "not checked") == "not checked"


OBJECT = {
    "type": "object",
    "title": "Person",
    "properties": {
        "name": {"type": "string", "description": "full name"},
        "age": {"type": "integer", "minimum": 0},
        "home": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city"],
        },
        "nick": {"type": "string"},
    },
    "required": ["name", "age", "home"],
}


def test_objects_nested_and_optional_fields() -> None:
    made = adapter(OBJECT)
    person = made.validate_python({"name": "Ann", "age": 3, "home": {"city": "Oslo"}})
    assert made.dump_python(person) == {"name": "Ann", "age": 3, "home": {"city": "Oslo", "zip": None}, "nick": None}
    assert made.dump_python(made.validate_python({"name": "Ann", "age": 3, "home": {"city": "Oslo"}, "nick": None}))[
        "nick"] is None  # fmt: skip
    for bad in (
        {"age": 3, "home": {"city": "Oslo"}},  # a required field missing
        {"name": "Ann", "age": -1, "home": {"city": "Oslo"}},  # a bound, one level down
        {"name": "Ann", "age": 3, "home": {"zip": "0150"}},  # a required field of the nested object
        {"name": "Ann", "age": None, "home": {"city": "Oslo"}},  # required is not nullable
    ):
        with pytest.raises(ValidationError):
            made.validate_python(bad)


def test_descriptions_are_kept_on_the_fields() -> None:
    model = from_json_schema(OBJECT)
    assert model.model_fields["name"].description == "full name"
    assert model.__name__ == "Person"


def test_refs_resolve_into_defs_and_are_made_once() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/P"}, "b": {"$ref": "#/definitions/P"},
                       "c": {"type": "array", "items": {"$ref": "#/$defs/P"}}},
        "required": ["a", "b", "c"],
        "$defs": {"P": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
    }  # fmt: skip
    model = from_json_schema(schema)
    assert model.model_fields["a"].annotation is model.model_fields["b"].annotation
    made = TypeAdapter(model)
    made.validate_python({"a": {"x": 1}, "b": {"x": 2}, "c": [{"x": 3}]})
    with pytest.raises(ValidationError):
        made.validate_python({"a": {"x": 1}, "b": {"x": 2}, "c": [{"x": "three"}]})


def test_definitions_work_like_defs() -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "#/definitions/K"}}, "required": ["a"],
              "definitions": {"K": {"enum": ["x", "y"]}}}  # fmt: skip
    valid(schema, {"a": "x"})
    invalid(schema, {"a": "z"})


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/N"}}, "required": ["a"],
         "$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}}},
        {"$ref": "#/$defs/A", "$defs": {"A": {"anyOf": [{"$ref": "#/$defs/B"}, {"type": "null"}]},
                                        "B": {"type": "array", "items": {"$ref": "#/$defs/A"}}}},
    ],
)  # fmt: skip
def test_recursion_is_refused(schema: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="refers to itself"):
        from_json_schema(schema)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}},
        {"type": "thing"},
        {"type": "object", "properties": {"a": 5}},
    ],
)
def test_what_cannot_be_a_type_is_a_config_error(schema: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        from_json_schema(schema)


def test_refs_into_definitions_point_where_the_defs_went() -> None:
    # ``definitions`` (draft 7, pydantic v1) are gathered under ``$defs``: a ref left at
    # ``#/definitions/A`` would point at nothing in what is sent.
    out = strict({"type": "object", "properties": {"a": {"$ref": "#/definitions/A"}}, "required": ["a"],
                  "definitions": {"A": {"type": "object", "properties": {"b": {"$ref": "#/definitions/B"}},
                                        "required": ["b"]},
                                  "B": {"type": "string", "enum": ["x"]}}})  # fmt: skip
    assert "definitions" not in out and set(out["$defs"]) == {"A", "B"}
    assert out["properties"]["a"] == {"$ref": "#/$defs/A"}
    assert out["$defs"]["A"]["properties"]["b"] == {"$ref": "#/$defs/B"}


def test_a_single_all_of_validates_like_its_schema() -> None:
    # what pydantic v1 and other generators write for a described $ref; strict_schema merges it
    schema = {"type": "object", "required": ["a"],
              "properties": {"a": {"allOf": [{"$ref": "#/$defs/Kind"}], "description": "the kind"},
                             "n": {"allOf": [{"type": "integer"}], "minimum": 1}},
              "$defs": {"Kind": {"type": "string", "enum": ["x", "y"]}}}  # fmt: skip
    assert valid(schema, {"a": "x", "n": 2}).a == "x"
    invalid(schema, {"a": "z"})
    invalid(schema, {"a": "x", "n": 0})
    with pytest.raises(ConfigError, match="allOf"):
        from_json_schema({"allOf": [{"type": "integer"}, {"minimum": 0}]})


@pytest.mark.filterwarnings("error")  # "shadows an attribute in parent BaseModel" is a warning
def test_field_names_pydantic_keeps_for_itself_are_fields_too() -> None:
    names = ["_id", "schema", "model_config", "model_name", "json", "copy", "field_0", "my field", "class"]
    schema = {"type": "object", "properties": {n: {"type": "integer"} for n in names}, "required": names[:-1]}
    made = adapter(schema)
    value = {n: i for i, n in enumerate(names)}
    assert made.dump_python(made.validate_python(value), by_alias=True) == value
    with pytest.raises(ValidationError, match="_id"):
        made.validate_python({**value, "_id": "x"})
    assert made.dump_python(made.validate_python({n: 1 for n in names[:-1]}), by_alias=True)["class"] is None
