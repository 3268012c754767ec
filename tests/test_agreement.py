"""Agreement between packed and one-row answers, for labels, JSON and free text."""

from __future__ import annotations

import pytest

from llmframe._agreement import agreement, answer_agreement, token_f1


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
