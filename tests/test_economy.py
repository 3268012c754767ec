"""Packing only where it is not dearer per row: the estimates and the choice."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from llmframe import _check_plan
from llmframe._config import Options
from llmframe._economy import OUTPUT_WEIGHT, Costs, choose, economy_for
from llmframe._jobs import Job
from llmframe._pricing import price_for
from llmframe._requests import RequestBuilder
from llmframe._template import parse_template
from llmframe._tokens import count_messages, get_tokenizer

SHORT = "Reverse the code <<{code}>>"
MEDIUM = "Answer with one word, the sentiment of the review (positive, negative or neutral): {code}"
LONG = (
    "You check product codes for a warehouse. Each code is a letter and seven digits. Reverse the "
    "code character by character, keep the letter's case, add nothing, and answer with the reversed "
    "code alone, with no other words, no quotes and no punctuation. Code: {code}"
)


class Sends:
    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.response_format = "json_schema"


def costs(template: str, rows: int = 600, model: str = "gpt-4o-mini", **kw: Any) -> Costs:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = get_tokenizer(model)
    builder = RequestBuilder(parse_template(template, ["code"]), None, tok, Sends())
    jobs = [Job(str(i), {"code": f"K{i:07d}"}, [i]) for i in range(rows)]
    return Costs(jobs, builder, price_for(model), check_rows=_check_plan.check_rows(rows), canary_rate=0.25, **kw)


def test_one_row_counts_the_chat_overhead() -> None:
    c = costs(SHORT)
    prompt = [{"role": "user", "content": SHORT.format(code="K0000000")}]
    assert c.one_row.input_tokens == pytest.approx(count_messages(prompt, c.builder.tokenizer), abs=0.5)
    assert c.one_row.output_tokens == c.builder.answer_tokens


def test_packed_spreads_the_instructions_and_adds_the_check() -> None:
    c = costs(LONG)
    row = c.packed_row("json", 20)
    assert row.input_tokens == pytest.approx(c.builder.request_tokens("json") / 20 + c._items["json"])
    overall = c.packed("json", 20)  # the check's rows alone, its copies and canaries on top
    assert overall.input_tokens > row.input_tokens and overall.cost > row.cost
    assert c.packed_row("json", 5).cost > row.cost  # the instructions over fewer rows


@pytest.mark.parametrize(
    ("template", "style", "words"),
    [
        (LONG, "json", "JSON packing ~$"),
        (MEDIUM, "lines", "JSON packing would cost more"),
        (SHORT, None, "one row per request: packing 20 rows per request would cost more"),
    ],
)
def test_the_cheapest_way_that_is_not_dearer(template: str, style: str | None, words: str) -> None:
    choice = choose(costs(template), [20, 5], lines_allowed=True)
    assert choice.style == style and words in choice.note
    assert choice.note.count("per 1,000 rows") >= 2  # both per-row estimates are given
    if style is None:
        assert choice.sizes == []


def test_lines_only_where_allowed() -> None:
    assert choose(costs(MEDIUM), [20, 5], lines_allowed=False).style is None


def test_sizes_where_packing_is_dearer_are_not_checked() -> None:
    c = costs(MEDIUM)
    choice = choose(c, [20, 5], lines_allowed=True)
    assert choice.sizes == [s for s in (20, 5) if c.packed("lines", s).cost <= c.one_row.cost]
    assert 20 in choice.sizes


def test_without_a_price_output_tokens_weigh_more() -> None:
    c = costs(SHORT, model="my-local-model")
    assert c.price is None and "weighted tokens" in c.show(c.one_row)
    assert c.one_row.cost == pytest.approx(c.one_row.input_tokens + OUTPUT_WEIGHT * c.one_row.output_tokens)


def test_plan_follows_the_choice() -> None:
    jobs = [Job(str(i), {"code": f"K{i:07d}"}, [i]) for i in range(600)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = get_tokenizer("gpt-4o-mini")
    for template, cap in ((SHORT, 1), (MEDIUM, 20)):
        builder = RequestBuilder(parse_template(template, ["code"]), None, tok, Sends())
        economy = economy_for(jobs, builder, Options(model="gpt-4o-mini"))
        packing = _check_plan.plan(cap=20, batch_size=None, canaries=None, rows_to_send=600, economy=economy)
        assert packing.cap == cap
        assert (packing.style, packing.check is None) == (("lines", False) if cap > 1 else ("json", True))
    # Asked for lines: JSON is never considered; a schema run never packs in lines.
    choice = economy_for(jobs, builder, Options(model="gpt-4o-mini", response_format="lines"))([20])
    assert choice.style == "lines" and "JSON packing would cost more" in choice.note
    # An explicit batch size is never overridden.
    explicit = _check_plan.plan(cap=20, batch_size=20, canaries=0, rows_to_send=600, economy=economy)
    assert explicit.cap == 20 and explicit.style == "json"


def test_a_verdict_is_reused_only_in_the_style_it_was_measured_in() -> None:
    """Packing that agreed in JSON says nothing of id lines: those are checked afresh."""
    jobs = [Job(str(i), {"code": f"K{i:07d}"}, [i]) for i in range(600)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = get_tokenizer("gpt-4o-mini")
    builder = RequestBuilder(parse_template(MEDIUM, ["code"]), None, tok, Sends())
    economy = economy_for(jobs, builder, Options(model="gpt-4o-mini"))
    assert economy([20]).style == "lines"

    def plan(verdict: dict[str, object]) -> _check_plan.PackingPlan:
        return _check_plan.plan(cap=20, batch_size=None, canaries=0, rows_to_send=600, economy=economy, verdict=verdict)

    in_json = plan({"batch_size": 20, "reason": "agreed"})  # stored before styles were recorded: JSON
    assert in_json.check is not None and in_json.check.sizes  # checked again, in lines
    in_lines = plan({"batch_size": 20, "reason": "agreed", "style": "lines"})
    assert in_lines.check is None and in_lines.cap == 20  # reused as measured
    refused = plan({"batch_size": 1, "reason": "disagreed", "style": "json"})
    assert refused.cap == 1  # a refusal holds in any style
