"""The live run's wiring, driven by batches: plan a round of requests, take each one's result.

A batch job does not fork the live path. :func:`~llmframe._engine.new_run` wires
the same planner, request builder, parser, canaries, outcomes and cache; here a
round takes every batch the planner has now and builds its request (a line of
the input file, :mod:`._batch_jsonl`), and each result goes where a live reply
or error goes: :meth:`~llmframe._engine.Run.accept` (ids matched, answers
validated per row, failed rows queued again in smaller requests, down to one
row) or :meth:`~llmframe._engine.Run.handle_error`. What a round queued again is
the next round, a follow-up batch.

How it packs, with no live check (which would take a round trip of a batch per
step): the verdict remembered for this endpoint and task if a live run checked
it, else the default size. In the first round :data:`REFERENCE_ROWS` rows also
go alone; their answers are the canaries packed requests carry (one on every
:data:`~llmframe._check_plan.AUTO_CANARY_EVERY`-th), and a packed reply whose canary
disagrees with the one-row answer is asked again in smaller requests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import _check_plan
from ._batch_jsonl import Result, input_line
from ._batch_state import JobState
from ._budget import Budget
from ._cache import resolve_cache_dir
from ._canaries import Canaries
from ._capabilities import MEMORY
from ._client import CallError
from ._config import Options
from ._endpoint import Endpoint
from ._engine import Run, new_run
from ._jobs import Batch, Job
from ._keys import call_prefix, output_spec
from ._packing import LINES
from ._prepare import Prepared
from ._pricing import batch_price_for
from ._requests import Request
from ._template import Template
from ._todo import JobQueue

__all__ = ["BatchCanaries", "BatchRun", "Sent", "task_hash"]

#: Rows answered alone in the first round, whose answers serve as canaries.
REFERENCE_ROWS = 4


def task_hash(template: Template, opts: Options, base_url: str) -> str:
    """What makes two submits the same job: the cache keys' prefix (model, template, system,
    parameters, schema), how rows are packed, and the endpoint (no key)."""
    prefix = call_prefix(model=opts.model or "", template=template.text, system=opts.system, params=opts.params,
                         output=output_spec(opts.schema)).hex()  # fmt: skip
    packing = [opts.batch_size, opts.max_batch_tokens, opts.response_format, opts.canaries, base_url]
    return hashlib.sha256(json.dumps([prefix, packing], default=str).encode()).hexdigest()[:32]


class BatchCanaries(Canaries):
    """Canaries whose one-row answers come back in the same batch as the packed requests
    that carry them: a copy is promised before its answer is known, and a canary whose
    answer is not known (its own request failed) is not judged."""

    __slots__ = ()

    def promise(self, job: Job) -> None:
        self._jobs.append(job.copy())

    def learn(self, job: Job, answer: str) -> None:
        if self.per_request and job.key not in self._answers:
            self._answers[job.key] = answer
            if all(c.key != job.key for c in self._jobs):
                self._jobs.append(job.copy())

    def wrong(self, sent: Sequence[Job], answers: Mapping[int, str]) -> list[int]:
        known = [job if not job.rows and job.key in self._answers else Job(job.key, job.values, [0])
                 for job in sent]  # fmt: skip
        return super().wrong(known, answers)


@dataclass
class Sent:
    """One request of a batch: its rows (``batch.jobs``), as placed with canaries (``sent``)."""

    custom_id: str
    batch: Batch
    sent: list[Job]
    request: Request | None  # None when rebuilt from the job state: the request is in its file


class BatchRun:
    """One job's run: the live wiring, its requests out, the rows left for the live path."""

    __slots__ = ("job_id", "live_left", "max_attempts", "on_expired", "round", "run", "sent", "tries")

    def __init__(self, run: Run, job_id: str, opts: Options) -> None:
        self.run = run
        self.job_id = job_id
        self.on_expired = opts.on_expired
        self.max_attempts = opts.max_attempts
        self.sent: dict[str, Sent] = {}
        self.tries: dict[str, int] = {}  # job key -> sends that errored, expired or were left unfinished
        self.round = 0
        self.live_left: list[Job] = []  # with on_expired="live": rows for the live path

    @classmethod
    def wire(cls, prepared: Prepared, template: Template, opts: Options, endpoint: Endpoint, job_id: str) -> BatchRun:
        """The live run's wiring with the batch's packing and the batch price."""
        model = opts.model or ""
        cap = _check_plan.batch_cap(opts.batch_size, template.fields)
        known = MEMORY.get(endpoint.memory_key, resolve_cache_dir(opts.cache))
        prefix = call_prefix(model=model, template=template.text, system=opts.system, params=opts.params,
                             output=output_spec(opts.schema)).hex()  # fmt: skip
        verdict = (known.get("verdicts") or {}).get(prefix)
        remembered = verdict.get("batch_size") if isinstance(verdict, dict) else None
        if opts.batch_size is None and isinstance(remembered, int) and remembered >= 1:
            cap = min(cap, remembered)
            reason = f"{verdict.get('reason', '')} (checked by a live run on this endpoint)"  # type: ignore[union-attr]
        elif opts.batch_size is None and cap > 1:
            reason = (f"packed up to {cap} rows per request, the default (a batch runs no live packing check: "
                      "canaries and per-row validation catch bad packed answers)")  # fmt: skip
        else:
            reason = f"packed up to {cap} rows per request, as batch_size= says" if cap > 1 else "one row per request"
        every = _check_plan.AUTO_CANARY_EVERY if opts.canaries is None else 1
        canaries = BatchCanaries(1 if opts.canaries is None else opts.canaries, every) if cap > 1 else BatchCanaries(0)
        plan = _check_plan.PackingPlan(cap, reason, None, canaries, style=LINES if opts.response_format == LINES else "json")
        run = new_run(prepared, template, opts, client=None, limiter=None, endpoint=endpoint, packing=plan)
        run.budget = Budget(opts.max_cost_usd, batch_price_for(model, opts.prices, opts.batch_prices))
        run.endpoint.endpoint_confirmed = run.endpoint.format_confirmed = True  # no probe: the batch validates
        run.rounds = True  # a schema nothing follows stops after round 1, not a round of rows alone
        return cls(run, job_id, opts)

    # ---- a round out --------------------------------------------------------------------
    def plan(self) -> list[tuple[Sent, bytes]]:
        """Every request the planner has now, as lines of the next batch."""
        run, planner = self.run, self.run.planner
        if run.endpoint.fatal is not None:
            return []
        self.round += 1
        batches: list[Batch] = []
        canaries = planner.canaries
        if self.round == 1 and isinstance(canaries, BatchCanaries) and canaries.wanted and planner.cap > 1:
            for _ in range(min(REFERENCE_ROWS, len(planner.pending) // (2 * planner.cap))):
                job = planner.pending.popleft()
                canaries.promise(job)
                batches.append(Batch([job]))
        while (batch := planner.take()) is not None:
            run.endpoint.probe_done(batch)  # nothing is probed: the take after it may go at once
            batches.append(batch)
        lines: list[tuple[Sent, bytes]] = []
        model = run.opts.model or ""
        for batch in batches:
            sent = planner.canaries.place(batch.jobs, batch.canaries)
            request = run.builder.build(sent)
            if len(sent) > 1 and request.tokens > planner.max_batch_tokens * 2:
                run.too_large(batch, f"the request needs ~{request.tokens} tokens, more than twice "
                                     f"max_batch_tokens ({planner.max_batch_tokens})")  # fmt: skip
                continue
            item = Sent(f"{self.job_id}-{self.round}-{len(lines)}", batch, sent, request)
            self.sent[item.custom_id] = item
            lines.append((item, input_line(item.custom_id, request, model)))
        if not lines and (planner.resend or planner.pending):  # all too large: they were split
            return self.plan()
        run.report.requests += len(lines)
        return lines

    def resume(self, state: JobState) -> None:
        """Take back the requests of ``state``'s batches in flight (a new process): their rows
        leave the planner, and rows answered since (cached) stand in their place as copies."""
        planner = self.run.planner
        by_key = {job.key: job for job in planner.pending}
        taken: set[str] = set()
        for sent_batch in state.in_flight:
            for custom_id, keys in sent_batch.requests.items():
                copies = set(sent_batch.canaries.get(custom_id, ()))
                sent, jobs = [], []
                for i, key in enumerate(keys):
                    job = by_key.get(key) if i not in copies and key not in taken else None
                    if job is None:
                        sent.append(Job(key, {}, []))
                    else:
                        taken.add(key)
                        sent.append(job)
                        jobs.append(job)
                self.sent[custom_id] = Sent(custom_id, Batch(jobs), sent, None)
        self.round = max((b.round for b in state.batches), default=0)
        planner.pending = JobQueue(job for job in planner.pending if job.key not in taken)

    # ---- results in -----------------------------------------------------------------------
    def take(self, custom_ids: Sequence[str], results: Mapping[str, Result], *, resend: bool) -> None:
        """The results of a finished batch's requests. One-row answers first: they are the
        canaries the packed ones are judged by. ``resend=False`` (the user cancelled): a
        request left unfinished is not sent again."""
        items = [self.sent.pop(c) for c in custom_ids if c in self.sent]
        for item in sorted(items, key=lambda s: len(s.sent) > 1):
            self.take_one(item, results.get(item.custom_id), resend=resend)

    def take_one(self, item: Sent, result: Result | None, *, resend: bool) -> None:
        run, jobs = self.run, item.batch.jobs
        if not jobs:
            return  # every row it carried was answered (and cached) before a restart
        if result is not None and result.completion is not None:
            if item.request is not None:
                run.endpoint.confirm(item.request)
            run.endpoint.attempted(None)
            with run.outcomes.one_reply():
                run.accept(jobs, item.sent, result.completion)
            return
        err = result.error if result is not None and result.error is not None else (
            CallError("cancelled", "left unfinished when the batch ended", True))  # fmt: skip
        unfinished = result is None or result.unfinished
        if unfinished and not resend:
            return run.outcomes.fail(jobs, "cancelled", "the batch job was cancelled before this row ran")
        if unfinished and self.on_expired == "live":
            self.live_left.extend(jobs)
            return
        if err.retryable:
            tries = 1 + max(self.tries.get(j.key, 0) for j in jobs)
            for job in jobs:
                self.tries[job.key] = tries
            if tries >= self.max_attempts:
                return run.outcomes.fail(jobs, err.kind, f"{err.message} (in {tries} batches)", err.status)
            run.report.retries += 1
            return run.planner.split(jobs, len(jobs))
        run.handle_error(err, item.batch, item.request or run.builder.build(item.sent))

    def unfinished(self) -> list[Job]:
        """Rows with no answer and no error yet (none are, when the job ends normally)."""
        seen = {id(j) for j in self.live_left}
        rest = [j for item in self.sent.values() for j in item.batch.jobs]
        return [j for j in (*rest, *self.run.planner.unfinished()) if not j.done and id(j) not in seen]

    def close_out(self, kind: str, message: str, status: int | None = None) -> None:
        """Fail every row still open (a stop, a cancel), so each has an answer or an error."""
        self.run.outcomes.fail(self.unfinished(), kind, message, status)
        self.sent.clear()
