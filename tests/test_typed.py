"""Typed columns from validated answers: the dtypes a user expects, and nulls as real nulls."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import pandas as pd
import polars as pl
import pytest
from pydantic import BaseModel

from llmframe import ConfigError
from llmframe._schema import OutputSchema, classify_schema, output_schema
from llmframe._typed import output_columns, typed_columns

UTC = dt.timezone.utc


class Inner(BaseModel):
    q: int


class Row(BaseModel):
    name: str
    n: int | None
    score: float
    ok: bool
    day: dt.date
    at: dt.datetime | None
    kind: Literal["x", "y"]
    tags: list[str]
    inner: Inner


ROW = {"name": "Ann", "n": 3, "score": 0.5, "ok": True, "day": "2024-01-02", "at": "2024-01-02T03:04:05Z",
       "kind": "y", "tags": ["a", "b"], "inner": {"q": 1}}  # fmt: skip
ROW_NULLS = {**ROW, "n": None, "at": None, "tags": []}


def as_list(frame_kind: str, values: Any) -> list[Any]:
    """A column as Python values, nulls as None."""
    if frame_kind == "polars":
        assert isinstance(values, pl.Series)
        return list(values.to_list())
    out = pd.Series(values).tolist()
    return [None if not isinstance(v, (list, dict)) and pd.isna(v) else v for v in out]


def columns(frame_kind: str, schema: OutputSchema, values: list[Any], **kw: Any) -> dict[str, Any]:
    """The columns of ``values`` (``...`` for a failed row), validated as a run stores them."""
    answers = [None if v is ... else schema.validate(v) for v in values]
    return dict(typed_columns(frame_kind, answers, schema, "out", **kw))


def dtype(values: Any) -> Any:
    return values.dtype


# ---- output_columns -------------------------------------------------------------------------------
def test_output_columns() -> None:
    row = output_schema(Row)
    assert output_columns(row, "out") == list(Row.model_fields)
    assert output_columns(row, "out", prefix="p_") == ["p_" + f for f in Row.model_fields]
    assert output_columns(row, "out", unnest=False) == ["out"]
    assert output_columns(output_schema(int), "out", prefix="p_") == ["out"]
    assert output_columns(classify_schema(["a"]), "label") == ["label"]


@pytest.mark.parametrize("frame_kind", ["pandas", "polars"])
@pytest.mark.parametrize("unnest", [True, False])
def test_the_columns_made_are_the_columns_named(frame_kind: str, unnest: bool) -> None:
    for schema in (output_schema(Row), output_schema(int), classify_schema(["a", "b"], multi=True)):
        made = [name for name, _ in typed_columns(frame_kind, [None], schema, "out", unnest=unnest, prefix="p_")]
        assert made == output_columns(schema, "out", unnest=unnest, prefix="p_")


def test_an_unknown_frame_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="frame kind"):
        typed_columns("spark", ["1"], output_schema(int), "out")


# ---- scalars: dtypes and nulls -------------------------------------------------------------------
SCALARS = [
    (int | None, [1, None, ..., -7], "Int64", pl.Int64, [1, None, None, -7]),
    (float | None, [1.5, None, ..., 2], "Float64", pl.Float64, [1.5, None, None, 2.0]),
    (bool | None, [True, None, ..., False], "boolean", pl.Boolean, [True, None, None, False]),
    (str | None, ["x", None, ..., "null", ""], "string", pl.String, ["x", None, None, "null", ""]),
]


@pytest.mark.parametrize(("annotation", "values", "pandas_dtype", "polars_dtype", "expected"), SCALARS)
def test_scalar_columns(annotation: Any, values: list[Any], pandas_dtype: str, polars_dtype: Any,
                        expected: list[Any]) -> None:  # fmt: skip
    schema = output_schema(annotation)
    pandas_col = columns("pandas", schema, values)["out"]
    assert str(dtype(pandas_col)) == pandas_dtype
    assert as_list("pandas", pandas_col) == expected
    polars_col = columns("polars", schema, values)["out"]
    assert dtype(polars_col) == polars_dtype and polars_col.name == "out"
    assert as_list("polars", polars_col) == expected


@pytest.mark.parametrize("frame_kind", ["pandas", "polars"])
def test_failed_rows_and_valid_nulls_are_both_real_nulls(frame_kind: str) -> None:
    col = columns(frame_kind, output_schema(int | None), [None, ...])["out"]
    if frame_kind == "polars":
        assert col.null_count() == 2
    else:
        assert pd.Series(col).isna().tolist() == [True, True]
        assert col[0] is pd.NA and col[1] is pd.NA


@pytest.mark.parametrize("frame_kind", ["pandas", "polars"])
@pytest.mark.parametrize("annotation", [int, str, dt.date, dt.datetime, Row, list[int]])
def test_only_failed_rows_and_no_rows(frame_kind: str, annotation: Any) -> None:
    schema = output_schema(annotation)
    assert all(len(c) == 0 for c in columns(frame_kind, schema, []).values())
    for col in columns(frame_kind, schema, [..., ...]).values():
        assert as_list(frame_kind, col) == [None, None]


def test_dates() -> None:
    schema = output_schema(dt.date | None)
    values = ["2024-01-02", None, ...]
    pandas_col = columns("pandas", schema, values)["out"]
    assert str(dtype(pandas_col)).startswith("datetime64")
    assert as_list("pandas", pandas_col) == [pd.Timestamp("2024-01-02"), None, None]
    polars_col = columns("polars", schema, values)["out"]
    assert dtype(polars_col) == pl.Date
    assert as_list("polars", polars_col) == [dt.date(2024, 1, 2), None, None]


def test_datetimes_are_time_zone_aware() -> None:
    schema = output_schema(dt.datetime | None)
    values = ["2024-01-02T03:04:05Z", "2024-01-02T03:04:05+02:00", None, ...]
    expected = [dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), dt.datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC), None, None]
    pandas_col = columns("pandas", schema, values)["out"]
    assert isinstance(dtype(pandas_col), pd.DatetimeTZDtype) and str(dtype(pandas_col).tz) == "UTC"
    assert as_list("pandas", pandas_col) == [pd.Timestamp(v) if v else None for v in expected]
    polars_col = columns("polars", schema, values)["out"]
    assert dtype(polars_col) == pl.Datetime("us", "UTC")
    assert as_list("polars", polars_col) == expected


# ---- labels ---------------------------------------------------------------------------------------
LABELS = ["neg", "pos", "mixed"]


def test_labels_are_a_category_with_the_labels_in_order() -> None:
    schema = classify_schema(LABELS)
    col = columns("pandas", schema, ["mixed", "NEG", ..., "pos"])["out"]
    assert isinstance(col, pd.Categorical)
    assert list(col.categories) == LABELS
    assert as_list("pandas", col) == ["mixed", "neg", None, "pos"]


def test_labels_are_a_polars_enum_with_the_labels_in_order() -> None:
    schema = classify_schema(LABELS)
    col = columns("polars", schema, ["mixed", "NEG", ..., "pos"])["out"]
    assert col.dtype == pl.Enum(LABELS)
    assert col.to_list() == ["mixed", "neg", None, "pos"]


def test_labels_never_answered_are_categories_still() -> None:
    col = columns("pandas", classify_schema(LABELS), ["pos", ...])["out"]
    assert list(col.categories) == LABELS and list(col.codes) == [1, -1]


@pytest.mark.parametrize("frame_kind", ["pandas", "polars"])
def test_multi_labels_are_lists(frame_kind: str) -> None:
    schema = classify_schema(LABELS, multi=True)
    col = columns(frame_kind, schema, [["pos", "NEG", "pos"], [], ...])["out"]
    assert as_list(frame_kind, col) == [["pos", "neg"], [], None]
    if frame_kind == "polars":
        assert col.dtype == pl.List(pl.Enum(LABELS))
    else:
        assert str(dtype(col)) == "object"


def test_a_literal_field_is_an_enum_too() -> None:
    schema = output_schema(Literal["b", "a"])
    assert columns("polars", schema, ["a"])["out"].dtype == pl.Enum(["b", "a"])
    assert list(columns("pandas", schema, ["a"])["out"].categories) == ["b", "a"]


# ---- objects ----------------------------------------------------------------------------------------
POLARS_ROW = {
    "name": pl.String, "n": pl.Int64, "score": pl.Float64, "ok": pl.Boolean, "day": pl.Date,
    "at": pl.Datetime("us", "UTC"), "kind": pl.Enum(["x", "y"]), "tags": pl.List(pl.String),
    "inner": pl.Struct({"q": pl.Int64}),
}  # fmt: skip
PANDAS_ROW = {"name": "string", "n": "Int64", "score": "Float64", "ok": "boolean", "day": "datetime64",
              "at": "datetime64[us, UTC]", "kind": "category", "tags": "object", "inner": "object"}  # fmt: skip


def test_an_object_unnests_into_typed_polars_columns() -> None:
    cols = columns("polars", output_schema(Row), [ROW, ROW_NULLS, ...])
    assert {name: col.dtype for name, col in cols.items()} == POLARS_ROW
    assert all(col.name == name for name, col in cols.items())
    assert cols["n"].to_list() == [3, None, None]
    assert cols["at"].to_list() == [dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), None, None]
    assert cols["tags"].to_list() == [["a", "b"], [], None]
    assert cols["inner"].to_list() == [{"q": 1}, {"q": 1}, None]
    assert cols["kind"].to_list() == ["y", "y", None]


def test_an_object_unnests_into_typed_pandas_columns() -> None:
    cols = columns("pandas", output_schema(Row), [ROW, ROW_NULLS, ...])
    assert set(cols) == set(PANDAS_ROW)
    for name, expected in PANDAS_ROW.items():
        assert str(dtype(cols[name])).startswith(expected), name
    assert as_list("pandas", cols["n"]) == [3, None, None]
    assert as_list("pandas", cols["tags"]) == [["a", "b"], [], None]
    assert as_list("pandas", cols["inner"]) == [{"q": 1}, {"q": 1}, None]
    assert list(cols["kind"].categories) == ["x", "y"]
    frame = pd.DataFrame(cols)  # the arrays make a frame as they are
    assert frame.shape == (3, len(PANDAS_ROW))


@pytest.mark.parametrize("frame_kind", ["pandas", "polars"])
def test_prefix_names_the_unnested_columns(frame_kind: str) -> None:
    cols = columns(frame_kind, output_schema({"a": int, "b": str}), [{"a": 1, "b": "x"}], prefix="llm_")
    assert list(cols) == ["llm_a", "llm_b"]
    assert as_list(frame_kind, cols["llm_a"]) == [1]
    if frame_kind == "polars":
        assert cols["llm_b"].name == "llm_b"


def test_unnest_false_gives_one_struct_column_in_polars() -> None:
    cols = columns("polars", output_schema(Row), [ROW, ...], unnest=False, prefix="ignored_")
    assert list(cols) == ["out"]
    assert cols["out"].dtype == pl.Struct(POLARS_ROW)
    first = cols["out"].to_list()[0]
    assert first["day"] == dt.date(2024, 1, 2) and first["inner"] == {"q": 1}
    assert cols["out"].to_list()[1] is None


def test_unnest_false_gives_dicts_in_pandas() -> None:
    col = columns("pandas", output_schema({"a": int, "b": list[str]}), [{"a": 1, "b": ["x"]}, ...], unnest=False)["out"]
    assert str(dtype(col)) == "object"
    assert as_list("pandas", col) == [{"a": 1, "b": ["x"]}, None]


@pytest.mark.parametrize("frame_kind", ["pandas", "polars"])
def test_an_optional_object_is_null_when_null(frame_kind: str) -> None:
    schema = output_schema(Inner | None)
    col = columns(frame_kind, schema, [{"q": 2}, None, ...])["out"]
    assert as_list(frame_kind, col) == [{"q": 2}, None, None]


@pytest.mark.parametrize("frame_kind", ["pandas", "polars"])
def test_a_field_of_mixed_types_is_its_json_text(frame_kind: str) -> None:
    col = columns(frame_kind, output_schema(int | str), [1, "x", ...])["out"]
    assert as_list(frame_kind, col) == ["1", '"x"', None]
    assert (dtype(col) == pl.String) if frame_kind == "polars" else (str(dtype(col)) == "string")


@pytest.mark.parametrize("frame_kind", ["pandas", "polars"])
def test_a_json_schema_with_refs_and_definitions(frame_kind: str) -> None:
    schema = output_schema({
        "type": "object",
        "properties": {"a": {"$ref": "#/definitions/P"}, "b": {"type": "array", "items": {"$ref": "#/$defs/K"}}},
        "required": ["a", "b"],
        "definitions": {"P": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
        "$defs": {"K": {"enum": ["u", "v"]}},
    })  # fmt: skip
    cols = columns(frame_kind, schema, [{"a": {"x": 1}, "b": ["v"]}, ...])
    assert as_list(frame_kind, cols["a"]) == [{"x": 1}, None]
    assert as_list(frame_kind, cols["b"]) == [["v"], None]
    if frame_kind == "polars":
        assert cols["b"].dtype == pl.List(pl.Enum(["u", "v"]))


# ---- round trip -------------------------------------------------------------------------------------
def _python(frame_kind: str, value: Any, kind: str) -> Any:
    """A column value back as the validated value's JSON would say it."""
    if value is None:
        return None
    if kind == "date" and frame_kind == "pandas":
        return value.date()
    if kind == "datetime" and frame_kind == "pandas":
        return value.to_pydatetime()
    return value


ROUND_TRIP = [
    (int, [0, -5, 2**40], ""),
    (float, [0.0, -1.25, 1e300], ""),
    (bool, [True, False], ""),
    (str, ["", "é ü 中", 'quote " and \\ backslash', "null", "{}"], ""),
    (dt.date, [dt.date(1999, 12, 31), dt.date(2024, 2, 29)], "date"),
    (dt.datetime, [dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)], "datetime"),
    (list[int], [[], [1, 2, 3]], ""),
    (list[list[str]], [[["a"], []]], ""),
    (Literal["x", "y"], ["y", "x"], ""),
    (int | None, [None, 4], ""),
    (Inner, [{"q": 1}], ""),
    (list[Inner], [[{"q": 1}, {"q": 2}], []], ""),
]


@pytest.mark.parametrize("frame_kind", ["pandas", "polars"])
@pytest.mark.parametrize(("annotation", "values", "kind"), ROUND_TRIP)
def test_round_trip_of_single_values(frame_kind: str, annotation: Any, values: list[Any], kind: str) -> None:
    col = columns(frame_kind, output_schema(annotation), values, unnest=False)["out"]  # an object too
    assert [_python(frame_kind, v, kind) for v in as_list(frame_kind, col)] == values


@pytest.mark.parametrize("frame_kind", ["pandas", "polars"])
def test_round_trip_of_an_object(frame_kind: str) -> None:
    schema = output_schema(Row)
    cols = columns(frame_kind, schema, [ROW, ROW_NULLS])
    kinds = {"day": "date", "at": "datetime"}
    rows = [{name: _python(frame_kind, as_list(frame_kind, col)[i], kinds.get(name, "")) for name, col in cols.items()}
            for i in range(2)]  # fmt: skip
    assert rows == [Row.model_validate(ROW).model_dump(), Row.model_validate(ROW_NULLS).model_dump()]


# ---- kinds that need care: numbers as enums, null in an enum, unions, recursion ------------------------
@pytest.mark.parametrize("frame_kind", ["pandas", "polars"])
@pytest.mark.parametrize(
    ("annotation", "values", "polars_dtype", "pandas_dtype"),
    [
        (Literal[1, 2, 3], [3, 1], pl.Int64, "Int64"),
        (Literal[0.5, 1], [0.5, 1.0], pl.Float64, "Float64"),
        (Literal[True], [True], pl.Boolean, "boolean"),
        (Literal[1, 2] | None, [2, None], pl.Int64, "Int64"),
    ],
)
def test_an_enum_of_numbers_is_a_number_column(frame_kind: str, annotation: Any, values: list[Any],
                                              polars_dtype: Any, pandas_dtype: str) -> None:  # fmt: skip
    col = columns(frame_kind, output_schema(annotation), [*values, ...])["out"]
    assert as_list(frame_kind, col) == [*values, None]  # 3, not the text "3"
    assert (dtype(col) == polars_dtype) if frame_kind == "polars" else (str(dtype(col)) == pandas_dtype)


@pytest.mark.parametrize("frame_kind", ["pandas", "polars"])
def test_null_inside_an_enum_is_a_null_of_the_labels_column(frame_kind: str) -> None:
    schema = output_schema(Literal["a", "b", None])  # {"enum": ["a", "b", null]}
    assert schema.item == {"enum": ["a", "b", None]}
    col = columns(frame_kind, schema, ["b", None, ...])["out"]
    assert as_list(frame_kind, col) == ["b", None, None]
    if frame_kind == "polars":
        assert col.dtype == pl.Enum(["a", "b"])
    else:
        assert list(col.categories) == ["a", "b"]


@pytest.mark.parametrize("frame_kind", ["pandas", "polars"])
def test_a_json_null_is_a_null_in_a_column_of_mixed_types(frame_kind: str) -> None:
    col = columns(frame_kind, output_schema(int | str | None), [None, "null", 1, ...])["out"]
    assert as_list(frame_kind, col) == [None, '"null"', "1", None]


class Node(BaseModel):
    name: str
    children: list[Node] = []


@pytest.mark.parametrize("frame_kind", ["pandas", "polars"])
def test_a_recursive_model_makes_columns(frame_kind: str) -> None:
    tree = {"name": "a", "children": [{"name": "b", "children": [{"name": "c"}]}]}
    cols = columns(frame_kind, output_schema(Node), [tree, ...])
    assert as_list(frame_kind, cols["name"]) == ["a", None]
    children = as_list(frame_kind, cols["children"])
    assert children[1] is None
    # typed as deep as a dtype can be; the level where the model repeats is its JSON text
    assert children[0] == [{"name": "b", "children": ['{"name":"c","children":[]}']}]


class Either(BaseModel):
    x: int | str
    w: Inner | str | None
    z: list[int | str]


@pytest.mark.parametrize("frame_kind", ["pandas", "polars"])
def test_unions_inside_an_object_are_json_text(frame_kind: str) -> None:
    values = [{"x": 1, "w": {"q": 1}, "z": [1]}, {"x": "y", "w": None, "z": ["a"]}, {"x": "y", "w": "t", "z": []}, ...]
    cols = columns(frame_kind, output_schema(Either), values)
    assert as_list(frame_kind, cols["x"]) == ["1", '"y"', '"y"', None]  # as a top-level union is
    assert as_list(frame_kind, cols["w"]) == ['{"q":1}', None, '"t"', None]
    assert as_list(frame_kind, cols["z"]) == [["1"], ['"a"'], [], None]
