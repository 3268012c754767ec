"""The engine: the one orchestrator of a run. It wires the steps of DESIGN.md:

1-3 prepare   render and key every row, deduplicate, look up the cache   _prepare
4   plan      the next batch: the packing check, resends, new rows        _planner, _check
5   limiter   reserve a request and its estimated tokens                 _limiter, _budget
6   client    one attempt, retried here so each passes the limiter       _attempts, _client
              what the endpoint rejects changes every later request       _endpoint
7   parse     match answers by id; canaries; resend only what failed     _parse, _canaries
8   cache     append finished rows as they complete                      _outcomes, _cache
9   report    counters, tokens, cost, latency, failures, why it packed    _report

The state of a run lives on one event loop; the limiter it shares does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from . import _check, _check_plan
from ._attempts import RetryPolicy, send_with_retries
from ._budget import Budget
from ._cache import resolve_cache_dir
from ._check_plan import batch_cap
from ._check_share import shared_check
from ._client import CallError, ChatClient, Completion
from ._config import Options
from ._economy import economy_for
from ._endpoint import Endpoint, EndpointState
from ._errors import RowError
from ._gc import fewer_collections
from ._jobs import Batch, Job
from ._keys import call_prefix, output_spec
from ._limiter import RateLimiter
from ._outcomes import Outcomes, progress_bar, split_tokens
from ._packing import LINES
from ._parse import read_single
from ._planner import Planner
from ._prepare import Prepared, prepare
from ._pricing import price_for
from ._report import RunReport, set_last_report
from ._requests import Request, RequestBuilder
from ._result import RunResult, result_of
from ._template import Template
from ._tokens import get_tokenizer
from ._trials import hold, on_verdict, send_for_check, send_trial
from ._warn import warn_user
from ._workers import drain, every, stopped

__all__ = ["Prepared", "Run", "RunResult", "new_run", "prepare", "result_of", "run"]

#: Input plus expected output tokens per packed request when ``max_batch_tokens`` is not given.
AUTO_BATCH_TOKENS = 4000
#: How many times one row may be resent after its packed answer failed validation.
MAX_RESENDS = 4
#: Seconds between folds of the answer log into a segment (a crash loses only what is in flight).
FLUSH_SECONDS = 2.0
#: One-row answers that fail the schema before the row fails (the same prompt mostly
#: gets the same answer: more tries cost more than they find).
ALONE_TRIES = 2
#: One-row answers failing the schema (or cut off), none valid yet, that stop the run; live, packed
#: ones do not count (a model may break a schema only packed): their rows go again alone at once.
SYSTEMIC_INVALID = 10
#: The error of a row whose values changed between keying and sending (:mod:`._todo`).
CHANGED = "the row's values changed in the frame while the run was going; nothing was sent for it, run again"


class Run:
    """One run's wiring: the planner feeds workers, each sends a batch and takes its answers."""

    def __init__(
        self, *, opts: Options, client: Any, limiter: RateLimiter | None, report: RunReport,
        endpoint: EndpointState, builder: RequestBuilder, planner: Planner, outcomes: Outcomes,
        budget: Budget, sleep: Callable[[float], Awaitable[None]], policy: RetryPolicy, task_key: str = "",
    ) -> None:  # fmt: skip
        self.opts, self.client, self.limiter, self.report = opts, client, limiter, report
        self.endpoint, self.builder, self.planner, self.outcomes = endpoint, builder, planner, outcomes
        self.budget, self.sleep, self.policy = budget, sleep, policy
        self.valid, self.invalid, self.rounds = 0, 0, False  # schema checks so far; rounds: the Batch API's
        self.cut_off = 0  # one-row answers cut off at max_tokens
        self.task_key = task_key  # the key of this task's packing verdict; told the verdict stored (None: none)
        self.on_checked: Callable[[dict[str, Any] | None], None] | None = None  # _check_share
        self.check: _check.PackingCheck | None = None  # the run's packing check, also once decided

    def release(self) -> None:
        """Over: drop what points back at it (its jobs and answers go when the call returns)."""
        self.planner.on_verdict, self.on_checked, self.check = None, None, None

    # ---- one batch --------------------------------------------------------------------
    async def process(self, batch: Batch) -> None:
        try:
            if batch.kind == "rows":
                await self.send(batch)
            else:
                await (send_trial(self, batch) if batch.kind == "trial" else send_for_check(self, batch))
        except Exception as exc:  # a bug must cost its rows, never the run
            if batch.kind == "trial":  # its rows are asked again as the check decides
                if self.planner.check is not None and not batch.recorded:
                    self.planner.check.record_trial(batch.jobs, [None] * len(batch.jobs))
            else:
                self.outcomes.fail([j for j in batch.jobs if not j.done and j.rows], "internal",
                                   f"unexpected {type(exc).__name__}: {exc}")  # fmt: skip
        finally:
            self.endpoint.probe_done(batch)

    async def call(self, request: Request, jobs: Sequence[Job]) -> Completion:
        def final(err: CallError) -> bool:
            return err.fatal or self.endpoint.fatal is not None or self.endpoint.rejection_of(err, request) is not None

        return await send_with_retries(
            request, self.attempt, policy=self.policy, sleep=self.sleep, budget=self.budget,
            report=self.report, rows=sum(len(j.rows) for j in jobs), final=final,
        )  # fmt: skip

    async def attempt(self, request: Request) -> Completion:
        """One attempt through the limiter. The slot settles by the outcome: the usage on
        a reply; on an error answer (4xx but 429, 5xx) a refund; a 429 keeps its tokens and
        its place, so the retry does not start with the last waiter and earn the next 429,
        and pauses every sharer by its retry-after."""
        assert self.limiter is not None
        async with self.limiter.reserve(request.reserve_tokens, fallback_pause=lambda: self.policy.wait(0, {})) as slot:
            if self.endpoint.fatal is not None:  # it came while this request waited for its slot
                slot.cancel()
                raise self.endpoint.fatal
            self.report.requests += 1
            try:
                done = await self.client.complete(
                    request.messages, model=self.opts.model or "", params=request.params,
                    response_format=request.response_format,
                )  # fmt: skip
            except CallError as err:
                self.report.rate_limited += err.kind == "rate_limit"
                self.endpoint.attempted(err)
                raise
            self.endpoint.attempted(None)
            slot.settle((done.prompt_tokens or 0) + (done.completion_tokens or 0) or None, headers=done.headers)
        return done

    async def send(self, batch: Batch) -> None:
        jobs = batch.jobs
        sent = self.planner.canaries.place(jobs, batch.canaries)
        request = self.builder.build(sent)
        assert self.limiter is not None
        if not self.limiter.fits(request.tokens) or (
            len(sent) > 1 and request.tokens > self.planner.max_batch_tokens * 2
        ):
            return self.too_large(batch, f"the request needs ~{request.tokens} tokens, more than the "
                                         f"TPM limit ({self.limiter.tpm:.0f}); shorten this row or raise tpm=")  # fmt: skip
        try:
            done = await self.call(request, jobs)
        except CallError as err:
            return self.handle_error(err, batch, request)
        self.endpoint.confirm(request)
        with self.outcomes.one_reply():  # the reply's rows reach the cache's log in one write
            self.accept(jobs, sent, done, ahead=batch.size if batch.kind == "ahead" else 0)

    def too_large(self, batch: Batch, message: str, kind: str = "too_large", status: int | None = None) -> None:
        if len(batch.jobs) > 1:
            self.planner.split(batch.jobs, len(batch.jobs) // 2)
        elif batch.canaries:
            batch.jobs[0].no_canaries = True
            self.planner.resend.append(batch.jobs[0])
        else:
            self.outcomes.fail(batch.jobs, kind, message, status)

    def handle_error(self, err: CallError, batch: Batch, request: Request) -> None:
        """Deal with the final error of a request."""
        rejected = self.endpoint.rejection_of(err, request)
        stopped = self.endpoint.fatal
        if stopped is not None and rejected is None and not err.fatal:  # stopped while this one failed
            return self.outcomes.fail(batch.jobs, stopped.kind, stopped.message, stopped.status)
        if rejected is not None and rejected.action != "too_large":
            if self.endpoint.adapt(rejected, err, request):
                batch.rejected = True
                for job in batch.jobs:
                    job.resends += 1
                tired = [j for j in batch.jobs if j.resends > MAX_RESENDS]
                self.outcomes.fail(tired, err.kind, f"{err.message} (rejected again after each change)", err.status)
                self.planner.split([j for j in batch.jobs if j not in tired], len(batch.jobs))
                return
            fatal = self.endpoint.fatal or err
            return self.outcomes.fail(batch.jobs, fatal.kind, fatal.message, fatal.status)
        if err.fatal:
            self.endpoint.fatal = self.endpoint.fatal or err
            return self.outcomes.fail(batch.jobs, err.kind, err.message, err.status)
        if err.kind == "too_large" or rejected is not None:
            return self.too_large(batch, err.message, status=err.status)
        if err.kind == "bad_request" and len(batch.jobs) > 1:  # one row may be why (a content filter)
            return self.planner.split(batch.jobs, len(batch.jobs) // 2)
        self.outcomes.fail(batch.jobs, err.kind, err.message, err.status)

    # ---- answers ----------------------------------------------------------------------
    def accept(self, jobs: list[Job], sent: list[Job], done: Completion, ahead: int = 0) -> None:
        """Take the answers of a reply; ``sent`` is ``jobs`` plus any canaries, in order;
        ``ahead``: packed at that size before the packing check's verdict (:func:`~._trials.hold`)."""
        self.report.latencies.append(done.latency)
        prompt, completion = done.prompt_tokens or 0, done.completion_tokens or 0
        cost = self.budget.spend(prompt, completion)
        self.report.add_usage(prompt, completion, cost)
        self.outcomes.show_progress()
        n = len(sent)
        prompts, completions = split_tokens(prompt, n), split_tokens(completion, n)
        row_cost = None if cost is None else cost / n
        truncated = done.finish_reason == "length"
        if n == 1:
            answer, problem = read_single(done.content, self.builder.schema)
            usage = (prompt, completion, cost, done.request_id)
            if truncated:
                self.outcomes.fail(jobs, "truncated", "answer cut off at max_tokens (finish_reason=length); "
                                   "raise params['max_tokens']", usage=usage)  # fmt: skip
                self.cut_off += 1
                if self.cut_off >= SYSTEMIC_INVALID and not self.report.answered_rows:
                    self.endpoint.stop(CallError("truncated", "", False), (
                        f"the first {self.cut_off} answers were all cut off at max_tokens; raise "
                        "params['max_tokens'] (it is per answer)"))  # fmt: skip
            elif answer is None:
                if problem is not None:
                    jobs[0].invalid_alone += 1
                    self.count_valid(0, 1, problem)
                if problem is not None and jobs[0].invalid_alone >= ALONE_TRIES:
                    self.outcomes.fail(jobs, "validation", f"no valid answer after {ALONE_TRIES} tries alone ({problem})")
                else:
                    self.retry_rows(jobs, {0: problem or "empty answer"}, 1, invalid={0} if problem else set())
            else:
                self.count_valid(1, 0)
                self.outcomes.finish(jobs[0], answer, usage)
                self.planner.canaries.learn(jobs[0], answer)
            return
        parsed = self.parse_packed(done, n)
        self.report.canary_rows += n - len(jobs)
        # A reply that failed as a whole (cut off, not JSON) says nothing of its canaries.
        if parsed.answers and self.planner.canaries.wrong(sent, parsed.answers):
            # A canary's packed answer is not its one-row one: shifted or guessed, none is trusted.
            self.report.canary_failures += 1
            self.planner.sizer.observe(n, len(jobs), len(jobs))
            self.retry_rows(jobs, dict.fromkeys(range(len(jobs)), "a canary row's answer was wrong"), len(jobs))
            return
        position = {id(job): i for i, job in enumerate(sent)}
        failed: dict[int, str] = {}
        invalid: set[int] = set()
        for j, job in enumerate(jobs):
            i = position[id(job)]
            if i in parsed.answers:
                usage = (prompts[i], completions[i], row_cost, done.request_id)
                if ahead:
                    hold(self, job, parsed.answers[i], usage, ahead)
                else:
                    self.outcomes.finish(job, parsed.answers[i], usage)
            else:
                failed[j] = parsed.failed.get(i, "id missing from the reply")
                invalid.update([j] if i in parsed.invalid else [])
        self.planner.sizer.observe(n, len(parsed.failed), len(jobs))
        problem = next((parsed.failed[i] for i in parsed.invalid), "")
        self.count_valid(len(parsed.answers), len(parsed.invalid) if self.rounds else 0, problem)
        if failed:
            self.retry_rows(jobs, failed, len(jobs), invalid)

    def count_valid(self, valid: int, invalid: int, problem: str = "") -> None:
        """Stop the run once :data:`SYSTEMIC_INVALID` one-row answers failed the schema, none passed."""
        if self.builder.schema is None:
            return
        self.valid, self.invalid = self.valid + valid, self.invalid + invalid
        if not self.valid and self.invalid >= SYSTEMIC_INVALID:
            self.endpoint.stop(CallError("validation", problem, False), (
                f"none of the first {self.invalid} {'answers' if self.rounds else 'rows asked alone'} matched the "
                f"schema{'' if self.rounds else ', nor any packed answer'} (last: {problem}); the model or the "
                "endpoint does not follow it. Check the schema and the template, or try another model"))  # fmt: skip

    def parse_packed(self, done: Completion, n: int) -> Any:  # its length teaches what later requests reserve
        return self.builder.parse(done.content, n, truncated=done.finish_reason == "length", used=done.completion_tokens)

    def retry_rows(self, jobs: list[Job], failed: Mapping[int, str], n: int, invalid: set[int] | None = None) -> None:
        """Ask the ``failed`` rows again (answer missing, or in ``invalid`` not valid) in smaller batches,
        alone if failing a schema no answer passed yet (live); out of tries, a row fails."""
        again: list[Job] = []
        alone: list[Job] = []
        schema_unproven = self.builder.schema is not None and not self.valid and not self.rounds
        for i, reason in failed.items():
            job = jobs[i]
            job.resends += 1
            if job.resends > MAX_RESENDS:
                kind = "validation" if invalid and i in invalid else "invalid_answer"
                self.outcomes.fail([job], kind, f"no valid answer after {job.resends} tries ({reason})")
            else:
                (alone if schema_unproven and invalid and i in invalid else again).append(job)
        self.report.resent_rows += sum(len(j.rows) for j in (*again, *alone))
        self.planner.split(again, max(1, n // 2))
        self.planner.split(alone, 1)

def new_run(
    prepared: Prepared, template: Template, opts: Options, *, client: Any, limiter: RateLimiter | None,
    endpoint: Endpoint, progress: Any = None, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    policy: RetryPolicy | None = None, learns: bool = True, packing: _check_plan.PackingPlan | None = None,
) -> Run:  # fmt: skip
    """A run's wiring (or an estimate's, which plans the same batches and sends none); ``packing``
    replaces the plan a live run makes (the Batch API's, :mod:`._batch_run`)."""
    model, report = opts.model or "", prepared.report
    state = EndpointState(endpoint.memory_key, resolve_cache_dir(opts.cache), dict(opts.params or {}),
                          opts.response_format, learns=learns, structured=opts.schema is not None)  # fmt: skip
    builder = RequestBuilder(template, opts.system, get_tokenizer(model), state, opts.schema)
    cap = batch_cap(opts.batch_size, template.fields)
    task_key = call_prefix(model=model, template=template.text, system=opts.system, params=opts.params,
                           output=output_spec(opts.schema)).hex()  # fmt: skip
    remembered = (state.known.get("verdicts") or {}).get(task_key)  # a packing verdict an earlier run stored
    packing = packing or _check_plan.plan(
        cap=cap, batch_size=opts.batch_size, canaries=opts.canaries, rows_to_send=len(prepared.todo),
        verdict=remembered,
        why_one="as batch_size=1 says" if opts.batch_size == 1 else "the template has a field 'id'",
        economy=economy_for(prepared.todo, builder, opts), style=LINES if opts.response_format == LINES else "json",
    )  # fmt: skip
    builder.use_style(packing.style, remembered=remembered)
    state.format_confirmed = state.format_confirmed or packing.style == LINES  # no response_format to refuse
    report.packing_reason = packing.reason
    if packing.warn:
        warn_user(f"llmframe: {packing.reason}.")
    planner = Planner(prepared.todo, cap=packing.cap, max_batch_tokens=opts.max_batch_tokens or AUTO_BATCH_TOKENS,
                      builder=builder, endpoint=state, canaries=packing.canaries, check=packing.check)  # fmt: skip
    check = packing.check
    outcomes = Outcomes(
        report, prepared.answers, prepared.cache, model=model, template_hash=template.hash, progress=progress,
        on_done=None if check is None else (lambda job, a: check.settle_reference(job, a) if job.reference else None),
    )  # fmt: skip
    the_run = Run(opts=opts, client=client, limiter=limiter, report=report, endpoint=state, builder=builder,
                  planner=planner, outcomes=outcomes, budget=Budget(opts.max_cost_usd, price_for(model, opts.prices)),
                  sleep=sleep, policy=policy or RetryPolicy(opts.max_attempts), task_key=task_key)  # fmt: skip
    the_run.check, planner.concurrency = check, opts.max_concurrency  # concurrency: a wave ahead of the verdict
    planner.on_verdict = lambda check: on_verdict(the_run, check, packing.fixed_size, task_key, packing.note)
    prepared.todo.on_changed = lambda job: outcomes.fail([job], "changed", CHANGED)
    return the_run


async def run(
    columns: Mapping[str, Sequence[str | None]], n_rows: int, template: Template, opts: Options, *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, limiter: RateLimiter | None = None,
    policy: RetryPolicy | None = None,
) -> RunResult:  # fmt: skip
    """Answer every row; see the module docstring for the path one call takes."""
    start = time.monotonic()
    prepared = prepare(columns, n_rows, template, opts, flush_seconds=FLUSH_SECONDS, claim=True)
    report, cache, todo = prepared.report, prepared.cache, prepared.todo
    progress = progress_bar(n_rows, opts.progress)
    progress.update(report.cached_rows + report.null_rows)
    endpoint = Endpoint.of(model=opts.model or "", base_url=opts.base_url, api_key=opts.api_key, client=opts.client)
    client: ChatClient | None = None
    state: Run | None = None
    if todo:  # only a run with rows to send pays for an HTTP client (SSL context) and a tokenizer
        try:  # no key for OpenAI's endpoint, an unusable limiter folder: nothing sent, nothing left open
            client = ChatClient(client=opts.client, base_url=opts.base_url, api_key=opts.api_key,
                                timeout=opts.timeout, max_connections=max(100, opts.max_concurrency))  # fmt: skip
            wire = functools.partial(new_run, prepared, template, opts, client=client, progress=progress, sleep=sleep,
                policy=policy, limiter=limiter or endpoint.limiter(opts.rpm, opts.tpm, opts.limiter), endpoint=endpoint)  # fmt: skip
            state = await shared_check(wire(), wire, resolve_cache_dir(opts.cache), sleep)  # one check per task
        except BaseException:
            prepared.close()
            progress.close()
            if client is not None:
                await client.aclose()
            raise
    flusher = None if cache is None or state is None else every(FLUSH_SECONDS / 2, cache.flush_if_due, sleep)
    try:
        if state is not None:
            with fewer_collections():  # what the process held before is not walked again per collection
                await drain(state.planner.take, state.process, opts.max_concurrency, prepared.claims(state, sleep))  # _claims_run
            fatal = state.endpoint.fatal
            if fatal is not None:
                # A failure that hits every row stopped the run: rows never sent fail with
                # the same error, so that every row has an answer or a RowError.
                rows = prepared.unfinished_rows(report.errors)
                report.errors.extend(RowError(r, fatal.kind, fatal.message, fatal.status) for r in rows)
                progress.update(len(rows))
    except BaseException:
        # Interrupted (Ctrl-C, cancellation): unfinished rows are reported, finished ones cached below.
        rows = prepared.unfinished_rows(report.errors)
        report.errors.extend(RowError(r, "cancelled", "the run was interrupted") for r in rows)
        raise
    finally:
        if state is not None and state.on_checked is not None:
            state.on_checked(None)  # a check that ended without a verdict lets the next run check
        await stopped(flusher)
        if cache is not None:
            cache.close()
        progress.close()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
        if state is not None:
            report.batch_size_final = state.planner.cap
            report.response_format = LINES if state.builder.style == LINES else state.endpoint.response_format
            report.endpoint_notes = list(state.endpoint.notes)
            state.release()
        else:
            report.batch_size_final = batch_cap(opts.batch_size, template.fields)
        report.finish(time.monotonic() - start)
        set_last_report(report)

    return result_of(prepared, None if state is None else state.endpoint.fatal, opts)
