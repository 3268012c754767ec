"""Agreement between packed and one-row answers, for labels, JSON and free text."""

from __future__ import annotations

import json

import pytest

from llmframe._agreement import agreement, answer_agreement, field_agreement, token_f1


@pytest.mark.parametrize(
    ("reference", "answer", "score"),
    [
        ("Paris", "paris.", 1.0),
        ("Paris", "Lyon", 0.0),
        ("-5", "5", 0.0),
        ("New Delhi", "India", 0.0),  # the echo a small model gives when packed
        ('{"a": 1, "b": "x"}', '{"a": 1, "b": "y"}', 0.5),
        ("{}", "{}", 1.0),
    ],
)
def test_short_answers_and_objects(reference: str, answer: str, score: float) -> None:
    assert answer_agreement(reference, answer) == score


SUMMARIES = [
    "The customer loved the battery life of the phone but found the camera disappointing.",
    "A delayed delivery and a damaged box made this buyer ask for a full refund.",
    "The reviewer says the blender is loud yet powerful and easy to clean after use.",
]


def test_a_reworded_summary_of_the_same_row_agrees() -> None:
    reworded = "Battery life of the phone was loved by the customer; the camera disappointed."
    assert answer_agreement(SUMMARIES[0], reworded, SUMMARIES) == 1.0


def test_a_summary_of_another_row_does_not() -> None:
    # Shifted by one: answer 0 is row 1's summary, reworded.
    shifted = "This buyer asked for a full refund after a delayed delivery and a damaged box."
    assert answer_agreement(SUMMARIES[0], shifted, SUMMARIES) == 0.0
    assert answer_agreement(SUMMARIES[1], shifted, SUMMARIES) == 1.0


def test_token_f1_is_symmetric_and_bounded() -> None:
    a, b = SUMMARIES[0], SUMMARIES[2]
    assert token_f1(a, b) == pytest.approx(token_f1(b, a))
    assert 0.0 < token_f1(a, b) < 1.0
    assert token_f1(a, a) == 1.0 and token_f1("", a) == 0.0


def test_agreement_counts_failed_rows_as_disagreeing_and_skips_missing_references() -> None:
    assert agreement(["a", "b", "c", None], ["a", None, "C", "x"]) == (pytest.approx(2 / 3), 3)
    assert agreement([None], ["x"]) == (None, 0)


# ---- JSON objects (structured outputs), field by field ------------------------------------------
REWORDED = "Battery life of the phone was loved by the customer; the camera disappointed."


def obj(**fields: object) -> str:
    return json.dumps(fields)


@pytest.mark.parametrize(
    ("reference", "answer", "score"),
    [
        (obj(city="Paris", n=3), obj(city="paris.", n=3), 1.0),  # short text: equal after normalize
        (obj(city="Paris", n=3), obj(city="Lyon", n=3), 0.5),
        (obj(city="New York City", n=3), obj(city="York", n=3), 0.5),  # short: no partial credit
        (obj(a=1), obj(a=1, b=2), 0.5),  # a key only one side has disagrees
        (obj(a=1, b=2), obj(b=2, a=1), 1.0),
        (obj(a=[1, 2]), obj(a=[1, 2]), 1.0),
        (obj(a=[1, 2]), obj(a=[2, 1]), 0.0),
        (obj(a={"x": 1, "y": 2}), obj(a={"y": 2, "x": 1}), 1.0),
        (obj(tags=["Paris"]), obj(tags=["paris"]), 1.0),
        (obj(a=None), obj(a=None), 1.0),
        (obj(a=True), obj(a=False), 0.0),
        (obj(s=SUMMARIES[0], k="pos"), obj(s=REWORDED, k="POS"), 1.0),  # long text: token F1
        (obj(s=SUMMARIES[0], k="pos"), obj(s=SUMMARIES[1], k="pos"), 0.5),
    ],
)
def test_objects_agree_field_by_field(reference: str, answer: str, score: float) -> None:
    assert answer_agreement(reference, answer) == score


def test_long_text_fields_agree_from_token_f1_0_6() -> None:
    reference = "one two three four five six seven eight nine ten"
    close = "one two three four five six seven eight eleven twelve"  # F1 0.8
    far = "one two three four five six a b c d"  # F1 0.6
    farther = "one two three four five a b c d e"  # F1 0.5
    assert token_f1(reference, far) == pytest.approx(0.6)
    assert answer_agreement(obj(s=reference), obj(s=close)) == 1.0
    assert answer_agreement(obj(s=reference), obj(s=far)) == 1.0
    assert answer_agreement(obj(s=reference), obj(s=farther)) == 0.0


def test_five_words_or_fewer_need_equality() -> None:
    # four of five words shared would be F1 0.8, but a five-word field is short
    assert answer_agreement(obj(s="one two three four five"), obj(s="one two three four six")) == 0.0
    assert answer_agreement(obj(s="one two three four five six"), obj(s="one two three four five seven")) == 1.0
    # one long side is not enough: both must be long for token F1
    assert answer_agreement(obj(s="one two three"), obj(s="one two three four five six seven")) == 0.0


def test_a_json_object_against_text_is_compared_as_text() -> None:
    assert answer_agreement(obj(a=1), "a 1") == 0.0
    assert answer_agreement('{"a": 1}', ' {"a": 1} ') == 1.0


def test_field_agreement_per_field() -> None:
    refs = [obj(a=1, b="x"), obj(a=2, b="y"), obj(a=3, b="z")]
    answers = [obj(a=1, b="X"), obj(a=2, b="no"), obj(a=0, b="z")]
    assert field_agreement(refs, answers) == {"a": pytest.approx(2 / 3), "b": pytest.approx(2 / 3)}


def test_field_agreement_leaves_out_rows_without_both_answers() -> None:
    refs = [obj(a=1), None, obj(a=2), "plain text", obj(a=3)]
    answers = [obj(a=1), obj(a=9), None, obj(a=9), "[1]"]
    assert field_agreement(refs, answers) == {"a": 1.0}
    assert field_agreement([None], [None]) == {} and field_agreement([], []) == {}


def test_field_agreement_counts_keys_of_either_side() -> None:
    result = field_agreement([obj(a=1, b=1), obj(a=1)], [obj(a=1), obj(a=1, c=1)])
    assert result == {"a": 1.0, "b": 0.0, "c": 0.0}


def test_field_agreement_long_text_fields_use_token_f1() -> None:
    result = field_agreement([obj(s=SUMMARIES[0]), obj(s=SUMMARIES[1])], [obj(s=REWORDED), obj(s=SUMMARIES[2])])
    assert result == {"s": 0.5}


def test_field_agreement_needs_as_many_answers_as_references() -> None:
    with pytest.raises(ValueError):
        field_agreement([obj(a=1)], [])


def test_agreement_of_objects() -> None:
    refs = [obj(a=1, b=2), obj(a=1, b=2), None]
    assert agreement(refs, [obj(a=1, b=0), None, obj(a=1)]) == (pytest.approx(0.25), 2)


@pytest.mark.parametrize(("reference", "answer"), [('{"a": null}', '{"a": "null"}'), ('{"a": "None."}', '{"a": null}')])
def test_a_null_field_does_not_agree_with_the_text_null(reference: str, answer: str) -> None:
    assert answer_agreement(reference, answer) == 0.0
    assert field_agreement([reference], [answer]) == {"a": 0.0}
