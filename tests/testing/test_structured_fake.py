"""Structured output: the fake's value for a JSON schema follows rules a test recomputes."""

from __future__ import annotations

import copy
import datetime as dt
import doctest
import hashlib
import re
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

import llmframe.testing._schema
from llmframe.testing import expected_answer, expected_value
from llmframe.testing._schema import fill

TEMPLATE = "Review: {review} ({stars} stars)"
ITEMS = [
    {"review": "Great value", "stars": "5"},
    {"review": "Broke after a day", "stars": "1"},
    {"review": "Très bien, mais cher", "stars": "4"},
    {"review": "Said meh", "stars": "3"},
    {"review": "Fine", "stars": "2"},
    {"review": "Would buy again", "stars": "5"},
]
PROMPTS = [TEMPLATE.format_map(item) for item in ITEMS]


class Address(BaseModel):
    city: str
    zip_code: Annotated[int, Field(ge=10000, le=99999)]


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "mixed"]
    stars: Annotated[int, Field(ge=1, le=5)]
    confidence: Annotated[float, Field(gt=0, lt=1)]
    summary: str
    tags: list[str]
    refund: bool | None = None
    seen: dt.date
    address: Address


REVIEW = Review.model_json_schema()


# ------------------------------------------------------------------------ fill rules


def test_fill_rules() -> None:
    assert expected_value("p", {"type": "integer", "minimum": 3, "maximum": 3}) == 3
    open_int = {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 2}
    assert expected_value("p", open_int) == 1
    open_unit = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
    assert all(0 < expected_value(f"p{i}", open_unit) < 1 for i in range(300))
    assert {expected_value(f"p{i}", {"type": "integer"}) for i in range(2000)} == set(range(101))
    assert expected_value("p", {"const": "fixed"}) == "fixed"
    assert expected_value("p", {"type": "null"}) is None
    assert expected_value("p", {"type": "string"}) == expected_answer("p")
    obj = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}}
    assert expected_value("p", obj) == {
        "a": expected_answer("p\x00/a"),
        "b": expected_answer("p\x00/b"),
    }
    assert list(expected_value("p", {"properties": {"z": {}, "a": {}}})) == ["z", "a"]
    nested = {"type": "array", "items": {"type": "string"}, "minItems": 5, "maxItems": 5}
    assert expected_value("p", nested) == [expected_answer(f"p\x00/{i}") for i in range(5)]
    # A type list and anyOf with null: null a quarter of the time, else the first other type.
    nullable = [expected_value(f"p{i}", {"type": ["integer", "null"]}) for i in range(400)]
    assert {type(v) for v in nullable} == {int, type(None)}
    either_schema = {"anyOf": [{"type": "boolean"}, {"type": "string"}]}
    either = [expected_value(f"p{i}", either_schema) for i in range(50)]
    assert {type(v) for v in either} == {bool, str}
    refs = {
        "definitions": {"N": {"type": "integer", "minimum": 7, "maximum": 7}},
        "type": "object",
        "properties": {"n": {"$ref": "#/definitions/N"}},
    }
    assert expected_value("p", refs) == {"n": 7}


def h(prompt: str, path: str = "") -> int:
    digest = hashlib.blake2b(f"{prompt}\x00{path}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest, "big")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_values_follow_the_documented_formulas(prompt: str) -> None:
    x = h(prompt)
    assert expected_value(prompt, {"type": "integer", "minimum": 1, "maximum": 5}) == 1 + x % 5
    assert expected_value(prompt, {"type": "integer", "minimum": 10}) == 10 + x % 101
    assert expected_value(prompt, {"type": "number"}) == round((x % 1000) / 1000 * 100, 3)
    bounded = {"type": "number", "minimum": -1, "maximum": 1}
    assert expected_value(prompt, bounded) == round(-1 + (x % 1000) / 1000 * 2, 3)
    assert expected_value(prompt, {"type": "boolean"}) is (x % 2 == 1)
    assert expected_value(prompt, {"enum": ["a", "b", "c"]}) == ["a", "b", "c"][x % 3]
    day = dt.date(2000, 1, 1) + dt.timedelta(days=x % 9000)
    assert expected_value(prompt, {"type": "string", "format": "date"}) == day.isoformat()
    stamp = dt.datetime.fromisoformat(
        expected_value(prompt, {"type": "string", "format": "date-time"})
    )
    assert stamp.utcoffset() == dt.timedelta(0) and stamp.year >= 2000
    nullable = expected_value(prompt, {"anyOf": [{"type": "integer"}, {"type": "null"}]})
    assert nullable == (None if x % 4 == 0 else x % 101)
    array = expected_value(prompt, {"type": "array", "items": {"type": "boolean"}})
    assert array == [h(prompt, f"/{i}") % 2 == 1 for i in range(1 + x % 3)]
    obj = {"type": "object", "properties": {"n": {"type": "integer"}}}
    assert expected_value(prompt, obj) == {"n": h(prompt, "/n") % 101}


def test_enum_labels() -> None:
    labels = {"enum": ["a", "b", "c"]}
    assert {expected_value(f"p{i}", labels) for i in range(60)} == {"a", "b", "c"}
    assert expected_value("p", labels, answer_fn=lambda _: "c") == "c"
    below = {"type": "object", "properties": {"label": labels}}
    # Only a top-level label follows answer_fn; a nested one follows the hash.
    assert {
        expected_value(f"p{i}", below, answer_fn=lambda _: "c")["label"] for i in range(60)
    } == {
        "a",
        "b",
        "c",
    }
    multi = {"type": "array", "items": labels, "uniqueItems": True}
    picks = [expected_value(f"p{i}", multi) for i in range(100)]
    assert all(len(set(p)) == len(p) for p in picks) and {len(p) for p in picks} == {1, 2, 3}
    two = {"type": "array", "items": {"enum": ["x", "y"]}}
    assert {tuple(sorted(expected_value(f"p{i}", two))) for i in range(60)} == {
        ("x",),
        ("y",),
        ("x", "y"),
    }
    at_least = {"type": "array", "items": {"enum": ["x", "y"]}, "minItems": 4}
    assert len(expected_value("p", at_least)) == 4  # repeats only when the enum is too short


def test_pydantic_field_kinds_cover_their_range() -> None:
    values = [expected_value(f"row {i}", REVIEW) for i in range(400)]
    for value in values:
        Review.model_validate(value)
        assert 1 <= len(value["tags"]) <= 3 and 0 < value["confidence"] < 1
    assert {v["stars"] for v in values} == {1, 2, 3, 4, 5}
    assert {v["sentiment"] for v in values} == {"positive", "negative", "mixed"}
    assert {v["refund"] for v in values} == {None, True, False}
    assert 0.15 < sum(v["refund"] is None for v in values) / len(values) < 0.35
    assert len({v["seen"] for v in values}) > 300
    assert all(10000 <= v["address"]["zip_code"] <= 99999 for v in values)
    assert all(re.fullmatch(r"a[0-9a-f]{7}", v["address"]["city"]) for v in values)


def test_recursive_schema_stays_finite() -> None:
    class Node(BaseModel):
        name: str
        children: list[Node]
        parent: Node | None = None

    schema = Node.model_json_schema()
    for i in range(20):
        Node.model_validate(expected_value(f"tree {i}", schema))


def test_fill_does_not_change_the_schema() -> None:
    schema = copy.deepcopy(REVIEW)
    fill("p", schema, schema)
    assert schema == REVIEW


def test_expected_value_doctest() -> None:
    result = doctest.testmod(llmframe.testing._schema)
    assert result.attempted >= 5 and result.failed == 0
