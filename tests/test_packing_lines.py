"""The lines style: id lines in and out, parsed as paranoidly as JSON, understood by the fake server."""

from __future__ import annotations

import random
import warnings
from typing import Any

import pytest
from conftest import apply_column

from llmframe import _packing
from llmframe._parse import parse_packed_lines
from llmframe._tokens import get_tokenizer
from llmframe.testing import FakeServer, Faults, expected_answer
from llmframe.testing._model import parse_packed
from llmframe.testing._packed import answer_packed

# JSON packing of this task costs more per row than one row per request; id lines do not.
TEMPLATE = "Answer with one word, the sentiment of the review (positive, negative or neutral): {review}"


def tokenizer() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_tokenizer("gpt-4o-mini")


# ---- the format ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "line"),
    [
        ("Great value", "3 Great value"),
        ("two\nlines", '3 "two\\nlines"'),
        (" padded", '3 " padded"'),
        ('"quoted"', '3 "\\"quoted\\""'),
        ('{"0": "x"}', '3 "{\\"0\\": \\"x\\"}"'),
        ("", '3 ""'),
        ("para\u2028sep", '3 "para\\u2028sep"'),
        ("é ü", "3 é ü"),
    ],
)
def test_an_item_stays_on_its_line(value: str, line: str) -> None:
    assert _packing.line_item(3, {"review": value}) == line
    assert len(line.splitlines()) == 1


def test_several_fields_go_as_one_json_object() -> None:
    assert _packing.line_item(0, {"a": "x", "b": "y"}) == '0 {"a":"x","b":"y"}'


def test_the_reply_costs_two_tokens_per_row_beyond_the_answers() -> None:
    tok = tokenizer()
    for n in (2, 20, 50):
        assert _packing.reply_overhead(n, tok, _packing.LINES) <= 2 * n  # the target is 3
        assert _packing.reply_overhead(n, tok, _packing.LINES) < _packing.reply_overhead(n, tok)


def test_lines_cost_fewer_input_tokens_than_json_items() -> None:
    tok = tokenizer()
    fields = {"code": "K0000042"}
    assert tok.count(_packing.line_item(0, fields)) + 6 <= tok.count(_packing.item_line(0, fields))


# ---- parsing ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "reply",
    [
        "0 a\n1 b\n2 c",
        "0: a\n1: b\n2: c",
        "0\ta\n1\tb\n2\tc",
        "Here are the answers:\n\n```\n0 a\n1 b\n2 c\n```\n\nAnything else?",
        "Sure.\n0 a\n1 b\n2 c\n\nHope this helps!",
        '0 "a"\n1 b\n2 c',
        '{"0": "a", "1": "b", "2": "c"}',
        "2 c\n0 a\n1 b",  # by id, not by position
    ],
)
def test_answers_are_read_by_id(reply: str) -> None:
    parsed = parse_packed_lines(reply, 3)
    assert parsed.answers == {0: "a", 1: "b", 2: "c"} and not parsed.failed


def test_an_answer_may_run_over_lines_and_a_quoted_one_is_json() -> None:
    parsed = parse_packed_lines('0 first\nsecond\n1 "x\\ny"', 2)
    assert parsed.answers == {0: "first\nsecond", 1: "x\ny"}


@pytest.mark.parametrize(
    ("reply", "failed", "answered"),
    [
        ("0 a\n2 c", {1}, {0, 2}),  # missing
        ("0 a\n1 b\n1 x\n2 c", {1}, {0, 2}),  # twice, even once right
        ("0 a\n1 b\n2 c\n3 d", {0, 1, 2}, set()),  # numbering off: nothing trusted
        ("0 a\n1\n2 c", {1}, {0, 2}),  # empty answer
        ("I cannot help with that.", {0, 1, 2}, set()),
        ("", {0, 1, 2}, set()),
    ],
)
def test_what_cannot_be_trusted_is_resent(reply: str, failed: set[int], answered: set[int]) -> None:
    parsed = parse_packed_lines(reply, 3)
    assert set(parsed.failed) == failed and set(parsed.answers) == answered


def test_a_cut_off_reply_is_never_trusted() -> None:
    assert set(parse_packed_lines("0 a\n1 b\n2 c", 3, truncated=True).failed) == {0, 1, 2}


# ---- the fake server -------------------------------------------------------------------
def messages(items: list[dict[str, str]], template: str = TEMPLATE) -> list[dict[str, str]]:
    fields = ["review"] if "{review}" in template else ["a", "b"]
    return _packing.packed_messages(template, None, items, style=_packing.LINES, fields=fields)


def test_the_fake_server_reads_every_item_back() -> None:
    values = ["plain", "two\nlines", " padded", '"quoted"', '{"0": "x"}', ""]
    packed = parse_packed(messages([{"review": v} for v in values]))
    assert packed is not None and packed.style == "lines"
    assert [fields["review"] for _, fields in packed.items] == values
    two = parse_packed(messages([{"a": "x", "b": "y"}], "{a} and {b}"))
    assert two is not None and two.items == [(0, {"a": "x", "b": "y"})]


def test_the_fake_server_answers_in_lines_that_parse_back() -> None:
    values = [f"review {i}" for i in range(7)]
    packed = parse_packed(messages([{"review": v} for v in values]))
    assert packed is not None
    text, applied, _ = answer_packed(packed, expected_answer, Faults(), random.Random(0))
    assert not applied and not text.startswith("{")
    parsed = parse_packed_lines(text, len(values))
    assert parsed.answers == {i: expected_answer(TEMPLATE.format(review=v)) for i, v in enumerate(values)}


@pytest.mark.parametrize("kind", ["drop", "duplicate", "wrong_id", "shuffle", "prose", "truncate"])
def test_packing_faults_work_on_lines(kind: str) -> None:
    values = [f"review {i}" for i in range(8)]
    packed = parse_packed(messages([{"review": v} for v in values]))
    assert packed is not None
    text, applied, _ = answer_packed(packed, expected_answer, Faults(**{f"{kind}_rate": 1.0}), random.Random(1))
    assert applied == [kind]
    parsed = parse_packed_lines(text, len(values), truncated=kind == "truncate")
    right = {i: expected_answer(TEMPLATE.format(review=v)) for i, v in enumerate(values)}
    if kind == "prose":
        assert parsed.answers == right
    elif kind == "shuffle":  # invisible to ids: canaries and the check are for that
        assert sum(parsed.answers[i] != right[i] for i in right) == 2
    else:
        assert parsed.failed and all(parsed.answers[i] == right[i] for i in parsed.answers)


# ---- end to end ------------------------------------------------------------------------
def run(server: FakeServer, reviews: list[str], **extra: Any) -> tuple[list[Any], Any]:
    return apply_column(server, TEMPLATE, "review", reviews, **extra)


def want(reviews: list[str]) -> list[str]:
    return [expected_answer(TEMPLATE.format(review=r)) for r in reviews]


def test_where_json_is_dearer_the_default_packs_in_lines(fake_server_factory: Any) -> None:
    server = fake_server_factory()
    reviews = [f"review {i}: it was {'good' if i % 3 else 'bad'}" for i in range(300)]
    reviews[7], reviews[8] = "multi\nline", '"quoted" {braces}'
    got, report = run(server, reviews)
    assert got == want(reviews)
    assert report.response_format == "lines" and report.batch_size_final == 20
    assert "id lines ~$" in report.packing_reason and "JSON packing would cost more" in report.packing_reason
    assert "one row per request ~$" in report.packing_reason and "packing: " in report.summary()
    # packed rows cost no more than rows sent alone, on what the server billed
    one = fake_server_factory()
    _, alone = run(one, reviews, batch_size=1)
    cost = lambda r: r.prompt_tokens * 0.15 + r.completion_tokens * 0.60  # noqa: E731
    assert cost(report) <= cost(alone), (cost(report), cost(alone))


def test_lines_survive_packing_faults(fake_server_factory: Any) -> None:
    faults = Faults(drop_rate=0.1, duplicate_rate=0.1, wrong_id_rate=0.1, truncate_rate=0.1, prose_rate=0.1)
    server = fake_server_factory(faults=faults)
    reviews = [f"review {i}" for i in range(300)]
    got, report = run(server, reviews)
    assert got == want(reviews)
    assert report.response_format == "lines" and report.resent_rows > 0


def test_an_explicit_batch_size_keeps_json(fake_server_factory: Any) -> None:
    server = fake_server_factory()
    reviews = [f"review {i}" for i in range(60)]
    got, report = run(server, reviews, batch_size=20)
    assert got == want(reviews) and report.response_format != "lines"
    assert "as batch_size= says" in report.packing_reason
