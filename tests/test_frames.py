"""llmframe._frames: frames in (fields, prompt text) and out (a new answer column), on
pandas and polars alike (``backend`` / ``make_frame`` come from conftest)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import polars as pl
import pytest
from conftest import column

import llmframe
from llmframe import ConfigError, _frames
from llmframe._frames import (
    columns_of,
    field_columns,
    kind_of,
    rendered_columns,
    with_answers,
)

MakeFrame = Callable[[dict[str, list[Any]]], Any]


def test_kind_of_the_two_frames(backend: str, make_frame: MakeFrame) -> None:
    assert kind_of(make_frame({"a": [1]})) == backend


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (pl.DataFrame({"a": [1]}).lazy(), r"call \.collect\(\) on the LazyFrame"),
        (pd.Series(["a"]), "expected a pandas or polars DataFrame, got pandas.*Series"),
        (pl.Series(["a"]), "expected a pandas or polars DataFrame, got polars.*Series"),
        (pd.Index(["a"]), "expected a pandas or polars DataFrame, got pandas.*Index"),
        ({"a": [1]}, "expected a pandas or polars DataFrame, got builtins.dict"),
        ([["a"]], "got builtins.list"),
    ],
    ids=["lazyframe", "pandas series", "polars series", "pandas index", "dict", "list"],
)
def test_anything_else_is_a_config_error(value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        kind_of(value)


def test_apply_on_a_series_says_what_it_needs(backend: str) -> None:
    series = pd.Series(["x"]) if backend == "pandas" else pl.Series(["x"])
    with pytest.raises(ConfigError, match="expected a pandas or polars DataFrame"):
        llmframe.apply(series, "Classify {review}", model="gpt-4o-mini")


def test_columns_and_field_values_in_row_order(make_frame: MakeFrame) -> None:
    df = make_frame({"review": ["x", "y", "z"], "stars": [5, 1, 3], "unused": [0.5, 0.25, 1.0]})
    assert columns_of(df) == ["review", "stars", "unused"]
    fields = field_columns(df, ["stars", "review"])
    assert fields == {"stars": [5, 1, 3], "review": ["x", "y", "z"]}
    assert all(type(v) is int for v in fields["stars"])  # Python objects, not numpy scalars


def test_pandas_column_labels_that_are_not_strings() -> None:
    df = pd.DataFrame({0: ["a", "b"], "x": [1, 2]})
    assert columns_of(df) == ["0", "x"]  # what a template can name
    assert field_columns(df, ["0"]) == {"0": ["a", "b"]}
    assert rendered_columns(df, ["0"])["0"][:] == ["a", "b"]


def test_rendered_text_of_every_kind_of_value(make_frame: MakeFrame) -> None:
    df = make_frame(
        {
            "text": ["plain", "", "naïve 😀"],
            "int": [3, -1, 10**12],
            "float": [1.5, 2.0, -0.25],
            "flag": [True, False, True],
        }
    )
    rendered = rendered_columns(df, ["text", "int", "float", "flag"])
    assert {name: col[:] for name, col in rendered.items()} == {
        "text": ["plain", "", "naïve 😀"],
        "int": ["3", "-1", "1000000000000"],
        "float": ["1.5", "2.0", "-0.25"],
        "flag": ["True", "False", "True"],
    }


def test_every_kind_of_null_renders_as_none(backend: str, make_frame: MakeFrame) -> None:
    df = make_frame(
        {
            "text": ["a", None, "c"],
            "float": [1.5, float("nan"), None],
            "int": [1, None, 3],
        }
    )
    rendered = {
        name: col[:] for name, col in rendered_columns(df, ["text", "float", "int"]).items()
    }
    assert rendered["text"] == ["a", None, "c"]
    assert rendered["float"] == ["1.5", None, None]  # NaN is a null too, on both backends
    # pandas stores an int column with a null as float; polars keeps it int.
    assert rendered["int"] == (["1.0", None, "3.0"] if backend == "pandas" else ["1", None, "3"])


def test_pandas_extension_nulls_render_as_none() -> None:
    df = pd.DataFrame(
        {
            "n": pd.array([1, None, 3], dtype="Int64"),
            "s": pd.array(["x", None, "z"], dtype="string"),
            "when": pd.to_datetime(["2024-01-02", None, "2024-03-04"]),
        }
    )
    rendered = {name: col[:] for name, col in rendered_columns(df, ["n", "s", "when"]).items()}
    assert rendered == {
        "n": ["1", None, "3"],
        "s": ["x", None, "z"],
        "when": ["2024-01-02 00:00:00", None, "2024-03-04 00:00:00"],
    }


def test_rendered_column_indexes_and_slices_like_a_list(make_frame: MakeFrame) -> None:
    values = [f"row {i}" for i in range(7)]
    col = rendered_columns(make_frame({"v": values}), ["v"])["v"]
    assert len(col) == 7
    assert (col[0], col[6], col[-1], col[-7]) == (values[0], values[6], values[-1], values[-7])
    for index in (7, -8):
        with pytest.raises(IndexError, match="out of range for 7 rows"):
            col[index]
    for cut in (
        slice(None),
        slice(2, 5),
        slice(-3, None),
        slice(5, 2),
        slice(0, 100),
        slice(None, None, 2),
        slice(1, 6, 3),
        slice(None, None, -1),
        slice(5, 1, -2),
        slice(3, 3),
    ):
        assert col[cut] == values[cut], cut


def test_iteration_renders_a_slice_at_a_time(
    make_frame: MakeFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_frames, "_ITER_ROWS", 3)  # 10 rows: slices of 3, 3, 3 and 1
    values: list[Any] = [f"r{i}" if i % 4 else None for i in range(10)]
    col = rendered_columns(make_frame({"v": values}), ["v"])["v"]
    assert list(col) == values == col[:]


def test_rendered_column_keeps_the_column_it_was_given() -> None:
    df = pd.DataFrame({"v": ["old", "old"]}, index=[10, 3])
    col = rendered_columns(df, ["v"])["v"]
    df["v"] = ["new", "new"]
    assert col[:] == ["old", "old"]
    assert col[0] == "old"  # by position, whatever the index labels are


def test_with_answers_returns_a_new_frame(make_frame: MakeFrame) -> None:
    df = make_frame({"review": ["a", "b", "c"], "stars": [1, 2, 3]})
    out = with_answers(df, "label", ["pos", None, "neg"])
    assert columns_of(out) == ["review", "stars", "label"]
    assert column(out, "label") == ["pos", None, "neg"]
    assert column(out, "stars") == [1, 2, 3]
    assert columns_of(df) == ["review", "stars"]  # the input is not changed
    if isinstance(out, pl.DataFrame):
        assert out.schema["label"] == pl.String
    else:
        assert out["label"].dtype == pd.Series(["x"], dtype=str).dtype


def test_with_answers_replaces_an_existing_column_in_place(make_frame: MakeFrame) -> None:
    df = make_frame({"answer": ["old", "old"], "review": ["a", "b"]})
    out = with_answers(df, "answer", ("new", None))  # any sequence, not only a list
    assert columns_of(out) == ["answer", "review"]
    assert column(out, "answer") == ["new", None]
    assert column(df, "answer") == ["old", "old"]


def test_with_answers_on_an_empty_frame(make_frame: MakeFrame) -> None:
    df = make_frame({"review": []})
    out = with_answers(df, "answer", [])
    assert len(out) == 0 and columns_of(out) == ["review", "answer"]


def test_with_answers_keeps_the_pandas_index_and_aligns_by_position() -> None:
    df = pd.DataFrame({"review": ["a", "b", "c"]}, index=pd.Index([30, 10, 20], name="rid"))
    out = with_answers(df, "answer", ["A", "B", "C"])
    assert list(out.index) == [30, 10, 20] and out.index.name == "rid"
    assert out["answer"].tolist() == ["A", "B", "C"]
    assert column(with_answers(df, "answer", [None, "B", "C"]), "answer") == [None, "B", "C"]
