"""The engine: the one orchestrator of a run.

``run()`` takes the frame as columns and walks the path of DESIGN.md:

1. template  render each row's field values (the template was checked already)
2. keys      one cache key per row; rows with equal keys are asked once
3. cache     look every key up at once; only misses go on
4. plan      workers take the next batch when they are free: resent rows first,
             then new rows up to the item cap and the token budget
5. limiter   reserve a request and the estimated tokens before sending
6. client    one attempt; retries happen here, so each passes the limiter
7. parse     match answers by id; resend only the rows that did not validate
8. cache     append finished rows as they complete
9. report    counters, tokens, cost, latency, failures

Batches are formed lazily rather than planned up front, so the batch size can
shrink mid-run when packed answers keep failing validation, and resent rows are
served before new ones (they are the oldest work).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import numpy as np

from . import _packing
from ._cache import AnswerCache, CacheRecord, resolve_cache_dir
from ._canaries import Canaries
from ._capabilities import MEMORY, EndpointMemory, Rejection, next_format, rejection
from ._check import PackingCheck, Verdict
from ._client import CallError, ChatClient, Completion
from ._config import Options
from ._errors import AuthenticationError, EndpointError, RowError, RunError
from ._jobs import Batch, Job
from ._keys import call_prefix, row_digests
from ._limiter import RateLimiter, shared_limiter
from ._parse import parse_packed, parse_single
from ._pricing import Price, price_for
from ._report import RunReport, set_last_report
from ._retry import retry_delay
from ._template import Template
from ._tokens import Tokenizer, count_messages, get_tokenizer
from ._warn import warn_user

__all__ = ["RunResult", "run"]

#: Items per request when ``batch_size=None``. Published results show answer
#: quality slipping past a few dozen items per prompt; 20 keeps RPM-bound runs
#: ~20x faster than one row per request while staying well short of that.
AUTO_BATCH_ITEMS = 20
#: Input plus expected output tokens per packed request when ``max_batch_tokens`` is not given.
AUTO_BATCH_TOKENS = 4000
#: Expected answer length when the user sets no ``max_tokens``: used to reserve
#: tokens and to size batches, then corrected from the response's usage.
DEFAULT_ANSWER_TOKENS = 16
#: Extra output tokens per packed row: the id key, quotes, colon and comma.
PACKED_TOKENS_PER_ROW = 5
#: How many times one row may be resent after its packed answer failed validation.
MAX_RESENDS = 4
#: Batch-size adaptation: the batch size halves when the moving average (weight
#: SHRINK_ALPHA per reply) of the share of rows a packed reply got wrong passes SHRINK_ABOVE.
SHRINK_ALPHA = 0.2
SHRINK_ABOVE = 0.3
#: ... unless batches of half the size or less, over at least SIZE_EVIDENCE_ROWS rows,
#: fail at SIZE_INDEPENDENT times the large batches' rate or more.
SIZE_EVIDENCE_ROWS = 40
SIZE_INDEPENDENT = 0.7
#: ... but always when more than this share of rows at the current size failed.
ALWAYS_SHRINK_ABOVE = 0.8
#: The packing check of ``batch_size=None`` (see ``_check``): rows answered alone first,
#: the packed sizes tried on them, and the share of them that must agree.
AUTO_CHECK_ROWS = 20
AUTO_CHECK_SIZES = (5,)  # tried after the cap (AUTO_BATCH_ITEMS), largest first
AUTO_MIN_AGREEMENT = 0.95
#: Runs with at most this many rows to send go one row per request: the check would
#: cost as much as packing saves.
SMALL_FRAME_ROWS = 2 * AUTO_CHECK_ROWS
#: With ``canaries=None`` while packing, one canary rides on every AUTO_CANARY_EVERY-th
#: packed request: about 1% more tokens at 20 rows per request.
AUTO_CANARY_EVERY = 4
#: Rows answered alone to seed canaries when a stored verdict skips the check.
REMEMBERED_WARMUP_ROWS = 4
#: Seconds between cache flushes while a run goes: a crash loses at most this much.
FLUSH_SECONDS = 2.0

_MAX_TOKEN_KEYS = ("max_completion_tokens", "max_tokens")


def max_tokens_param(params: Mapping[str, Any] | None) -> str | None:
    """Which of ``max_completion_tokens`` / ``max_tokens`` the user set, if any."""
    return next((k for k in _MAX_TOKEN_KEYS if params and params.get(k) is not None), None)


@dataclass
class RunResult:
    answers: list[str | None]
    errors: list[RowError]
    report: RunReport


@dataclass
class _Request:
    """One request as it will be sent, with its token estimate."""

    messages: list[dict[str, str]]
    params: dict[str, Any]
    response_format: Any
    mode: str  # the structured-output mode of a packed request ("text" for one row)
    input_tokens: int  # exact (tiktoken over the messages as sent)
    output_tokens: int  # expected: max_tokens if set, else the running answer-length guess

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class _Run:
    """The state of one run. Lives on one event loop; the limiter it uses is shared."""

    template: Template
    opts: Options
    client: ChatClient
    limiter: RateLimiter
    tokenizer: Tokenizer
    cache: AnswerCache | None
    price: Price | None
    report: RunReport
    answers: list[str | None]
    sleep: Callable[[float], Awaitable[None]]
    progress: Any
    pending: deque[Job] = field(default_factory=deque)
    resend: deque[Job] = field(default_factory=deque)
    cap: int = 1
    max_batch_tokens: int = AUTO_BATCH_TOKENS
    answer_tokens: int = DEFAULT_ANSWER_TOKENS  # the user's max_tokens when given
    max_key: str | None = None  # which of max_completion_tokens / max_tokens is sent
    params: dict[str, Any] = field(default_factory=dict)  # as sent: renamed and dropped ones applied
    response_format: str = "json_schema"
    format_confirmed: bool = False  # a packed reply came back in this mode
    # Until the endpoint has answered a request with these parameter names once, and
    # until a packed reply came back in the current format, one request goes alone:
    # a rejection then costs one request, not one per worker.
    endpoint_confirmed: bool = False
    probe_in_flight: bool = False
    failing: float = 0.0  # moving average of the share of rows a packed reply got wrong
    # Rows sent and rows failed per packed batch size, to tell whether smaller batches help.
    by_size: dict[int, list[int]] = field(default_factory=dict)
    fatal: CallError | None = None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    in_flight: int = 0
    system_tokens: int = 0
    endpoint: str = ""  # EndpointMemory key: base_url and model
    task_key: str = ""  # the packing verdict's key: endpoint, template, system, params
    memory_dir: Path | None = None
    canaries: Canaries = field(default_factory=lambda: Canaries(0))
    check: PackingCheck | None = None
    remembered_size: int | None = None  # a stored verdict's batch size, applied after warm-up
    learns: bool = True  # False for estimates: what they assume is not what an endpoint said

    # ---- planning -------------------------------------------------------------------
    def item_tokens(self, job: Job) -> int:
        if job.item_tokens < 0:
            job.item_tokens = self.tokenizer.count(_packing.item_line(0, job.values)) + 1
        return job.item_tokens

    def take(self) -> Batch | None:
        """The next batch to send, or ``None`` when there is none now.

        Resent rows go first, topped up with new rows: resending one dropped row
        alone would pay the whole task (system prompt, template) again for one
        answer. A resent row goes in a batch at most half the size of the one it
        failed in. Packing waits while the packing check or the first request in
        an unconfirmed structured-output mode is out.
        """
        if self.fatal is not None:
            return None
        check = self.check
        if check is not None and check.verdict is None:
            if self.probe_in_flight:
                return None
            if self.resend:  # while checking, every request is one row
                return self.gated(Batch([self.resend.popleft()]))
            if check.wants_reference() and self.pending:
                job = self.pending.popleft()
                check.add_reference(job)
                return self.gated(Batch([job], kind="reference"))
            if check.busy:
                return None
            if not self.pending:
                check.verdict = Verdict(1, "no rows left to pack after the sampled ones", {})
            else:
                trial = check.next_trial(self.rows_that_fit())
                if trial is not None:
                    return self.gated(Batch(trial, kind="trial"))
                if check.busy:
                    return None
        if check is not None and check.verdict is not None:
            self.apply_verdict()
        if self.probe_in_flight:
            return None  # the first reply (of the endpoint, or of a format) is not back yet
        jobs: list[Job] = []
        size = self.cap
        while self.resend and len(jobs) < size:
            job = self.resend[0]
            limit = job.max_batch or size
            if jobs and limit < len(jobs) + 1:
                break
            jobs.append(self.resend.popleft())
            size = min(size, limit)
        if not jobs:
            if not self.pending:
                return None
            jobs.append(self.pending.popleft())
        if size > 1:
            per_row_out = self.answer_tokens + PACKED_TOKENS_PER_ROW
            budget = self.max_batch_tokens - self.system_tokens
            used = sum(self.item_tokens(j) + per_row_out for j in jobs)
            while self.pending and len(jobs) < size:
                cost = self.item_tokens(self.pending[0]) + per_row_out
                if used + cost > budget:
                    break
                used += cost
                jobs.append(self.pending.popleft())
        canaries = [] if any(j.no_canaries for j in jobs) else self.canaries.pick(jobs)
        return self.gated(Batch(jobs, canaries=canaries))

    def gated(self, batch: Batch) -> Batch:
        if not self.endpoint_confirmed or (batch.packed and not self.format_confirmed):
            batch.probe = self.probe_in_flight = True
        return batch

    @property
    def signature(self) -> str:
        """The parameter names requests carry: what a new endpoint may reject."""
        return ",".join(sorted(self.params))

    def rows_that_fit(self) -> int:
        """How many of the sampled rows, on average, one packed request carries under the
        token budget."""
        assert self.check is not None
        jobs = self.check.answered_jobs()
        if not jobs:
            return self.cap
        per_row = self.answer_tokens + PACKED_TOKENS_PER_ROW
        avg = sum(self.item_tokens(j) for j in jobs) / len(jobs) + per_row
        return max(1, int((self.max_batch_tokens - self.system_tokens) // avg))

    def apply_verdict(self) -> None:
        """The check is decided: set the batch size, say why, remember it for next time."""
        assert self.check is not None and self.check.verdict is not None
        verdict = self.check.verdict
        self.check = None
        size = self.remembered_size if self.remembered_size is not None else verdict.batch_size
        self.cap = max(1, min(self.cap, size))
        self.report.packing_agreement = dict(verdict.agreement)
        if self.remembered_size is None:
            self.report.packing_reason = verdict.reason
            if verdict.agreement:
                self.learned(
                    verdicts={self.task_key: {"batch_size": verdict.batch_size, "reason": verdict.reason}}
                )
        if self.cap == 1 and verdict.agreement:
            warn_user(f"llmframe: {verdict.reason}.")

    # ---- one request ----------------------------------------------------------------
    def request_for(self, jobs: list[Job]) -> _Request:
        params = dict(self.params)
        if len(jobs) == 1:
            prompt = self.template.render(jobs[0].values)
            messages = _packing.single_messages(prompt, self.opts.system)
            tokens = count_messages(messages, self.tokenizer)
            return _Request(messages, params, None, "text", tokens, self.answer_tokens)
        messages = _packing.packed_messages(
            self.template.text, self.opts.system, [j.values for j in jobs]
        )
        n = len(jobs)
        out = n * (self.answer_tokens + PACKED_TOKENS_PER_ROW) + 8
        if self.max_key is not None:
            # The user's max_tokens is per answer; a packed reply holds n of them.
            params[self.max_key] = out
        fmt: Any = None
        if self.response_format == "json_schema":
            fmt = _packing.answers_schema(n)
        elif self.response_format == "json_object":
            fmt = {"type": "json_object"}
        tokens = count_messages(messages, self.tokenizer)
        return _Request(messages, params, fmt, self.response_format, tokens, out)

    def estimate_cost(self, request: _Request) -> float:
        if self.price is None:
            return 0.0
        return self.price.cost(request.input_tokens, request.output_tokens)

    async def process(self, batch: Batch) -> None:
        try:
            if batch.kind == "trial":
                await self.send_trial(batch)
            else:
                await self.send(batch)
        except Exception as exc:  # a bug must cost its rows, never the run
            unfinished = [j for j in batch.jobs if not j.done and j.rows]
            self.fail(unfinished, "internal", f"unexpected {type(exc).__name__}: {exc}")
            if batch.kind == "trial" and self.check is not None:
                self.check.record_trial(batch.jobs, [None] * len(batch.jobs))
        finally:
            if batch.probe:
                self.probe_in_flight = False
                if not batch.rejected and self.fatal is None:
                    # Answered, or failed for another reason than a rejection: what the
                    # endpoint said is about the rows, so the others may go.
                    self.endpoint_confirmed = True

    async def call(self, request: _Request, jobs: Sequence[Job]) -> Completion:
        """One request with its retries, each passing the limiter and the budget.

        Raises the final :class:`CallError`: not retryable, a rejection of what the
        request carried (never retried: the caller changes the request), the budget,
        or the last of ``max_attempts``.
        """
        attempt = 0
        while True:
            if self.fatal is not None:
                raise self.fatal
            est_cost = self.estimate_cost(request)
            limit = self.opts.max_cost_usd
            if limit is not None and self.spent_usd + self.reserved_usd + est_cost > limit:
                if attempt == 0:
                    self.report.budget_unsent_rows += sum(len(j.rows) for j in jobs)
                when = "before this row was sent" if attempt == 0 else f"before retry {attempt}"
                raise CallError("budget", f"max_cost_usd={limit} reached (spent ${self.spent_usd:.4f}) {when}", False)
            self.reserved_usd += est_cost
            try:
                return await self.attempt(request)
            except CallError as err:
                if not err.retryable or self.rejection_of(err, request) is not None:
                    raise
                attempt += 1
                if attempt >= self.opts.max_attempts:
                    err.message = f"{err.message} (gave up after {attempt} attempts)"
                    raise
                self.report.retries += 1
                delay = 0.0 if err.kind == "rate_limit" else retry_delay(attempt - 1, err.headers)
                await self.sleep(delay)
            finally:
                self.reserved_usd -= est_cost

    async def attempt(self, request: _Request) -> Completion:
        est = request.tokens
        reservation = await self.limiter.acquire(est)
        if self.fatal is not None:  # it came while this request waited for its slot
            self.limiter.cancel(reservation)
            raise self.fatal
        try:
            self.report.requests += 1
            done = await self.client.complete(
                request.messages,
                model=self.opts.model or "",
                params=request.params,
                response_format=request.response_format,
            )
        except CallError as err:
            # The attempt keeps its place in the schedule, even on a 429: given back, its
            # slot would let the retry start together with the last waiter and earn the
            # next 429 (benchmarks/rate_limits.py: 17 -> 4 429s in 1,000 requests).
            # Its tokens are refunded only when the server answered with an error
            # (4xx other than 429, 5xx): a timeout or an unreadable 200 may have been
            # counted, and a 429 keeps them so the retry does not jump the queue.
            refund = err.status is not None and err.status != 429
            self.limiter.settle(reservation, 0 if refund else est)
            if err.kind == "rate_limit":
                self.report.rate_limited += 1
                self.limiter.pause(
                    err.retry_after if err.retry_after is not None else retry_delay(0, {})
                )
            if err.headers:
                self.limiter.observe(err.headers)
            raise
        except BaseException:
            self.limiter.cancel(reservation)
            raise
        used = (done.prompt_tokens or 0) + (done.completion_tokens or 0)
        try:  # learn the limits first, so the refund is paced by them
            self.limiter.observe(done.headers)
        finally:
            self.limiter.settle(reservation, used if used else est)
        return done

    async def send(self, batch: Batch) -> None:
        jobs = batch.jobs
        sent = self.canaries.place(jobs, batch.canaries)
        request = self.request_for(sent)
        est = request.tokens
        if not self.limiter.fits(est) or (len(sent) > 1 and est > self.max_batch_tokens * 2):
            if len(jobs) > 1:
                self.split(jobs, len(jobs) // 2)
                return
            if batch.canaries:
                jobs[0].no_canaries = True
                self.resend.append(jobs[0])
                return
            self.fail(
                jobs,
                "too_large",
                f"the request needs ~{est} tokens, more than the TPM limit "
                f"({self.limiter.tpm:.0f}); shorten this row or raise tpm=",
            )
            return
        try:
            done = await self.call(request, jobs)
        except CallError as err:
            self.handle_error(err, batch, request)
            return
        self.confirm_endpoint()
        if len(sent) > 1:
            self.confirm_format(request.mode)
        self.accept(jobs, sent, done)

    async def send_trial(self, batch: Batch) -> None:
        """A packing-check request: the answers are compared, never written out."""
        assert self.check is not None
        check = self.check
        request = self.request_for(batch.jobs)
        n = len(batch.jobs)
        try:
            done = await self.call(request, [])
        except CallError as err:
            rejected = self.rejection_of(err, request)
            if rejected is not None and self.adapt(rejected, err, request):
                batch.rejected = True
                check.requeue(batch.jobs)
                return
            if err.fatal and self.fatal is None:
                self.fatal = err
            check.record_trial(batch.jobs, [None] * n)
            return
        self.confirm_endpoint()
        self.confirm_format(request.mode)
        prompt, completion = done.prompt_tokens or 0, done.completion_tokens or 0
        cost = None if self.price is None else self.price.cost(prompt, completion)
        self.report.add_usage(prompt, completion, cost)
        self.report.check_requests += 1
        self.report.check_tokens += prompt + completion
        if cost is not None:
            self.spent_usd += cost
        parsed = parse_packed(done.content, n, truncated=done.finish_reason == "length")
        check.record_trial(batch.jobs, [parsed.answers.get(i) for i in range(n)])

    # ---- what the endpoint accepts ----------------------------------------------------
    def rejection_of(self, err: CallError, request: _Request) -> Rejection | None:
        if err.fatal or err.kind in ("rate_limit", "timeout", "connection", "budget"):
            return None
        mode = request.mode if request.response_format is not None else None
        return rejection(err.status, err.message, err.param, request.params, response_format=mode)

    def adapt(self, rejected: Rejection, err: CallError, request: _Request) -> bool:
        """Change what every later request sends; True when the request should go again.

        Requests in flight with the old settings come back rejected too: they find
        the change made already and are simply sent again.
        """
        name = rejected.param
        status = f"HTTP {err.status}" if err.status else "an error"
        if rejected.action == "step_down":
            if self.opts.response_format != "auto":
                self.stop(err, f"the endpoint rejects response_format={request.mode!r} ({err.message}); "
                               "use response_format='auto' to let llmframe find one it accepts")  # fmt: skip
                return False
            if self.response_format == request.mode:
                self.response_format = next_format(request.mode)
                self.format_confirmed = False
                self.report.endpoint_notes.append(
                    f"response_format {request.mode!r} rejected ({status}); using {self.response_format!r}"
                )
            return True
        if rejected.action == "rename":
            target = rejected.rename_to or ""
            if name in self.params:
                self.params[target] = self.params.pop(name)
                if self.max_key == name:
                    self.max_key = target
                self.report.endpoint_notes.append(f"{name!r} rejected ({status}); sent as {target!r}")
                self.learned(renames={name: target})
            return True
        if rejected.action == "drop":
            if name in self.params:
                del self.params[name]
                note = f"params[{name!r}] rejected ({status}); dropped for this endpoint"
                self.report.endpoint_notes.append(note)
                warn_user(f"llmframe: the endpoint rejects params[{name!r}]; sending without it")
                self.learned(drops={name: True})
            return True
        if rejected.action == "stop":
            self.stop(err, f"the endpoint rejects params[{name!r}] ({err.message}); remove it from "
                           "params= or change its value. Rows answered so far are cached")  # fmt: skip
        return False

    def stop(self, err: CallError, message: str) -> None:
        if self.fatal is None:
            self.fatal = CallError("endpoint", message, False, err.status, err.code, fatal=True)

    def learned(self, **values: Any) -> None:
        """Remember what the endpoint taught, for later runs (:class:`EndpointMemory`)."""
        if self.learns:
            MEMORY.update(self.endpoint, self.memory_dir, **values)

    def confirm_endpoint(self) -> None:
        if not self.endpoint_confirmed:
            self.endpoint_confirmed = True
            self.learned(answered={self.signature: True})

    def confirm_format(self, mode: str) -> None:
        if mode == self.response_format and not self.format_confirmed:
            self.format_confirmed = True
            if self.opts.response_format == "auto":
                self.learned(response_format=mode)

    def handle_error(self, err: CallError, batch: Batch, request: _Request) -> None:
        """Deal with the final error of a request."""
        jobs = batch.jobs
        rejected = self.rejection_of(err, request)
        if rejected is not None and rejected.action != "too_large":
            if self.adapt(rejected, err, request):
                batch.rejected = True
                for job in jobs:
                    job.max_batch = len(jobs)
                self.resend.extend(jobs)
                return
            fatal = self.fatal or err
            self.fail(jobs, fatal.kind, fatal.message, fatal.status)
            return
        if err.fatal:
            if self.fatal is None:
                self.fatal = err
            self.fail(jobs, err.kind, err.message, err.status)
            return
        too_large = err.kind == "too_large" or rejected is not None
        if too_large and len(jobs) > 1:
            self.split(jobs, len(jobs) // 2)
            return
        if too_large and batch.canaries:
            jobs[0].no_canaries = True
            self.resend.append(jobs[0])
            return
        self.fail(jobs, "too_large" if too_large else err.kind, err.message, err.status)

    # ---- answers ----------------------------------------------------------------------
    def accept(self, jobs: list[Job], sent: list[Job], done: Completion) -> None:
        """Take the answers of a completed request; ``sent`` is ``jobs`` plus any canaries, in
        the order they were sent."""
        self.report.latencies.append(done.latency)
        prompt = done.prompt_tokens or 0
        completion = done.completion_tokens or 0
        cost = None if self.price is None else self.price.cost(prompt, completion)
        self.report.add_usage(prompt, completion, cost)
        if cost is not None:
            self.spent_usd += cost
        self.show_progress()
        n = len(sent)
        shares = _shares(prompt, n), _shares(completion, n)
        row_cost = None if cost is None else cost / n
        truncated = done.finish_reason == "length"
        if n == 1:
            answer = parse_single(done.content)
            if truncated:
                self.fail(
                    jobs,
                    "truncated",
                    "answer cut off at max_tokens (finish_reason=length); raise params['max_tokens']",
                    record_usage=(shares[0][0], shares[1][0], cost, done.request_id),
                )
            elif answer is None:
                self.retry_rows(jobs, {0: "empty answer"}, 1)
            else:
                self.finish(jobs[0], answer, shares[0][0], shares[1][0], cost, done.request_id)
                self.canaries.learn(jobs[0], answer)
            return
        parsed = parse_packed(done.content, n, truncated=truncated)
        self.report.canary_rows += n - len(jobs)
        if self.canaries.wrong(sent, parsed.answers):
            # A canary's packed answer differs from its one-row answer: this batch's answers
            # may be shifted or guessed, so none of them is trusted.
            self.report.canary_failures += 1
            self.track_failures(n, len(jobs), len(jobs))
            self.retry_rows(jobs, dict.fromkeys(range(len(jobs)), "a canary row's answer was wrong"), len(jobs))
            return
        position = {id(job): i for i, job in enumerate(sent)}
        failed: dict[int, str] = {}
        for j, job in enumerate(jobs):
            i = position[id(job)]
            if i in parsed.answers:
                self.finish(job, parsed.answers[i], shares[0][i], shares[1][i], row_cost, done.request_id)
            else:
                failed[j] = parsed.failed.get(i, "id missing from the reply")
        self.track_failures(n, len(parsed.failed), len(jobs))
        if failed:
            self.retry_rows(jobs, failed, len(jobs))

    def track_failures(self, n: int, failed: int, rows: int) -> None:
        """Shrink the batch size when packed replies keep failing validation, and smaller
        batches do measurably better.

        The signal is a moving average of the share of rows each packed reply got wrong,
        not a streak of imperfect replies: one dropped row in twenty costs a one-row
        resend, while halving the batch size would double the requests of the rest of the
        run. And shrinking only pays when failures depend on size (a model that loses
        track in long batches); resent rows go in half-size batches, so the failure rate
        there is measured for free, and when it is as bad as at full size (an endpoint
        that fails at random) the batch size stays.
        """
        sent_failed = self.by_size.setdefault(n, [0, 0])
        sent_failed[0] += n
        sent_failed[1] += failed
        if rows > self.cap:
            return  # sent before the last shrink: that size was already judged
        self.failing = (1 - SHRINK_ALPHA) * self.failing + SHRINK_ALPHA * failed / n
        if self.failing <= SHRINK_ABOVE or self.cap <= 1:
            return
        if not self.size_matters():
            self.failing = 0.0  # failures do not depend on size: shrinking would not help
            return
        self.cap = max(1, self.cap // 2)
        self.failing = 0.0

    def size_matters(self) -> bool:
        """Whether smaller batches fail less, as far as this run has seen.

        Nearly every batch failing says yes (a model that loses track past some
        size fails every batch above it). Otherwise the rows measured at half the
        current size or less (resends), or at the size before the last shrink, must
        fail measurably less often than at the current size.
        """
        def rate(keep: Callable[[int], bool]) -> tuple[int, float]:
            sent = sum(v[0] for size, v in self.by_size.items() if keep(size))
            failed = sum(v[1] for size, v in self.by_size.items() if keep(size))
            return sent, failed / sent if sent else 0.0

        cap = self.cap
        current_sent, current = rate(lambda size: cap // 2 < size <= cap)
        larger_sent, larger = rate(lambda size: size > cap)
        if larger_sent and current_sent < SIZE_EVIDENCE_ROWS:
            return False  # just shrank: judge the new size on enough rows first
        if current > ALWAYS_SHRINK_ABOVE:
            return True
        small_sent, small = rate(lambda size: size <= cap // 2)
        if small_sent >= SIZE_EVIDENCE_ROWS and small >= SIZE_INDEPENDENT * current:
            return False
        if larger_sent >= SIZE_EVIDENCE_ROWS:
            return current < SIZE_INDEPENDENT * larger  # the last shrink did help
        return True  # the first shrink, no evidence either way: the safe side for quality

    def show_progress(self) -> None:
        cost = "?" if self.report.cost_usd is None else f"${self.report.cost_usd:.4f}"
        self.progress.set_postfix_str(
            f"cached {self.report.cached_rows}, tok {self.report.prompt_tokens + self.report.completion_tokens:,}, {cost}",
            refresh=False,
        )

    def retry_rows(self, jobs: list[Job], failed: Mapping[int, str], n: int) -> None:
        again: list[Job] = []
        for i, reason in failed.items():
            job = jobs[i]
            job.resends += 1
            if job.resends > MAX_RESENDS:
                self.fail([job], "invalid_answer", f"no valid answer after {job.resends} tries ({reason})")
            else:
                again.append(job)
        if again:
            self.report.resent_rows += sum(len(j.rows) for j in again)
            self.split(again, max(1, n // 2))

    def split(self, jobs: list[Job], size: int) -> None:
        """Queue ``jobs`` to be sent again in batches of at most ``size``."""
        for job in jobs:
            job.max_batch = max(1, size)
        self.resend.extend(jobs)

    def finish(
        self,
        job: Job,
        answer: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost: float | None,
        request_id: str | None,
    ) -> None:
        job.done = True
        for row in job.rows:
            self.answers[row] = answer
        if job.reference and self.check is not None:
            self.check.settle_reference(job, answer)
        self.report.answered_rows += len(job.rows)
        self.progress.update(len(job.rows))
        if self.cache is not None:
            self.cache.add(
                [
                    CacheRecord(
                        key=job.key,
                        model=self.opts.model or "",
                        template_hash=self.template.hash,
                        answer=answer,
                        status="ok",
                        error=None,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        cost_usd=cost,
                        created=datetime.now(timezone.utc),
                        request_id=request_id,
                    )
                ]
            )

    def fail(
        self,
        jobs: Sequence[Job],
        kind: str,
        message: str,
        status: int | None = None,
        *,
        record_usage: tuple[int, int, float | None, str | None] | None = None,
    ) -> None:
        records = []
        for job in jobs:
            job.done = True
            if job.reference and self.check is not None:
                self.check.settle_reference(job, None)
            for row in job.rows:
                self.report.errors.append(RowError(row, kind, message, status))
            self.progress.update(len(job.rows))
            # Budget stops and cancellations say nothing about the row: do not store them.
            if self.cache is not None and kind not in ("budget", "cancelled", "auth", "endpoint"):
                p, c, cost, rid = record_usage or (0, 0, None, None)
                records.append(
                    CacheRecord(
                        key=job.key,
                        model=self.opts.model or "",
                        template_hash=self.template.hash,
                        answer=None,
                        status="error",
                        error=f"{kind}: {message}",
                        prompt_tokens=p,
                        completion_tokens=c,
                        cost_usd=cost,
                        created=datetime.now(timezone.utc),
                        request_id=rid,
                    )
                )
        if records and self.cache is not None:
            self.cache.add(records)

    # ---- the worker pool ------------------------------------------------------------
    async def drain(self) -> None:
        cond = asyncio.Condition()

        async def worker() -> None:
            while True:
                async with cond:
                    while True:
                        batch = self.take()
                        if batch is not None:
                            self.in_flight += 1
                            break
                        if self.in_flight == 0:
                            cond.notify_all()
                            return
                        await cond.wait()
                try:
                    await self.process(batch)
                finally:
                    async with cond:
                        self.in_flight -= 1
                        cond.notify_all()

        n_workers = max(1, self.opts.max_concurrency)
        tasks = [asyncio.ensure_future(worker()) for _ in range(n_workers)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            # Cancelled (Ctrl-C): stop every worker, not just the one that saw it.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise


def _shares(total: int, n: int) -> list[int]:
    """Split ``total`` tokens over ``n`` rows so that the shares add up exactly."""
    base, extra = divmod(total, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return _NoProgress()
    try:  # a widget bar in notebooks when ipywidgets is there; tqdm.auto warns otherwise
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm import tqdm

    return tqdm(total=total, unit="row", desc="llmframe", dynamic_ncols=True)


def _batch_cap(opts: Options, template: Template) -> int:
    if "id" in template.fields:
        warnings.warn(
            "llmframe: the template uses a field named 'id', which packed requests use for "
            "their own row ids; sending one row per request. Rename the column to pack.",
            stacklevel=4,
        )
        return 1
    if isinstance(opts.batch_size, int):
        return opts.batch_size
    return AUTO_BATCH_ITEMS


@dataclass
class Prepared:
    """Steps 1-3 of a run: rows rendered, keyed, deduplicated and looked up in the cache."""

    report: RunReport
    answers: list[str | None]
    todo: list[Job]
    cache: AnswerCache | None


def prepare(
    columns: Mapping[str, Sequence[str | None]],
    n_rows: int,
    template: Template,
    opts: Options,
    *,
    chunk_rows: int = 100_000,
) -> Prepared:
    """``columns`` holds each template field's rendered values (``None`` for a null),
    as lists or as the accessor's :class:`~llmframe._frames.RenderedColumn`, which
    renders a slice at a time.

    Rows are rendered and keyed ``chunk_rows`` at a time and only each row's key is
    kept, in binary (16 bytes): a cached re-run of a million rows never holds a
    million prompts or key strings, only the answers it returns. Rows the cache does
    not answer are rendered a second time to become jobs, which costs little next to
    sending them.
    """
    model = opts.model or ""
    report = RunReport(model=model, rows=n_rows)
    fields = template.fields
    sources = [columns[f] for f in fields]

    # 1-2: render and key every row, a slice at a time (nulls found vectorized per slice).
    prefix = call_prefix(model=model, template=template.text, system=opts.system, params=opts.params)
    digests = bytearray(16 * n_rows)
    null = np.zeros(n_rows, dtype=bool)  # rows with a null in a used field: null answer, no request
    for lo in range(0, n_rows, chunk_rows):
        hi = min(n_rows, lo + chunk_rows)
        chunk, nulls = row_digests(prefix, [source[lo:hi] for source in sources])
        digests[16 * lo : 16 * hi] = chunk
        null[np.asarray(nulls, dtype=np.intp) + lo] = True
    report.null_rows = int(null.sum())

    # 3: the cache, for every row at once; a cached re-run builds no per-row objects
    # but its answers.
    cache_dir = resolve_cache_dir(opts.cache)
    cache = AnswerCache(cache_dir, flush_seconds=FLUSH_SECONDS) if cache_dir is not None else None
    hits = None
    found = np.zeros(n_rows, dtype=bool)
    if cache is not None and report.null_rows < n_rows:
        hits = cache.lookup_binary(digests)
        cache.drop_index()  # looked up once; the rest of a run only writes
        found = hits.is_valid().to_numpy(zero_copy_only=False)
    missing = ~null & ~found
    if hits is not None:
        report.cached_rows = n_rows - report.null_rows - int(missing.sum())

    # Rows with equal keys are asked once, in order of first appearance.
    jobs: dict[str, Job] = {}
    todo = np.flatnonzero(missing)
    for lo in range(0, n_rows if len(todo) else 0, chunk_rows):
        rows = todo[np.searchsorted(todo, lo) : np.searchsorted(todo, lo + chunk_rows)].tolist()
        if not rows:
            continue
        rendered = [source[lo : lo + chunk_rows] for source in sources]
        for row in rows:
            key = digests[16 * row : 16 * row + 16].hex()
            job = jobs.get(key)
            if job is None:
                values = {f: cast(str, col[row - lo]) for f, col in zip(fields, rendered, strict=True)}
                jobs[key] = Job(key, values, [row])
            else:
                job.rows.append(row)
                report.duplicate_rows += 1
    del digests, todo

    # The answers found, as Python strings only now, a slice at a time.
    answers: list[str | None] = [None] * n_rows
    if hits is not None:
        for lo in range(0, n_rows, chunk_rows):
            answers[lo : lo + chunk_rows] = hits.slice(lo, chunk_rows).to_pylist()
        for row in np.flatnonzero(null & found).tolist():
            answers[row] = None  # a row without a key has no answer, whatever the cache holds
    return Prepared(report, answers, list(jobs.values()), cache)


def new_run(
    prepared: Prepared,
    template: Template,
    opts: Options,
    *,
    client: Any,
    limiter: RateLimiter | None,
    endpoint: str,
    progress: Any = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> _Run:
    """The state of a run (or of an estimate, which plans the same batches but sends none).

    ``endpoint`` names (base_url, model) in :data:`~llmframe._capabilities.MEMORY`, whose
    lessons (a working response format, renamed or dropped parameters, packing
    verdicts) the run starts from.
    """
    model = opts.model or ""
    tokenizer = get_tokenizer(model)
    memory_dir = resolve_cache_dir(opts.cache)
    known = MEMORY.get(endpoint, memory_dir)
    state = _Run(
        template=template,
        opts=opts,
        client=client,
        limiter=cast(RateLimiter, limiter),  # None only for estimates, which never send
        tokenizer=tokenizer,
        cache=prepared.cache,
        price=price_for(model, opts.prices),
        report=prepared.report,
        answers=prepared.answers,
        sleep=sleep,
        progress=progress or _NoProgress(),
        pending=deque(prepared.todo),
        cap=_batch_cap(opts, template),
        max_batch_tokens=opts.max_batch_tokens or AUTO_BATCH_TOKENS,
        endpoint=endpoint,
        memory_dir=memory_dir,
    )
    params = dict(opts.params or {})
    for old, new in (known.get("renames") or {}).items():
        if old in params:
            params[new] = params.pop(old)
    for name in known.get("drops") or {}:
        params.pop(name, None)
    state.params = params
    state.endpoint_confirmed = bool((known.get("answered") or {}).get(state.signature))
    state.max_key = max_tokens_param(params)
    if state.max_key is not None:
        state.answer_tokens = int(params[state.max_key])
    if opts.response_format == "auto":
        state.response_format = known.get("response_format") or "json_schema"
        state.format_confirmed = "response_format" in known
    else:
        state.response_format = opts.response_format
    _plan_packing(state, known, len(prepared.todo))
    state.report.response_format = state.response_format
    if state.cap > 1:
        system_text = _packing.packed_system(template.text, opts.system)
        state.system_tokens = count_messages(
            [{"role": "system", "content": system_text}, {"role": "user", "content": ""}], tokenizer
        )
    return state


def _plan_packing(state: _Run, known: Mapping[str, Any], n_todo: int) -> None:
    """Whether and how the run packs: the packing check, canaries, the reason said."""
    opts, report = state.opts, state.report
    if state.cap <= 1:
        report.packing_reason = "one row per request" + (
            ", as batch_size=1 says" if opts.batch_size == 1 else ": the template has a field 'id'"
        )
        return
    if opts.batch_size is not None:  # an int the user chose
        report.packing_reason = f"packed up to {state.cap} rows per request, as batch_size= says"
        if opts.canaries:
            state.canaries = Canaries(opts.canaries)
            state.check = PackingCheck(max(4, 2 * opts.canaries), (), AUTO_MIN_AGREEMENT)
            state.remembered_size = state.cap
        return
    if n_todo <= SMALL_FRAME_ROWS:
        state.cap = 1
        report.packing_reason = (
            f"one row per request: {n_todo} rows to send, too few to check packing on "
            f"(the check runs from {SMALL_FRAME_ROWS + 1} rows)"
        )
        return
    state.canaries = (
        Canaries(1, AUTO_CANARY_EVERY) if opts.canaries is None else Canaries(opts.canaries)
    )
    state.task_key = call_prefix(
        model=opts.model or "", template=state.template.text, system=opts.system, params=opts.params
    ).hex()
    verdict = (known.get("verdicts") or {}).get(state.task_key)
    size = verdict.get("batch_size") if isinstance(verdict, dict) else None
    if isinstance(size, int) and size >= 1:
        reason = str(verdict.get("reason", "")) if isinstance(verdict, dict) else ""
        report.packing_reason = f"{reason} (checked in an earlier run on this endpoint)"
        if size == 1:
            state.cap = 1
            warn_user(f"llmframe: {report.packing_reason}.")
            return
        state.remembered_size = size
        if state.canaries.wanted:  # a few rows alone first: the canaries' answers
            state.check = PackingCheck(REMEMBERED_WARMUP_ROWS, (), AUTO_MIN_AGREEMENT)
        else:
            state.cap = min(state.cap, size)
        return
    sizes = [s for s in AUTO_CHECK_SIZES if s < state.cap] + [state.cap]
    state.check = PackingCheck(AUTO_CHECK_ROWS, sorted(set(sizes), reverse=True), AUTO_MIN_AGREEMENT)


async def run(
    columns: Mapping[str, Sequence[str | None]],
    n_rows: int,
    template: Template,
    opts: Options,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    limiter: RateLimiter | None = None,
) -> RunResult:
    """Answer every row; see the module docstring for the path one call takes."""
    start = time.monotonic()
    model = opts.model or ""
    prepared = prepare(columns, n_rows, template, opts)
    report, cache, todo = prepared.report, prepared.cache, prepared.todo
    progress = _progress(n_rows, opts.progress)
    progress.update(report.cached_rows + report.null_rows)
    client: ChatClient | None = None
    state: _Run | None = None
    if todo:
        # Only a run with rows to send pays for an HTTP client (SSL context) and a tokenizer.
        client = ChatClient(
            client=opts.client,
            base_url=opts.base_url,
            api_key=opts.api_key,
            timeout=opts.timeout,
            max_connections=max(100, opts.max_concurrency),
        )
        state = new_run(
            prepared,
            template,
            opts,
            client=client,
            limiter=limiter
            or shared_limiter(client.base_url, client.api_key, model, rpm=opts.rpm, tpm=opts.tpm),
            endpoint=EndpointMemory.key(client.base_url, model),
            progress=progress,
            sleep=sleep,
        )

    flusher: asyncio.Task[None] | None = None
    if cache is not None and state is not None:

        async def flush_periodically() -> None:
            while True:
                await asyncio.sleep(FLUSH_SECONDS / 2)
                cache.flush_if_due()

        flusher = asyncio.ensure_future(flush_periodically())
    try:
        if state is not None:
            await state.drain()
            if state.fatal is not None:
                # A failure that hits every row stopped the run: rows never sent fail with
                # the same error, so that every row has an answer or a RowError.
                fatal = state.fatal
                state.fail([j for j in todo if not j.done], fatal.kind, fatal.message, fatal.status)
    except BaseException:
        # Interrupted (Ctrl-C, cancellation): rows not finished are reported, finished ones are cached below.
        for job in todo:
            if not job.done:
                job.done = True
                report.errors.extend(RowError(r, "cancelled", "the run was interrupted") for r in job.rows)
        raise
    finally:
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(BaseException):
                await flusher
        if cache is not None:
            cache.close()
        progress.close()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
        if state is not None:
            report.batch_size_final = state.cap
            report.response_format = state.response_format
        else:
            report.batch_size_final = _batch_cap(opts, template)
        report.finish(time.monotonic() - start)
        set_last_report(report)

    errors = sorted(report.errors, key=lambda e: e.row)
    if state is not None and state.fatal is not None:
        fatal = state.fatal
        error = AuthenticationError if fatal.kind == "auth" else EndpointError
        raise error(f"{fatal.message} ({len(errors)} of {n_rows} rows without an answer)", errors, report)
    if errors and opts.errors == "raise":
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(report.failures.items()))
        raise RunError(
            f"{len(errors)} of {n_rows} rows failed ({kinds}); first: {errors[0]}. "
            "Every other row was answered and cached; run again to retry only the failed rows.",
            errors,
            report,
        )
    return RunResult(prepared.answers, errors, report)
