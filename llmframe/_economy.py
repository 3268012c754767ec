"""What a row costs sent alone and sent packed, and so whether (and how) a run packs.

With ``batch_size=None`` a run packs only where its estimate says a packed row
costs no more than a row sent alone. Both sides count what is really sent:

- one row per request: the rendered prompt with the chat overhead the API bills
  (3 tokens per message, 3 to prime the reply, the system message if any) and
  the expected answer;
- packed: the system message with the packing rules once per request, spread
  over its rows; each row's item line; the expected answer plus the reply's
  ids and separators; and what the packing check and the canaries add (the
  check's sample rows go one per request, its trial re-sends them packed, one
  canary row rides on every fourth packed request).

Costs are in USD from the price table (:mod:`._pricing`). For a model without
a price they are tokens, an output token weighing ``OUTPUT_WEIGHT`` input
tokens: the ratio of most models in the table (gpt-4o-mini, gpt-4o, gpt-4.1).

JSON packing is the first choice (the endpoint can enforce its ids with a JSON
schema). The lines style (:mod:`._packing`) is chosen only where JSON packing is
dearer than one row per request and lines are not: very short prompts, where the
JSON keys and quotes cost more than the repeated prompt saves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import _packing
from ._check_plan import AUTO_CANARY_EVERY, Choice, check_rows
from ._config import Options
from ._jobs import Job
from ._pricing import Price, price_for
from ._requests import RequestBuilder

__all__ = ["OUTPUT_WEIGHT", "Choice", "Costs", "RowCost", "choose", "economy_for"]

#: Where the model's price is unknown: one output token costs as much as this many input tokens.
OUTPUT_WEIGHT = 4.0
#: Rows whose token counts stand for all of them (spread over the run's rows).
SAMPLE_ROWS = 64


@dataclass(frozen=True)
class RowCost:
    """The tokens and cost of one row, on average, one way of sending it."""

    input_tokens: float
    output_tokens: float
    cost: float  # USD, or weighted tokens without a price

    def __le__(self, other: RowCost) -> bool:
        return self.cost <= other.cost * (1 + 1e-9)


class Costs:
    """Per-row costs of a run's rows (a sample of them), alone and packed at any size."""

    __slots__ = ("_items", "builder", "canary_rate", "check_rows", "one_row", "price", "rows")

    def __init__(
        self, jobs: Sequence[Job], builder: RequestBuilder, price: Price | None, *, check_rows: int,
        canary_rate: float,
    ) -> None:  # fmt: skip
        self.builder = builder
        self.price = price
        self.rows = len(jobs)
        self.check_rows = min(check_rows, self.rows)
        self.canary_rate = canary_rate  # canary rows per packed request
        step = max(1, len(jobs) // SAMPLE_ROWS)
        sample = list(jobs[::step][:SAMPLE_ROWS])
        alone = [builder.build([job]).input_tokens for job in sample]
        self.one_row = self._cost(_mean(alone), builder.answer_tokens)
        self._items = {style: _mean([builder.count_item(j.values, style) for j in sample])
                       for style in (_packing.JSON, _packing.LINES)}  # fmt: skip

    def _cost(self, input_tokens: float, output_tokens: float) -> RowCost:
        if self.price is not None:
            cost = (input_tokens * self.price.input_per_1m + output_tokens * self.price.output_per_1m) / 1e6
        else:
            cost = input_tokens + OUTPUT_WEIGHT * output_tokens
        return RowCost(input_tokens, output_tokens, cost)

    def packed_row(self, style: str, n: int) -> RowCost:
        """One row in a packed request of ``n`` rows, the check and canaries left out."""
        tokenizer = self.builder.tokenizer
        inp = self.builder.request_tokens(style) / n + self._items[style]
        out = self.builder.answer_tokens + _packing.reply_overhead(n, tokenizer, style) / n
        return self._cost(inp, out)

    def packed(self, style: str, n: int) -> RowCost:
        """A row of the run packed ``n`` to a request, on average over the run: the check's
        sample rows alone, its trial's copies and the canaries packed on top."""
        if self.rows == 0:
            return self.one_row
        row, alone, k = self.packed_row(style, n), self.one_row, self.check_rows
        packed_rows = self.rows - k
        extra = min(k, n) + self.canary_rate * packed_rows / n
        share = (packed_rows + extra) / self.rows
        return RowCost(
            (k * alone.input_tokens) / self.rows + share * row.input_tokens,
            (k * alone.output_tokens) / self.rows + share * row.output_tokens,
            (k * alone.cost) / self.rows + share * row.cost,
        )

    def show(self, cost: RowCost) -> str:
        """``~$0.0054 per 1,000 rows (16.0 in + 5.0 out tokens per row)``."""
        if self.price is not None:
            amount = f"~${cost.cost * 1000:.4f} per 1,000 rows"
        else:
            amount = f"~{cost.cost:.1f} weighted tokens per row"
        return f"{amount} ({cost.input_tokens:.1f} in + {cost.output_tokens:.1f} out tokens per row)"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def choose(costs: Costs, sizes: Sequence[int], *, lines_allowed: bool, json_allowed: bool = True) -> Choice:
    """JSON packing where it is not dearer than one row per request; else the lines style
    where that is not dearer (and allowed); else one row per request."""
    alone = costs.one_row
    first = sizes[0]
    json_cost = costs.packed(_packing.JSON, first)
    price = "" if costs.price is None else " at the model's prices"
    if json_allowed and json_cost <= alone:
        ok = [s for s in sizes if costs.packed(_packing.JSON, s) <= alone]
        return Choice(_packing.JSON, ok, f"JSON packing {costs.show(json_cost)} against one row per request "
                                         f"{costs.show(alone)}{price}")  # fmt: skip
    if lines_allowed:
        lines_cost = costs.packed(_packing.LINES, first)
        if lines_cost <= alone:
            ok = [s for s in sizes if costs.packed(_packing.LINES, s) <= alone]
            return Choice(_packing.LINES, ok, (
                f"id lines {costs.show(lines_cost)} against one row per request {costs.show(alone)}{price}; "
                f"JSON packing would cost more than one row per request ({costs.show(json_cost)})"))  # fmt: skip
        cheapest = f"id lines {costs.show(lines_cost)}, JSON {costs.show(json_cost)}"
    else:
        cheapest = f"JSON {costs.show(json_cost)}"
    return Choice(None, [], f"one row per request: packing {first} rows per request would cost more per row "
                            f"({cheapest}) than one row per request ({costs.show(alone)}){price}")  # fmt: skip


def economy_for(jobs: Sequence[Job], builder: RequestBuilder, opts: Options) -> Callable[[Sequence[int]], Choice]:
    """What :func:`~llmframe._check_plan.plan` asks with the sizes it would check: the run's
    rows counted only then (a run that does not choose never counts them). Id lines are
    for text answers, with ``response_format`` ``"auto"``, ``"text"`` or ``"lines"`` (only)."""
    lines_allowed = opts.schema is None and opts.response_format in ("auto", "text", _packing.LINES)
    price = price_for(opts.model or "", opts.prices)

    def decide(sizes: Sequence[int]) -> Choice:
        rate = 1 / AUTO_CANARY_EVERY if opts.canaries is None else float(opts.canaries)
        costs = Costs(jobs, builder, price, check_rows=check_rows(len(jobs)), canary_rate=rate)
        return choose(costs, sizes, lines_allowed=lines_allowed, json_allowed=opts.response_format != _packing.LINES)

    return decide
