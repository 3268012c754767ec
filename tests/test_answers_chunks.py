"""The answer column made a chunk at a time (polars): the same answers, row for row."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest

from llmframe import _frames
from llmframe._answers import Answers
from llmframe._frames import with_answers


def _answers(n: int, *, found: bool) -> tuple[Answers, list[str | None]]:
    cached = pa.chunked_array([[None if i % 3 else f"cached {i}" for i in range(n)]], type=pa.string())
    answers = Answers(n, cached if found else None)
    expected: list[str | None] = [None if i % 3 or not found else f"cached {i}" for i in range(n)]
    for row in range(0, n, 2):
        answers[row] = f"answer {row}"
        expected[row] = f"answer {row}"
    answers.set_rows([1, 5, 7], "shared")
    for row in (1, 5, 7):
        expected[row] = "shared"
    answers[9] = None
    expected[9] = None
    return answers, expected


@pytest.mark.parametrize("found", [False, True])
@pytest.mark.parametrize("chunk_rows", [1, 7, 1000, 1 << 17])
def test_polars_column_in_chunks_is_the_whole_column(
    monkeypatch: pytest.MonkeyPatch, found: bool, chunk_rows: int
) -> None:
    monkeypatch.setattr(_frames, "POLARS_CHUNK_ROWS", chunk_rows)
    answers, expected = _answers(1000, found=found)
    df = pl.DataFrame({"x": range(1000)})
    out = with_answers(df, "answer", answers)
    assert out.get_column("answer").to_list() == expected == answers.to_arrow().to_pylist()
    assert out.schema["answer"] == pl.String and out.get_column("x").to_list() == list(range(1000))
    assert out.get_column("answer").n_chunks() == -(-1000 // chunk_rows)


def test_chunks_of_the_cache_answers_as_they_are_and_of_odd_answers() -> None:
    cached = pa.chunked_array([["a", None, "c"]], type=pa.string())
    chunks = Answers(3, cached).to_arrow_chunks(2)
    assert chunks is not None and [c.to_pylist() for c in chunks] == [["a", None], ["c"]]
    odd = Answers(2)
    odd[0] = "\ud800"  # not UTF-8 text: the column is made from Python strings (as before)
    assert odd.to_arrow_chunks(1) is None and odd.to_arrow() is None


def test_the_answers_take_new_ones_once_the_chunks_are_consumed() -> None:
    answers = Answers(4)
    answers[0] = "one"
    out = with_answers(pl.DataFrame({"x": range(4)}), "answer", answers)
    answers[1] = "two" * 100  # the buffer grows: no view of it is left behind
    assert out.get_column("answer").to_list() == ["one", None, None, None]
    assert answers[:2] == ["one", "two" * 100]


def test_answers_grow_through_many_maps_while_a_column_made_before_is_held() -> None:
    n = 60_000
    answers = Answers(n)
    expected: list[str | None] = [None] * n
    for row in range(0, n // 2):
        expected[row] = answers_text = f"answer {row} " + "é" * (row % 70)
        answers[row] = answers_text
    early = answers.to_arrow()  # views the maps as they are now
    assert early is not None
    for row in range(n // 2, n):
        expected[row] = answers_text = f"later {row} " + "x" * (row % 90)
        answers[row] = answers_text  # the maps grow (copied to new ones) under the column's view
    assert len(answers._data) > 4 * (1 << 16)  # several doublings of the first map
    assert early.to_pylist() == expected[: n // 2] + [None] * (n - n // 2)
    assert answers[:] == expected and answers.to_arrow().to_pylist() == expected
    assert answers[n - 1] == expected[n - 1] and answers[0] == expected[0]
