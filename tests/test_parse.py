from __future__ import annotations

import pytest

from llmframe._parse import parse_packed, parse_single


def test_clean_answer() -> None:
    r = parse_packed('{"0":"a","1":"b","2":"c"}', 3)
    assert not r.failed and r.answers == {0: "a", 1: "b", 2: "c"}


def test_order_in_reply_does_not_matter() -> None:
    r = parse_packed('{"2":"c","0":"a","1":"b"}', 3)
    assert r.answers == {0: "a", 1: "b", 2: "c"}


def test_missing_id_fails_only_that_row() -> None:
    r = parse_packed('{"0":"a","2":"c"}', 3)
    assert r.answers == {0: "a", 2: "c"} and set(r.failed) == {1}


def test_duplicate_id_fails_that_row_even_if_equal() -> None:
    r = parse_packed('{"0":"a","1":"b","1":"b"}', 2)
    assert r.answers == {0: "a"} and set(r.failed) == {1}


@pytest.mark.parametrize("reply", ['{"0":"a","1":"b","2":"x"}', '{"0":"a","one":"b"}', '{"0":"a","-1":"b"}'])
def test_unknown_id_distrusts_the_whole_batch(reply: str) -> None:
    r = parse_packed(reply, 2)
    assert not r.answers and set(r.failed) == {0, 1}


@pytest.mark.parametrize("reply", ["", "positive", '{"0":"a","1":"b', "[1, 2]", "null"])
def test_unparsable(reply: str) -> None:
    r = parse_packed(reply, 2)
    assert not r.answers and set(r.failed) == {0, 1}


def test_truncated_is_never_trusted() -> None:
    r = parse_packed('{"0":"a","1":"b"}', 2, truncated=True)
    assert not r.answers and "max_tokens" in r.failed[0]


@pytest.mark.parametrize(
    "reply",
    [
        'Sure! Here are the answers:\n```json\n{"0": "a", "1": "b"}\n```',
        'Answers: {"0": "a", "1": "b"} hope this helps',
        '{"answers": {"0": "a", "1": "b"}}',
        '[{"id": 0, "answer": "a"}, {"id": 1, "answer": "b"}]',
    ],
)
def test_tolerant_forms(reply: str) -> None:
    assert parse_packed(reply, 2).answers == {0: "a", 1: "b"}


def test_non_string_answers_kept_as_json() -> None:
    r = parse_packed('{"0": 5, "1": true, "2": ["x"], "3": null}', 4)
    assert r.answers == {0: "5", 1: "true", 2: '["x"]'} and set(r.failed) == {3}


def test_single() -> None:
    assert parse_single("  positive\n") == "positive"
    assert parse_single(None) is None
    assert parse_single("") is None and parse_single(" \n") is None  # blank: asked again
