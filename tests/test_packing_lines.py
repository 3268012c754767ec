"""The lines style: id lines in and out, parsed as paranoidly as JSON, understood by the fake server."""

from __future__ import annotations

import random
import warnings
from typing import Any

import pytest
from conftest import apply_column

from llmframe import _packing
from llmframe._agreement import answer_agreement
from llmframe._parse import parse_packed_lines, read_single
from llmframe._tokens import get_tokenizer
from llmframe.testing import FakeServer, Faults, expected_answer
from llmframe.testing._model import parse_packed
from llmframe.testing._packed import RawAnswer, answer_packed

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
        "0 a\r\n\r\n1 b\r\n\r\n2 c\r\n",  # blank lines between answers, CRLF
        "Here are the answers:\n\n```\n0 a\n1 b\n2 c\n```\n\nAnything else?",
        "```text\n0 a\n1 b\n2 c\n```",
        "Sure.\n0 a\n1 b\n2 c",
        '0 "a"\n1 b\n2 c',
        '{"0": "a", "1": "b", "2": "c"}',
    ],
)
def test_answers_are_read_by_id(reply: str) -> None:
    parsed = parse_packed_lines(reply, 3)
    assert parsed.answers == {0: "a", 1: "b", 2: "c"} and not parsed.failed


@pytest.mark.parametrize(
    ("reply", "answers"),
    [
        ("0 :)\n1 :-(", {0: ":)", 1: ":-("}),  # a colon after the space is the answer's
        ("0: :)\n1:\t:-(", {0: ":)", 1: ":-("}),
        ("0 10: ten\n1 3:00", {0: "10: ten", 1: "3:00"}),
        ("0 -5\n1 -\u20ac3", {0: "-5", 1: "-\u20ac3"}),
        ('0 "x\\ny"\n1 "```py\\n1 + 2\\n```"', {0: "x\ny", 1: "```py\n1 + 2\n```"}),
        ('0 "Great," she said\n1 `x ** 2` and ```y```', {0: '"Great," she said', 1: "`x ** 2` and ```y```"}),
        ("0 3 steps and 2 risks.\n1 2024", {0: "3 steps and 2 risks.", 1: "2024"}),
    ],
)
def test_an_answer_is_its_line_and_a_quoted_one_is_json(reply: str, answers: dict[int, str]) -> None:
    parsed = parse_packed_lines(reply, 2)
    assert parsed.answers == answers and not parsed.failed


@pytest.mark.parametrize(
    ("reply", "n", "answers"),
    [
        # a fence inside an answer is not the reply's fence; "1 + 2" may be row 0's line
        ("0 ```python\n1 + 2\n```\n1 `x ** 2`\n2 `len(s)`", 3, {}),
        ("0 ```\n1 + 1\n```\n1 two", 2, {}),
        ("```\n0 a\n1 code:\n```py\nx = 1\n```\n```", 2, {0: "a"}),
        ("0 ```py\n1 b", 2, {1: "b"}),  # an answer that opens a fence runs on
        # a continuation line that starts like an id line: the ids around it are doubtful
        ("0 The plan has\n3 steps and 2 risks.\n1 ok\n2 fine\n3 good", 4, {}),
        ("0 The plan has\n1 step and 2 risks.\n1 ok\n2 fine", 3, {}),
        ("0 Ingredients: flour,\nsugar\n1 ok\n2 fine", 3, {1: "ok", 2: "fine"}),
        ("0 First para.\n\nSecond para.\n1 b", 2, {1: "b"}),  # text after a blank line
        ("0 a\n1 b\nHope this helps!", 2, {0: "a"}),  # trailing prose may be the answer's
        ("0 a\n1 b\n\nHope this helps!", 2, {0: "a"}),
        ("0 a\n  indented\n1 b", 2, {1: "b"}),
        ("0 - positive\n1 - negative", 2, {}),  # a separator, or a bullet of the answer?
        ("0 positive\n1 \u2013 negative", 2, {0: "positive"}),
        ('0 "She said "hi""\n1 "x"', 2, {1: "x"}),  # quoted, but not one JSON string
        ('0 "a\nb"\n1 c', 2, {1: "c"}),  # a JSON string with a raw line break
        ("0 a\n2 c", 3, {}),  # 1 missing: "2 c" may be row 0's second line
        ("0 a\n1 b\n1 x\n2 c", 3, {}),  # twice, even once right; its neighbours too
        ("2 c\n0 a\n1 b", 3, {1: "b"}),  # out of order
        ("1 b\n2 c", 3, {2: "c"}),  # the first id line is not 0's
        ("0 a\n1 b\n2 c\n3 d", 3, {}),  # numbering off: nothing trusted
        ("0 a\n1 b\n2 c\n2024 was a year", 3, {}),
        ("0 a\n1\n2 c", 3, {0: "a", 2: "c"}),  # empty answer
        ("0 a\n1:\n2 c", 3, {0: "a", 2: "c"}),
        ("I cannot help with that.", 3, {}),
        ("", 3, {}),
    ],
)
def test_what_may_be_wrong_or_cut_is_resent(reply: str, n: int, answers: dict[int, str]) -> None:
    parsed = parse_packed_lines(reply, n)
    assert parsed.answers == answers
    assert set(parsed.failed) == set(range(n)) - set(answers)


def test_a_cut_off_reply_is_never_trusted() -> None:
    assert set(parse_packed_lines("0 a\n1 b\n2 c", 3, truncated=True).failed) == {0, 1, 2}


def test_a_quoted_answer_agrees_with_its_one_row_answer() -> None:
    # id lines decode a JSON string, as the JSON style does; a one-row reply is kept as written
    packed = parse_packed_lines('0 "42"\n1 "yes"', 2).answers
    assert packed == {0: "42", 1: "yes"} and read_single(' "42"\n') == ('"42"', None)
    assert answer_agreement('"42"', packed[0]) == 1.0 and answer_agreement('"yes"', packed[1]) == 1.0


def test_the_instructions_ask_for_one_line_per_answer() -> None:
    # every word is paid once per request: 9 tokens more than without the rule
    assert "a JSON string if it has line breaks" in _packing.LINES_INSTRUCTIONS
    assert tokenizer().count(_packing.LINES_INSTRUCTIONS) <= 66


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


# Answers a real model may write raw in id lines: each may hold a line that reads like an id line.
RAW = [
    "The plan has\n3 steps and 2 risks.",
    "```python\n1 + 2\n```",
    "First para.\n\nSecond para.",
    "Steps:\n1 mix\n2 bake",
    "ok\nHope this helps!",
    "- positive",
    "2024\nwas a good year",
    "a\n\n",
]
# What a model that follows the instructions quotes, and one-line answers that start with digits.
QUOTED = ["two\nlines", "```py\nx = 1\n```", '"quoted"', "1 + 2\n3 + 4"]
PLAIN = ["3 steps", "10: ten", "`x ** 2`", ":)"]


def answers_run(server_factory: Any, answers: list[str]) -> tuple[list[Any], list[str], Any]:
    """120 rows, every third with one of ``answers`` (those of RAW written raw), at every place
    of a request in turn, in requests of 20 id lines."""
    reviews = [f"review {i}" for i in range(120)]
    table = {TEMPLATE.format(review=r): answers[i % len(answers)] if i % 3 == 1 else None for i, r in enumerate(reviews)}
    right = [table[TEMPLATE.format(review=r)] or expected_answer(TEMPLATE.format(review=r)) for r in reviews]

    def answer_fn(prompt: str) -> str:
        found = table.get(prompt)
        if found is None:
            return expected_answer(prompt)
        return RawAnswer(found) if found in RAW else found

    got, report = run(server_factory(answer_fn=answer_fn), reviews, batch_size=20, response_format="lines")
    return got, [a.strip() for a in right], report


def test_answers_with_line_breaks_come_right_when_the_model_writes_them_raw(fake_server_factory: Any) -> None:
    got, right, report = answers_run(fake_server_factory, RAW + QUOTED + PLAIN)
    assert got == right
    assert report.response_format == "lines" and report.resent_rows > 0 and report.requests < len(right)


def test_answers_the_model_quotes_as_asked_stay_packed(fake_server_factory: Any) -> None:
    got, right, report = answers_run(fake_server_factory, QUOTED + PLAIN)
    assert got == right
    assert report.response_format == "lines" and report.resent_rows == 0
