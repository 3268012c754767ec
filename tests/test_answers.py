"""llmframe._answers: every row's answer held compactly, read back exactly, and the output
column built from it with the same dtype as from a list of Python strings."""

from __future__ import annotations

from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from conftest import column

from llmframe._answers import SHARED_ANSWER_CHARS, Answers
from llmframe._frames import with_answers
from llmframe.testing import FakeServer, expected_answer

LONG = "long answer " * 20_000  # 240 kB
TEXTS = ["positive", None, "naïve café 😀", "", "引号\"和{大括号}", LONG, "line\nbreak", None, "positive"]


def filled(values: list[str | None]) -> Answers:
    answers = Answers(len(values))
    for row, value in enumerate(values):
        if value is not None:
            answers[row] = value
    return answers


def test_answers_read_back_exactly() -> None:
    answers = filled(TEXTS)
    assert len(answers) == len(TEXTS)
    assert list(answers) == TEXTS
    assert answers[:] == TEXTS and answers[2:5] == TEXTS[2:5] and answers[-1] == "positive"
    assert [answers[row] for row in range(len(TEXTS))] == TEXTS
    column_ = answers.to_arrow()
    assert column_ is not None and column_.type == pa.large_string()
    assert column_.to_pylist() == TEXTS
    with pytest.raises(IndexError):
        answers[len(TEXTS)]


def test_an_answer_replaced_or_cleared_and_writes_after_a_column_was_built() -> None:
    answers = filled(["a", "b", "c"])
    assert answers.to_arrow().to_pylist() == ["a", "b", "c"]  # type: ignore[union-attr]
    answers[1] = "B" * 100  # the buffer grows again after the column was taken from it
    answers[2] = None
    answers[0] = "a"
    assert list(answers) == ["a", "B" * 100, None]
    assert answers.to_arrow().to_pylist() == ["a", "B" * 100, None]  # type: ignore[union-attr]


def test_equal_short_answers_are_stored_once_and_long_ones_per_reply() -> None:
    answers = Answers(1000)
    for row in range(1000):
        answers[row] = "positive" if row % 2 else "negative"
    assert len(answers._data) == len("positive") + len("negative")
    answers.set_rows([0, 1, 2], "x" * (SHARED_ANSWER_CHARS + 1))  # one reply, three rows: once
    assert len(answers._data) == 16 + SHARED_ANSWER_CHARS + 1
    assert answers[:4] == ["x" * (SHARED_ANSWER_CHARS + 1)] * 3 + ["positive"]


def test_the_cache_answers_under_the_ones_given_here() -> None:
    found = pa.chunked_array([pa.array(["c0", None], pa.string()), pa.array([None, "c3"], pa.string())])
    answers = Answers(4, found)
    assert list(answers) == ["c0", None, None, "c3"]
    assert answers.to_arrow().to_pylist() == ["c0", None, None, "c3"]  # type: ignore[union-attr]
    answers[1] = "new"
    answers[3] = None  # over what the cache had
    assert list(answers) == ["c0", "new", None, None]
    assert answers.to_arrow().to_pylist() == ["c0", "new", None, None]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="3 cached answers for 4 rows"):
        Answers(4, pa.array(["a", "b", "c"]))


def test_an_answer_that_is_not_utf8_text_is_kept_as_it_is() -> None:
    odd = "bad \ud800 surrogate"  # json.loads('"\\ud800"') gives such a string
    answers = filled(["ok", odd, None])
    answers.set_rows([2], odd)
    assert list(answers) == ["ok", odd, odd]
    assert answers.to_arrow() is None  # the caller builds the column from the list, as before
    with pytest.raises(UnicodeEncodeError):  # what a list of these strings has always done
        with_answers(pd.DataFrame({"a": [1, 2, 3]}), "answer", answers)
    answers[1] = answers[2] = "fine"
    assert answers.to_arrow().to_pylist() == ["ok", "fine", "fine"]  # type: ignore[union-attr]


def test_the_column_is_the_one_a_list_of_strings_makes(make_frame: Any) -> None:
    df = make_frame({"n": list(range(len(TEXTS)))})
    compact = with_answers(df, "answer", filled(TEXTS))
    listed = with_answers(df, "answer", TEXTS)
    if isinstance(df, pd.DataFrame):
        assert compact["answer"].dtype == listed["answer"].dtype
        pd.testing.assert_frame_equal(compact, listed)
    else:
        assert compact.schema == listed.schema and compact.schema["answer"] == pl.String
        assert compact.equals(listed)
    assert column(compact, "answer") == TEXTS


def test_a_run_and_its_cached_rerun_give_the_same_column(
    fake_server: FakeServer, make_frame: Any, tmp_path: Any
) -> None:
    template = "Label {text}"
    texts = [f"row {i}" for i in range(30)] + [None, "row 3"]
    opts = {"model": "gpt-4o-mini", "base_url": fake_server.base_url, "api_key": fake_server.api_key,
            "cache": tmp_path / "cache", "progress": False}  # fmt: skip
    want = [None if t is None else expected_answer(template.format(text=t)) for t in texts]
    first = make_frame({"text": texts[:10]}).llm.apply(template, **opts)  # rows 0-9 cached (and row 31, a repeat of row 3)
    df = make_frame({"text": texts})
    out = df.llm.apply(template, **opts)  # cached rows and new ones in one column
    again = df.llm.apply(template, **opts)  # every row from the cache
    assert column(first, "answer") == want[:10]
    assert column(out, "answer") == want and column(again, "answer") == want
    assert out.llm.report.cached_rows == 11 and again.llm.report.cached_rows == 31
    listed = with_answers(df, "answer", want)
    if isinstance(df, pd.DataFrame):
        pd.testing.assert_frame_equal(out, listed)
        pd.testing.assert_frame_equal(again, listed)
    else:
        assert out.equals(listed) and again.equals(listed) and out.schema == listed.schema
