"""Estimates: what a run would send and cost, before any money is spent.

The estimate plans the very batches the run would send (same planner, same
token budget, same packed messages), so its request count equals the run's
when nothing fails, and its input tokens are exact: tiktoken over the messages
as they would be sent. Output tokens cannot be known in advance: they come
from ``max_tokens`` (an upper bound), from a small paid sample (``sample=n``),
or are a guess, and the estimate says which.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from . import _engine
from ._answers import Answers
from ._config import Options
from ._endpoint import Endpoint
from ._html import table
from ._packing import reply_overhead
from ._prepare import Prepared, prepare
from ._pricing import batch_price_for, price_for
from ._requests import max_tokens_param
from ._run import run_frame
from ._template import Template

__all__ = ["Estimate", "estimate_run"]



@dataclass
class Estimate:
    """What one ``apply`` would do. ``one_row`` is the same run at ``batch_size=1``; ``batch``
    (with ``mode="batch"``) the same requests through the Batch API, at its price, within 24 h."""

    rows: int
    cached_rows: int
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    seconds: float | None
    batch_size: int
    output_tokens_from: str  # "max_tokens" (upper bound), "sample", or "guess"
    rpm: float | None = None
    tpm: float | None = None
    one_row: Estimate | None = None
    batch: Estimate | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("one_row", "batch"):
            if getattr(self, name) is None:
                d.pop(name)
        return d

    def columns(self) -> list[tuple[str, Estimate]]:
        """The columns shown: this estimate, one row per request, the Batch API."""
        cols = [("packed" if self.batch_size > 1 else "as set", self)]
        if self.one_row is not None and self.batch_size > 1:
            cols.append(("one row per request", self.one_row))
        if self.batch is not None:
            cols.append(("batch API", self.batch))
        return cols

    def _time(self, e: Estimate) -> str:
        if e is self.batch:
            return "within 24 h"
        return "unknown" if e.seconds is None else f"{e.seconds:,.0f} s"

    def __str__(self) -> str:
        def money(v: float | None) -> str:
            return "unknown" if v is None else f"${v:,.4f}"

        cols = self.columns()
        lines = [
            f"llmframe estimate: {self.rows} rows, {self.cached_rows} already cached; "
            f"output tokens from {self.output_tokens_from}",
            f"{'':<16}" + "".join(f"{name:>22}" for name, _ in cols),
        ]
        for label, get in (
            ("requests", lambda e: f"{e.requests:,}"),
            ("input tokens", lambda e: f"{e.input_tokens:,}"),
            ("output tokens", lambda e: f"{e.output_tokens:,}"),
            ("cost", lambda e: money(e.cost_usd)),
            ("time at limits", self._time),
        ):
            lines.append(f"{label:<16}" + "".join(f"{get(e):>22}" for _, e in cols))
        if self.seconds is None:
            lines.append("time is unknown until the limits are: pass rpm= and tpm=")
        return "\n".join(lines)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython
        p.text(str(self))

    def _repr_html_(self) -> str:  # Jupyter
        cols = self.columns()
        rows = [
            [label, *(get(e) for _, e in cols)]
            for label, get in (
                ("requests", lambda e: f"{e.requests:,}"),
                ("input tokens", lambda e: f"{e.input_tokens:,}"),
                ("output tokens", lambda e: f"{e.output_tokens:,}"),
                ("cost", lambda e: "unknown" if e.cost_usd is None else f"${e.cost_usd:,.4f}"),
                ("time at limits", self._time),
            )
        ]
        note = f"output tokens from {self.output_tokens_from}"
        if self.seconds is None:
            note += "; time is unknown until the limits are: pass rpm= and tpm="
        title = f"llmframe estimate: {self.rows:,} rows, {self.cached_rows:,} already cached"
        return table(title, rows, header=["", *(name for name, _ in cols)], note=note)


def _plan(
    prepared: Prepared,
    template: Template,
    opts: Options,
    answer_tokens: int | None,
    upper_bound: bool,
    endpoint: Endpoint,
) -> tuple[int, int, int, int]:
    """(requests, input tokens, output tokens, batch cap) of the batches the run would send."""
    plan_only = replace(prepared, todo=prepared.todo.copy(), cache=None, answers=Answers(len(prepared.answers)))
    state = _engine.new_run(plan_only, template, opts, client=None, limiter=None, endpoint=endpoint, learns=False)
    planner, builder = state.planner, state.builder
    # The endpoint is not probed (its first request is a row like the others), the packed format
    # is as the run would find it: unconfirmed, its probe is a request of its own (:mod:`._check`).
    state.endpoint.endpoint_confirmed = True
    if answer_tokens is not None:
        builder.answer_tokens = answer_tokens
    requests = input_tokens = output_tokens = 0
    while (batch := planner.take()) is not None:
        jobs = batch.jobs
        # Canaries are rows like any other: the batch's own rows stand in for their size.
        request = builder.build(jobs + jobs[: len(batch.canaries)])
        requests += 1
        input_tokens += request.input_tokens
        n = len(jobs) + len(batch.canaries)
        if upper_bound or n == 1:
            output_tokens += request.output_tokens  # max_tokens as it would be sent
        else:
            output_tokens += n * builder.answer_tokens + reply_overhead(n, builder.tokenizer, builder.style)
        # The estimate assumes the packing check passes: it costs its requests either way.
        check = planner.check
        if batch.kind == "reference" and check is not None:
            check.settle_reference(jobs[0], "?")
            planner.canaries.learn(jobs[0], "?")
        elif batch.kind == "trial" and check is not None:
            check.record_trial(jobs, [check.answers.get(j.key, "?") for j in jobs])
        state.endpoint.probe_done(batch)
    return requests, input_tokens, output_tokens, planner.cap


async def estimate_run(
    columns: Mapping[str, Sequence[Any]],
    n_rows: int,
    template: Template,
    opts: Options,
    *,
    sample: int = 0,
    take_rows: Any = None,
) -> Estimate:
    answer_tokens: int | None = None
    source = "guess"
    if max_tokens_param(opts.params) is not None:
        source = "max_tokens"
    elif sample and take_rows is not None:
        # A seeded sample of the rows still to do (rows already cached tell nothing new),
        # answered one per request: paid, but cached, so the run will not pay for them again.
        unanswered = prepare(columns, n_rows, template, opts)
        if unanswered.cache is not None:
            unanswered.cache.close()
        rows = unanswered.todo.first_rows()
        chosen = sorted(random.Random(0).sample(rows, min(sample, len(rows))))
        report = None
        if chosen:
            sample_opts = replace(opts, batch_size=1, progress=False, errors="null", error_column=None)
            _, report = await run_frame(take_rows(chosen), template, sample_opts, "answer")
        if report is not None and report.requests:
            answered = max(1, report.answered_rows - report.cached_rows)
            answer_tokens = max(1, round(report.completion_tokens / answered))
            source = "sample"
        elif report is not None and report.cached_rows:
            source = "guess (sample rows were cached)"

    prepared = prepare(columns, n_rows, template, opts)
    if prepared.cache is not None:
        prepared.cache.close()
    # The very limiter the run would use: the same Endpoint, so the same learned limits.
    endpoint = Endpoint.of(model=opts.model or "", base_url=opts.base_url, api_key=opts.api_key,
                           client=opts.client)  # fmt: skip
    limiter = endpoint.limiter(opts.rpm, opts.tpm, opts.limiter)
    rpm, tpm = limiter.rpm, limiter.tpm

    def build(o: Options) -> Estimate:
        requests, inp, out, cap = _plan(prepared, template, o, answer_tokens, source == "max_tokens", endpoint)
        price = price_for(o.model or "", o.prices)
        cost = None if price is None else price.cost(inp, out)
        times = []
        if rpm:
            times.append(requests * 60.0 / rpm)
        if tpm:
            times.append((inp + out) * 60.0 / tpm)
        return Estimate(
            rows=n_rows,
            cached_rows=prepared.report.cached_rows,
            requests=requests,
            input_tokens=inp,
            output_tokens=out,
            cost_usd=cost,
            seconds=max(times) if times else None,
            batch_size=cap,
            output_tokens_from=source,
            rpm=rpm,
            tpm=tpm,
        )

    result = build(opts)
    if result.batch_size > 1:
        result.one_row = build(replace(opts, batch_size=1, canaries=0))
    if opts.mode == "batch":
        price = batch_price_for(opts.model or "", opts.prices, opts.batch_prices)
        cost = None if price is None else price.cost(result.input_tokens, result.output_tokens)
        result.batch = replace(result, cost_usd=cost, seconds=None, one_row=None)
    return result
