"""The packing check's side of a run: its reference and trial requests, the answers
packed ahead of its verdict, and what its verdict changes.

A trial (:mod:`._check`) carries copies of rows already answered one per request,
whose packed answers are only compared, and new rows, whose answers are kept if
the check agrees. These are functions of the :class:`~llmframe._engine.Run`
they belong to, kept here so the engine holds only the path every batch takes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ._check import PackingCheck
from ._client import CallError
from ._jobs import Batch, Job
from ._outcomes import split_tokens
from ._warn import warn_user

if TYPE_CHECKING:
    from ._engine import Run

__all__ = ["hold", "on_verdict", "send_for_check", "send_trial"]


async def send_trial(run: Run, batch: Batch) -> None:
    """A packing-check request: copies of reference rows, whose answers are only
    compared, and new rows, whose answers are kept if the check agrees."""
    check = run.planner.check
    assert check is not None
    request, n = run.builder.build(batch.jobs), len(batch.jobs)
    assert run.limiter is not None
    if not run.limiter.fits(request.tokens):  # larger than the TPM limit: cannot be sent
        batch.recorded = True
        return check.record_trial(batch.jobs, [None] * n)
    try:
        done = await run.call(request, [j for j in batch.jobs if j.rows])
    except CallError as err:
        rejected = run.endpoint.rejection_of(err, request)
        if rejected is not None and run.endpoint.adapt(rejected, err, request):
            batch.rejected = True
            return check.requeue(batch.jobs)
        if err.fatal:
            run.endpoint.fatal = run.endpoint.fatal or err
        batch.recorded = True
        return check.record_trial(batch.jobs, [None] * n)
    run.endpoint.confirm(request)
    prompt, completion = done.prompt_tokens or 0, done.completion_tokens or 0
    cost = run.budget.spend(prompt, completion)
    run.report.add_usage(prompt, completion, cost)
    copies = sum(1 for j in batch.jobs if not j.rows)
    run.report.check_requests += 1
    run.report.check_tokens += round((prompt + completion) * copies / n)
    parsed = run.parse_packed(done, n)
    prompts, completions = split_tokens(prompt, n), split_tokens(completion, n)
    row_cost = None if cost is None else cost / n
    usages = [(prompts[i], completions[i], row_cost, done.request_id) for i in range(n)]
    batch.recorded = True
    check.record_trial(batch.jobs, [parsed.answers.get(i) for i in range(n)], usages)


async def send_for_check(run: Run, batch: Batch) -> None:
    """New rows packed ahead of the verdict (counted), or a reference row, timed: the
    reference requests go together (but the endpoint's first, which goes alone), so their
    times show how many requests it answers at once (:meth:`~._check.PackingCheck.timed`)."""
    if batch.kind == "ahead":
        run.report.ahead_rows += len(batch.jobs)
        return await run.send(batch)
    sent = time.monotonic()
    await run.send(batch)
    if run.check is not None and not batch.probe and batch.jobs[0].done:
        run.check.timed(sent, time.monotonic())


def hold(run: Run, job: Job, answer: str, usage: Any, size: int) -> None:
    """A packed answer given before the verdict, at ``size`` rows per request: held until
    the verdict, then kept if it packs at least that many rows per request, else asked again."""
    check = run.check
    fate = None if check is None else check.fate(size)
    if check is not None and fate is None:
        check.ahead_held.append((job, answer, usage, size))
    elif check is not None and check.verdict is not None and fate == "again":
        run.report.ahead_again += 1
        run.planner.split([job], check.verdict.batch_size)
    else:
        run.outcomes.finish(job, answer, usage)


def on_verdict(run: Run, check: PackingCheck, fixed_size: int | None, task_key: str, note: str = "") -> int:
    """The packing check decided: keep or re-ask the rows that rode in its trial, say
    why (``note``: why packing at all, the per-row estimates), remember it; returns the
    batch size from now on."""
    verdict = check.verdict
    assert verdict is not None
    for job, answer, usage in check.held:  # the trial agreed: its new rows are answered
        if answer is not None:
            run.outcomes.finish(job, answer, usage)
        else:
            run.planner.split([job], verdict.batch_size)
    run.planner.pending.extendleft(reversed(check.returned))  # asked again, as decided
    held, check.ahead_held = check.ahead_held, []
    for job, answer, usage, size in held:  # packed ahead of the verdict: kept or asked again now
        hold(run, job, answer, usage, size)
    run.report.packing_agreement = dict(verdict.agreement)
    run.report.packing_fields = dict(verdict.fields)
    if fixed_size is not None:
        return fixed_size
    run.report.packing_reason = f"{verdict.reason}; {note}" if note and verdict.batch_size > 1 else verdict.reason
    entry = None
    if verdict.agreement:  # measured, not a lack of rows: worth remembering
        entry = {"batch_size": verdict.batch_size, "reason": verdict.reason, "style": run.builder.style}
        if run.builder.row_output is not None:  # what the next process's first burst reserves a row
            entry["row_output"] = round(run.builder.row_output, 2)
        run.endpoint.learned(verdicts={task_key: entry})
        if verdict.batch_size == 1:
            warn_user(f"llmframe: {verdict.reason}.")
    if run.on_checked is not None:  # runs of the same task waiting for this verdict (_check_share)
        run.on_checked(entry)
    return verdict.batch_size
