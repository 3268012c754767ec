from __future__ import annotations

import math

import pandas as pd
import pytest

from llmframe import TemplateError
from llmframe._template import is_null, parse_template


def test_fields_in_first_use_order_and_render() -> None:
    t = parse_template("{b} then {a} then {b} {{literal}}", ["a", "b", "c"])
    assert t.fields == ("b", "a")
    assert t.render({"a": "1", "b": "2"}) == "2 then 1 then 2 {literal}"
    assert t.render({"a": "1", "b": "2"}) == t.text.format(a="1", b="2")


def test_column_names_with_spaces() -> None:
    t = parse_template("Review: {review text}", ["review text"])
    assert t.render({"review text": "ok"}) == "Review: ok"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Hi {name", r"malformed template .* at character 3"),
        ("Hi name}", r"malformed template .* at character 7"),
        ("{0}", "positional"),
        ("{}", "positional"),
        ("{name!r}", "conversion"),
        ("{name:>5}", "format spec"),
        ("plain", "no {column} fields"),
        ("{nmae}", "'nmae' is not a column; available columns: 'name', 'age'"),
        ("{x} {y}", "fields 'x', 'y' are not a column"),
    ],
)
def test_errors_name_the_problem(text: str, match: str) -> None:
    with pytest.raises(TemplateError, match=match.replace("{", r"\{").replace("}", r"\}") if "column}" in match else match):
        parse_template(text, ["name", "age"])


def test_not_a_string() -> None:
    with pytest.raises(TemplateError, match="must be a str"):
        parse_template(3, ["a"])  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [None, math.nan, float("nan"), pd.NA, pd.NaT])
def test_nulls(value: object) -> None:
    assert is_null(value)


@pytest.mark.parametrize("value", ["", "nan", 0, 0.0, False, [1], {"a": 1}])
def test_not_nulls(value: object) -> None:
    assert not is_null(value)


