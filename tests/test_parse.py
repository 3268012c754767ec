from __future__ import annotations

import pytest

from llmframe._parse import parse_packed, parse_single, read_single
from llmframe._schema import classify_schema, output_schema


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


# ---- with a schema: each answer validated on its own -----------------------------------------------
POINT = output_schema({"x": int, "y": int})


def test_an_invalid_answer_fails_only_its_id() -> None:
    r = parse_packed('{"0": {"x": 1, "y": 2}, "1": {"x": "far", "y": 2}, "2": {"x": 3, "y": 4}}', 3,
                     item=POINT.validate)  # fmt: skip
    assert r.answers == {0: '{"x":1,"y":2}', 2: '{"x":3,"y":4}'}
    assert set(r.failed) == {1} and r.invalid == {1}
    assert "field 'x'" in r.failed[1] and "'far'" in r.failed[1]


def test_answers_are_stored_as_the_validators_canonical_json() -> None:
    r = parse_packed('{"1": {"y": "2", "x": 1}, "0": {"x": 0, "y": 0, "z": 9}}', 2, item=POINT.validate)
    assert r.answers == {0: '{"x":0,"y":0}', 1: '{"x":1,"y":2}'} and not r.failed


def test_labels_are_matched_per_id() -> None:
    r = parse_packed('{"0": "POS", "1": "neg.", "2": "meh"}', 3, item=classify_schema(["pos", "neg"]).validate)
    assert r.answers == {0: '"pos"', 1: '"neg"'} and r.invalid == {2}


def test_null_is_an_answer_when_the_validator_accepts_it() -> None:
    r = parse_packed('{"0": null, "1": 2, "2": "q"}', 3, item=output_schema(int | None).validate)
    assert r.answers == {0: "null", 1: "2"} and r.invalid == {2}


def test_null_is_invalid_when_the_validator_refuses_it() -> None:
    r = parse_packed('{"0": null, "1": 2}', 2, item=output_schema(int).validate)
    assert r.answers == {1: "2"} and r.invalid == {0} and "got null" in r.failed[0]


def test_a_validator_sees_the_value_not_its_text() -> None:
    seen: list[object] = []

    def item(value: object) -> str:
        seen.append(value)
        return "ok"

    parse_packed('{"0": {"a": [1, {"b": null}]}, "1": "s", "2": 3}', 3, item=item)
    assert seen == [{"a": [1, {"b": None}]}, "s", 3]


def test_a_validator_error_that_is_not_a_value_error_is_not_swallowed() -> None:
    def item(value: object) -> str:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        parse_packed('{"0": 1}', 1, item=item)


@pytest.mark.parametrize(
    ("reply", "failed", "invalid"),
    [
        ('{"0": {"x": 1, "y": 2}}', {1}, set()),  # missing: not an invalid answer
        ('{"0": {"x": 1, "y": 2}, "1": {"x": 1, "y": 2}, "1": {"x": 1, "y": 2}}', {1}, set()),  # twice
        ('{"0": {"x": 1, "y": 2}, "7": {"x": 1, "y": 2}}', {0, 1}, set()),  # numbering off
        ('{"0": {"x": 1, "y": 2}, "1": ', {0, 1}, set()),  # cut JSON
    ],
)
def test_the_batch_rules_hold_with_a_validator(reply: str, failed: set[int], invalid: set[int]) -> None:
    r = parse_packed(reply, 2, item=POINT.validate)
    assert set(r.failed) == failed and r.invalid == invalid
    assert not set(r.answers) & failed


def test_truncated_is_not_validated() -> None:
    r = parse_packed('{"0": {"x": 1, "y": 2}}', 1, truncated=True, item=POINT.validate)
    assert not r.answers and not r.invalid


def test_objects_in_a_list_of_ids_and_in_a_wrapper() -> None:
    for reply in ('[{"id": 0, "answer": {"x": 1, "y": 2}}, {"id": 1, "answer": {"x": 3, "y": 4}}]',
                  '{"answers": {"0": {"x": 1, "y": 2}, "1": {"x": 3, "y": 4}}}'):  # fmt: skip
        assert parse_packed(reply, 2, item=POINT.validate).answers == {0: '{"x":1,"y":2}', 1: '{"x":3,"y":4}'}


def test_one_answer_that_is_itself_a_one_key_object_is_not_unwrapped() -> None:
    schema = output_schema({"answers": int})
    assert parse_packed('{"0": {"answers": 1}}', 1, item=schema.validate).answers == {0: '{"answers":1}'}


# ---- read_single ---------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_read_single_empty_is_no_answer_and_no_problem(content: str | None) -> None:
    assert read_single(content) == (None, None)
    assert read_single(content, POINT) == (None, None)


def test_read_single_without_a_schema_is_the_stripped_text() -> None:
    assert read_single("  positive \n") == ("positive", None)
    assert read_single('{"x": 1}') == ('{"x": 1}', None)


@pytest.mark.parametrize(
    "content", ['{"x": 1, "y": 2}', '```json\n{"x": 1, "y": 2}\n```', 'Here: {"y": 2, "x": 1}.'],
)
def test_read_single_with_a_schema_is_the_validated_json(content: str) -> None:
    assert read_single(content, POINT) == ('{"x":1,"y":2}', None)


@pytest.mark.parametrize(
    ("content", "words"),
    [('{"x": 1}', "field 'y'"), ("one, two", "not JSON"), ('{"x": "a", "y": 2}', "field 'x'")],
)
def test_read_single_says_why_an_answer_does_not_validate(content: str, words: str) -> None:
    answer, problem = read_single(content, POINT)
    assert answer is None and problem is not None and words in problem


def test_read_single_single_values() -> None:
    assert read_single('{"value": 7}', output_schema(int)) == ("7", None)
    assert read_single("Billing.", classify_schema(["billing", "other"])) == ('"billing"', None)
    assert read_single("sales", classify_schema(["billing", "other"]))[0] is None


@pytest.mark.parametrize(
    ("content", "answers", "failed"),
    [
        ('{"0":"a","1":"b","2":"c"}', {0: "a", 1: "b", 2: "c"}, {}),  # in order: the quick path
        ('{"1":"b","0":"a","2":"c"}', {0: "a", 1: "b", 2: "c"}, {}),  # any order
        ('{"0":"a","1":7,"2":"c"}', {0: "a", 1: "7", 2: "c"}, {}),  # a number kept as its JSON
        ('{"0":"a","1":null,"2":"c"}', {0: "a", 2: "c"}, {1: "answer is null"}),
        ('{"0":"a","1":"b","1":"c"}', {0: "a"}, {1: "id answered more than once", 2: "id missing from the reply"}),
        ('{"0":"a","1":"b"," 2":"c"}', {0: "a", 1: "b", 2: "c"}, {}),  # an id with spaces
    ],
)
def test_packed_answers_in_order_or_not_read_the_same(content: str, answers: dict[int, str],
                                                      failed: dict[int, str]) -> None:  # fmt: skip
    got = parse_packed(content, 3)
    assert (got.answers, got.failed) == (answers, failed)
