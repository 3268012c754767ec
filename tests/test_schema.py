"""Output schemas: what ``schema=`` and ``labels=`` become, their hash, and one answer checked."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any, Literal, Optional

import pytest
from pydantic import BaseModel, Field

from llmframe import ConfigError
from llmframe._schema import (
    InvalidAnswer,
    OutputSchema,
    classify_schema,
    extract_json,
    output_schema,
)


class Address(BaseModel):
    city: str
    zip: str | None = None


class Person(BaseModel):
    name: str = Field(description="full name")
    age: int = Field(ge=0, le=150)
    home: Address


PERSON_JSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "full name"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
}


# ---- output_schema: what it accepts ----------------------------------------------------------
@pytest.mark.parametrize(
    ("annotation", "item"),
    [
        (str, {"type": "string"}),
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (bool, {"type": "boolean"}),
        (dt.date, {"type": "string", "format": "date"}),
        (dt.datetime, {"type": "string", "format": "date-time"}),
        (Literal["a", "b"], {"type": "string", "enum": ["a", "b"]}),
        (list[int], {"type": "array", "items": {"type": "integer"}}),
        (int | None, {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
        (Optional[str], {"anyOf": [{"type": "string"}, {"type": "null"}]}),  # noqa: UP045
        (list[Literal["x"]] | None,
         {"anyOf": [{"type": "array", "items": {"type": "string", "const": "x"}}, {"type": "null"}]}),
    ],
)
def test_single_types(annotation: Any, item: dict[str, Any]) -> None:
    schema = output_schema(annotation)
    assert schema.item == item
    assert not schema.is_object and schema.fields == []
    assert schema.labels is None and not schema.multi


def test_a_model_becomes_a_strict_object() -> None:
    schema = output_schema(Person)
    assert schema.is_object and schema.fields == ["name", "age", "home"]
    assert schema.description == "Person"
    assert schema.item["properties"]["home"] == {"$ref": "#/$defs/Address"}
    assert schema.item["$defs"]["Address"]["required"] == ["city", "zip"]
    assert schema.body() == {k: v for k, v in schema.item.items() if k != "$defs"}
    assert set(schema.defs()) == {"Address"}


def test_a_field_dict_becomes_a_model() -> None:
    schema = output_schema({"city": str, "population": int, "capital": (bool, False), "tags": list[str]})
    assert schema.fields == ["city", "population", "capital", "tags"]
    assert schema.item["properties"]["population"] == {"type": "integer"}
    assert schema.item["properties"]["capital"] == {"anyOf": [{"type": "boolean"}, {"type": "null"}]}
    assert schema.validate({"city": "Oslo", "population": 1, "tags": []}) == (
        '{"city":"Oslo","population":1,"capital":false,"tags":[]}')  # fmt: skip


def test_a_json_schema_dict_is_validated_as_written() -> None:
    before = copy.deepcopy(PERSON_JSON)
    schema = output_schema(PERSON_JSON)
    assert before == PERSON_JSON
    assert schema.description == "JSON schema"
    assert schema.fields == ["name", "age"]
    assert schema.item["properties"]["name"] == {"type": "string", "description": "full name"}
    assert schema.validate({"name": "Ann", "age": 30}) == '{"name":"Ann","age":30}'
    with pytest.raises(InvalidAnswer, match="'age'"):
        schema.validate({"name": "Ann", "age": 151})


@pytest.mark.parametrize(
    "wrapped",
    [
        {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": PERSON_JSON}},
        {"name": "person", "schema": PERSON_JSON},
        {"name": "person", "strict": True, "schema": PERSON_JSON},
    ],
)
def test_response_format_wrappers_are_taken_off(wrapped: dict[str, Any]) -> None:
    before = copy.deepcopy(wrapped)
    assert output_schema(wrapped).item == output_schema(PERSON_JSON).item
    assert wrapped == before


def test_a_model_and_the_same_json_schema_agree() -> None:
    class Small(BaseModel):
        name: str = Field(description="full name")
        age: int = Field(ge=0, le=150)

    assert output_schema(Small).item == output_schema(PERSON_JSON).item


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({}, "no fields"),
        ({"my field": str}, "identifiers"),
        ({1: str}, "identifiers"),
        (None, "must be a pydantic model"),
        ("string", "must be a pydantic model"),
        (bytes, "must be a pydantic model"),
        (Person(name="a", age=1, home=Address(city="c")), "must be a pydantic model"),
        (dict[str, int], "without fixed fields"),
        (tuple[int, str], "tuples"),
        ({"a": dict[str, int]}, "without fixed fields"),
        ({"a": object}, "any type"),
        ({"type": "object", "additionalProperties": {"type": "integer"}}, "without fixed fields"),
    ],
)
def test_what_cannot_be_a_schema_is_a_config_error(schema: Any, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        output_schema(schema)


# ---- the hash ----------------------------------------------------------------------------------
def test_equal_schemas_have_equal_hashes() -> None:
    assert output_schema(Person).hash == output_schema(Person).hash
    assert output_schema({"a": int}).hash == output_schema({"a": int}).hash
    assert output_schema(PERSON_JSON).hash == output_schema(copy.deepcopy(PERSON_JSON)).hash
    assert classify_schema(["a", "b"]).hash == classify_schema(("a", "b")).hash
    assert len(output_schema(int).hash) == 32


def _person(**changes: Any) -> dict[str, Any]:
    schema = copy.deepcopy(PERSON_JSON)
    for path, value in changes.items():
        node = schema
        *parents, last = path.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    return schema


@pytest.mark.parametrize(
    "changed",
    [
        _person(properties__name__type="integer"),  # a type
        _person(properties__age__maximum=120),  # a bound
        _person(properties__age__minimum=1),
        _person(properties__name__description="given name"),  # a description
        _person(properties__nick={"type": "string"}),  # a field
        _person(required=["name"]),  # a field made optional
        _person(properties__name__format="date"),
    ],
)
def test_any_change_is_a_new_hash(changed: dict[str, Any]) -> None:
    assert output_schema(changed).hash != output_schema(PERSON_JSON).hash


def test_labels_their_order_and_multi_change_the_hash() -> None:
    hashes = {
        classify_schema(["a", "b"]).hash,
        classify_schema(["a", "c"]).hash,
        classify_schema(["b", "a"]).hash,  # the order is the categories' order
        classify_schema(["a", "b", "c"]).hash,
        classify_schema(["a", "b"], multi=True).hash,
        output_schema(Literal["a", "b"]).hash,  # no labels: the answer is not matched to one
    }
    assert len(hashes) == 6


def test_single_types_have_distinct_hashes() -> None:
    types = [str, int, float, bool, dt.date, dt.datetime, list[int], int | None, Literal["a"]]
    assert len({output_schema(t).hash for t in types}) == len(types)


# ---- the roots a request carries ----------------------------------------------------------
def test_single_root_of_an_object_is_the_item() -> None:
    schema = output_schema(Person)
    assert schema.single_root() == schema.item


def test_single_root_wraps_a_single_value() -> None:
    assert output_schema(int).single_root() == {
        "type": "object",
        "title": "llmframe_value",
        "properties": {"value": {"type": "integer"}},
        "required": ["value"],
        "additionalProperties": False,
    }


def test_single_root_keeps_defs_at_the_root() -> None:
    root = output_schema(list[Address]).single_root()
    assert root["properties"]["value"] == {"type": "array", "items": {"$ref": "#/$defs/Address"}}
    assert set(root["$defs"]) == {"Address"}
    assert "$defs" not in root["properties"]["value"]


def test_packed_root_refers_to_the_item_once_per_id() -> None:
    schema = output_schema(Person)
    before = copy.deepcopy(schema.item)
    root = schema.packed_root(3)
    assert root["type"] == "object" and root["additionalProperties"] is False
    assert root["required"] == ["0", "1", "2"]
    assert root["properties"] == {str(i): {"$ref": "#/$defs/llmframe_item"} for i in range(3)}
    assert root["$defs"]["llmframe_item"] == schema.body()
    assert root["$defs"]["Address"] == schema.item["$defs"]["Address"]
    assert schema.item == before  # building a root does not change the item


def test_packed_root_of_a_single_value() -> None:
    root = output_schema(dt.date).packed_root(2)
    assert root["$defs"] == {"llmframe_item": {"type": "string", "format": "date"}}
    assert root["required"] == ["0", "1"]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


@pytest.mark.parametrize("make", [lambda s: s.single_root(), lambda s: s.packed_root(2)])
def test_every_ref_in_a_root_resolves(make: Any) -> None:
    class Outer(BaseModel):
        a: Address
        many: list[Address]
        maybe: Address | None

    root = make(output_schema(Outer))
    refs = _refs(root)
    assert refs
    for ref in refs:
        assert ref.startswith("#/$defs/") and ref.rsplit("/", 1)[-1] in root["$defs"]


# ---- validate ----------------------------------------------------------------------------------
def test_validate_gives_canonical_json() -> None:
    schema = output_schema(Person)
    answer = schema.validate({"home": {"city": "Oslo"}, "age": "30", "name": "Ann"})
    assert answer == '{"name":"Ann","age":30,"home":{"city":"Oslo","zip":null}}'
    assert output_schema(float).validate(2) == "2.0"
    assert output_schema(dt.date).validate("2024-01-02") == '"2024-01-02"'
    assert output_schema(str).validate("é") == '"é"'
    assert output_schema(int | None).validate(None) == "null"


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"name": "Ann", "age": -1, "home": {"city": "Oslo"}}, "field 'age'"),
        ({"name": "Ann", "age": 1}, "field 'home'"),
        ({"name": "Ann", "age": 1, "home": {"zip": "1"}}, "field 'home.city'"),
        ({"name": None, "age": 1, "home": {"city": "Oslo"}}, "field 'name'"),
        ("Ann", "the answer"),
    ],
)
def test_an_invalid_answer_names_the_field(value: Any, field: str) -> None:
    with pytest.raises(InvalidAnswer, match=field):
        output_schema(Person).validate(value)


def test_invalid_answer_is_a_value_error_and_says_what_came() -> None:
    with pytest.raises(ValueError, match=r"\(got -1\)"):
        output_schema(Person).validate({"name": "Ann", "age": -1, "home": {"city": "Oslo"}})


def test_many_errors_are_summed_up() -> None:
    schema = output_schema({"a": int, "b": int, "c": int, "d": int, "e": int})
    with pytest.raises(InvalidAnswer, match=r"and 2 more$"):
        schema.validate({})


# ---- from_reply ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("annotation", "reply", "answer"),
    [
        (int, "42", "42"),
        (int, " 42\n", "42"),
        (int, '{"value": 42}', "42"),
        (int, "```json\n42\n```", "42"),
        (int, '"42"', "42"),
        (float, "2.5", "2.5"),
        (bool, "false", "false"),
        (str, "billing", '"billing"'),
        (str, '"billing"', '"billing"'),
        (str, '{"value": "billing"}', '"billing"'),
        (str, "42", '"42"'),  # plain text that also parses as JSON
        (str, '{"answer": "billing"}', '"billing"'),  # JSON mode: the key the model chose
        (int, '{"answer": 5}', "5"),
        (dt.date, "2001-01-01", '"2001-01-01"'),
        (dt.date, '{"value": "2001-01-01"}', '"2001-01-01"'),
        (int | None, "null", "null"),
        (int | None, '{"value": null}', "null"),
        (list[int], "[1, 2]", "[1,2]"),
        (list[int], 'Here: ```json\n{"value": [3]}\n```', "[3]"),
    ],
)
def test_from_reply_single_values(annotation: Any, reply: str, answer: str) -> None:
    assert output_schema(annotation).from_reply(reply) == answer


@pytest.mark.parametrize(
    "reply",
    [
        '{"name": "Ann", "age": 3, "home": {"city": "Oslo"}}',
        '```json\n{"name": "Ann", "age": 3, "home": {"city": "Oslo"}}\n```',
        'Sure! {"name": "Ann", "age": 3, "home": {"city": "Oslo"}} Hope that helps.',
        '{"name": "Ann", "age": 3, "home": {"city": "Oslo", "zip": null}, "extra": 1}',
    ],
)
def test_from_reply_objects(reply: str) -> None:
    assert output_schema(Person).from_reply(reply) == '{"name":"Ann","age":3,"home":{"city":"Oslo","zip":null}}'


@pytest.mark.parametrize(
    ("annotation", "reply", "words"),
    [
        (int, "", "empty answer"),
        (int, "   ", "empty answer"),
        (int, None, "empty answer"),
        (int, "forty-two", "valid integer"),
        (str, '{"a": 1}', "valid string"),  # JSON of the wrong shape is never stored as text
        (str, '{"a": "x", "b": "y"}', "valid string"),
        (Person, "Ann, 3, Oslo", "not JSON"),
        (Person, '{"name": "Ann", "age": 3}', "field 'home'"),
        (Person, '{"value": {"name": "Ann", "age": 3, "home": {"city": "Oslo"}}}', "field 'name'"),
        (int, '{"value": "many"}', "valid integer"),
    ],
)
def test_from_reply_refuses_what_does_not_validate(annotation: Any, reply: str | None, words: str) -> None:
    with pytest.raises(InvalidAnswer, match=words):
        output_schema(annotation).from_reply(reply)


def test_a_model_with_a_value_field_is_not_unwrapped() -> None:
    schema = output_schema({"value": int})
    assert schema.from_reply('{"value": 3}') == '{"value":3}'


# ---- instructions --------------------------------------------------------------------------------
def _schema_in(text: str) -> Any:
    assert text.count("<schema>") == 1 and text.endswith("</schema>")
    return json.loads(text.split("<schema>")[1].removesuffix("</schema>"))


def test_instructions_for_one_row_carry_the_single_root() -> None:
    for schema in (output_schema(Person), output_schema(int)):
        text = schema.instructions(packed=False)
        assert text.startswith("Reply with only a JSON object")
        assert _schema_in(text) == schema.single_root()


def test_instructions_for_packed_rows_carry_the_item() -> None:
    for schema in (output_schema(Person), output_schema(int), classify_schema(["x", "y"])):
        text = schema.instructions(packed=True)
        assert text.startswith("Each answer is JSON")
        assert _schema_in(text) == schema.item


def test_instructions_are_compact_and_keep_non_ascii() -> None:
    text = classify_schema(["café", "thé"]).instructions(packed=True)
    assert '"enum":["café","thé"]' in text and ", " not in text.split("<schema>")[1]


# ---- classify_schema -------------------------------------------------------------------------------
LABELS = ["Billing", "Tech support", "Other"]


def test_classify_schema_is_an_enum_of_the_labels_in_order() -> None:
    schema = classify_schema(LABELS)
    assert isinstance(schema, OutputSchema)
    assert schema.item == {"type": "string", "enum": LABELS}
    assert schema.labels == tuple(LABELS) and not schema.multi
    assert schema.description == "labels" and not schema.is_object
    multi = classify_schema(LABELS, multi=True)
    assert multi.item == {"type": "array", "items": {"type": "string", "enum": LABELS}}
    assert multi.multi and multi.labels == tuple(LABELS)


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        ([], "empty"),
        ((), "empty"),
        (["a", "a"], "repeat"),
        (["a", "A"], "repeat"),
        (["a", " a "], "repeat"),
        (["Tech support", "tech  support."], "repeat"),
        ([1, 2], "non-empty strings"),
        (["a", None], "non-empty strings"),
        (["a", ""], "non-empty strings"),
        (["  "], "non-empty strings"),
        ("ab", "list of strings"),
        ({"a", "b"}, "list of strings"),
        (None, "list of strings"),
    ],
)
def test_bad_labels_are_a_config_error(labels: Any, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        classify_schema(labels)


@pytest.mark.parametrize(
    ("reply", "label"),
    [
        ("Billing", "Billing"),
        ("billing", "Billing"),
        (" BILLING. ", "Billing"),
        ('"billing"', "Billing"),
        ("'billing'", "Billing"),
        ("tech   SUPPORT", "Tech support"),
        ('{"value": "other"}', "Other"),
        ("```\nOther\n```", "Other"),
    ],
)
def test_answers_are_matched_to_the_exact_label(reply: str, label: str) -> None:
    assert classify_schema(LABELS).from_reply(reply) == json.dumps(label)


@pytest.mark.parametrize("value", ["billing", " Billing ", "TECH SUPPORT", "tech support!", "“Other”"])
def test_validate_matches_labels_too(value: str) -> None:
    # packed answers are validated one by one, without from_reply
    assert json.loads(classify_schema(LABELS).validate(value)) in LABELS


@pytest.mark.parametrize("value", ["sales", "Billing department", "", None, 1, ["Billing"]])
def test_answers_outside_the_labels_are_invalid(value: Any) -> None:
    with pytest.raises(InvalidAnswer, match="'Billing', 'Tech support' or 'Other'"):
        classify_schema(LABELS).validate(value)


def test_multi_matches_each_label_and_drops_repeats() -> None:
    schema = classify_schema(LABELS, multi=True)
    assert schema.validate(["other", "BILLING", "Other", "billing"]) == '["Other","Billing"]'
    assert schema.validate([]) == "[]"
    assert schema.from_reply('{"value": ["tech support"]}') == '["Tech support"]'
    with pytest.raises(InvalidAnswer, match="field '1'"):
        schema.validate(["Other", "sales"])
    with pytest.raises(InvalidAnswer, match="valid list"):
        schema.validate("Other")


def test_a_label_that_differs_only_outside_normalize_is_its_own() -> None:
    schema = classify_schema(["New York", "new-york"])
    assert schema.validate("new york") == '"New York"'
    assert schema.validate("NEW-YORK") == '"new-york"'


# ---- extract_json --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "value"),
    [
        ('{"a": 1}', {"a": 1}),
        ("  [1, 2] ", [1, 2]),
        ("42", 42),
        ('"text"', "text"),
        ("null", None),
        ('```json\n{"a": [1, {"b": 2}]}\n```', {"a": [1, {"b": 2}]}),
        ("```JSON\n[true]\n```", [True]),
        ('```\n{"a": 1}\n```', {"a": 1}),
        ('Here it is: {"a": {"b": "}"}} -- done', {"a": {"b": "}"}}),
        ("The list: [1, 2, 3].", [1, 2, 3]),
        ('before ```json\n{"a": 1}\n``` after {', {"a": 1}),
    ],
)
def test_extract_json_finds_the_value(content: str, value: Any) -> None:
    assert extract_json(content) == (True, value)


@pytest.mark.parametrize("content", ["", "billing", "{not json}", '{"a": 1} and {"b": 2}', "```\nplain\n```"])
def test_extract_json_finds_nothing_in_plain_text(content: str) -> None:
    assert extract_json(content) == (False, None)


# ---- the hash covers what validates, not only what is sent -----------------------------------------
def _model(**field: Any) -> type[BaseModel]:
    class Answer(BaseModel):
        name: str = Field(**field)

    return Answer


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({"min_length": 2}, {"min_length": 3}),  # strict mode drops minLength from what is sent
        ({}, {"max_length": 9}),
        ({"default": "x"}, {"default": "y"}),  # a default is what a left-out field stores
    ],
)
def test_constraints_left_out_of_the_item_still_change_the_hash(before: Any, after: Any) -> None:
    a, b = output_schema(_model(**before)), output_schema(_model(**after))
    assert a.item == b.item  # the same request...
    assert a.hash != b.hash  # ...but not the same answers: a cached one may not validate now


def test_a_models_class_name_is_not_part_of_the_hash() -> None:
    class Renamed(BaseModel):
        name: str = Field(min_length=2)

    assert output_schema(Renamed).hash == output_schema(_model(min_length=2)).hash


def test_a_property_called_title_is_part_of_the_hash() -> None:
    with_title = {"type": "object", "properties": {"title": {"type": "string"}, "x": {"type": "integer"}}}
    without = {"type": "object", "properties": {"x": {"type": "integer"}}}
    assert output_schema(with_title).hash != output_schema(without).hash


# ---- null for a field that may be left out ---------------------------------------------------------
class Defaults(BaseModel):
    name: str
    tags: list[str] = []
    lang: str = "en"
    home: Address | None = None


def test_null_for_a_field_with_a_default_is_its_default() -> None:
    # strict_schema made these fields nullable, so a strict-mode model may well send null
    schema = output_schema(Defaults)
    assert schema.item["properties"]["tags"]["anyOf"][-1] == {"type": "null"}
    value = {"name": "a", "tags": None, "lang": None, "home": None}
    assert schema.validate(value) == '{"name":"a","tags":[],"lang":"en","home":null}'
    assert value == {"name": "a", "tags": None, "lang": None, "home": None}  # not changed


def test_null_for_a_default_inside_a_list_of_objects() -> None:
    class Many(BaseModel):
        rows: list[Defaults]

    schema = output_schema(Many)
    answer = schema.validate({"rows": [{"name": "a", "tags": None, "lang": "fr"}, {"name": "b", "lang": None}]})
    assert json.loads(answer)["rows"] == [{"name": "a", "tags": [], "lang": "fr", "home": None},
                                          {"name": "b", "tags": [], "lang": "en", "home": None}]  # fmt: skip


def test_null_for_a_required_field_still_fails_and_says_so() -> None:
    with pytest.raises(InvalidAnswer, match=r"field 'name': Input should be a valid string \(got null\)"):
        output_schema(Defaults).validate({"name": None, "tags": None})
    with pytest.raises(InvalidAnswer, match=r"^field 'city': Input should be a valid string \(got null\)$"):
        output_schema(Address).validate({"city": None, "zip": None})


def test_null_for_a_default_with_another_error_reports_the_other() -> None:
    with pytest.raises(InvalidAnswer, match="field 'name'"):
        output_schema(Defaults).validate({"name": 5, "tags": None})


def test_null_for_a_field_dict_default() -> None:
    schema = output_schema({"a": int, "b": (str, "x")})
    assert schema.validate({"a": 1, "b": None}) == '{"a":1,"b":"x"}'


@pytest.mark.parametrize(
    ("schema", "reply", "words"),
    [
        (classify_schema(["a", "b"], multi=True), '["a", "c"]', r"field '1': Input should be 'a' or 'b' \(got 'c'\)"),
        (output_schema(int), "[42]", r"^the answer: Input should be a valid integer \(got \[42\]\)$"),
        (output_schema(list[int]), '{"value": ["x"]}', "field '0'"),
        (output_schema(dt.date), '"2023-02-29"', r"day value is outside expected range \(got '2023-02-29'\)"),
    ],
)
def test_from_reply_names_what_is_wrong_with_the_json_it_found(schema: OutputSchema, reply: str, words: str) -> None:
    # not the error of the whole reply read as a plain string ("Input should be a valid list")
    with pytest.raises(InvalidAnswer, match=words):
        schema.from_reply(reply)


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "object", "properties": {"a": {"not": {"type": "integer"}}}}, "'not' at a"),
        ({"type": "object", "properties": {"a": {}}}, "a value of any type"),
        ({"type": "array", "items": [{"type": "integer"}]}, "tuples"),
        ({"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}, "own \\$defs"),
        ({"type": "object", "properties": {"a": {"allOf": [{"type": "integer"}, {"minimum": 1}]}}}, "several"),
    ],
)
def test_a_json_schema_is_refused_with_the_construct_named(schema: dict[str, Any], words: str) -> None:
    # not "the JSON schema has a value of unknown type None" from building the validator
    with pytest.raises(ConfigError, match=f"^the JSON schema (uses|has) .*{words}"):
        output_schema(schema)
