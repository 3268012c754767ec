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
import random
import time
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, cast

import numpy as np

from . import _packing
from ._cache import AnswerCache, CacheRecord, resolve_cache_dir
from ._client import CallError, ChatClient, Completion
from ._config import Options
from ._errors import AuthenticationError, RowError, RunError
from ._keys import call_prefix, row_digests
from ._limiter import RateLimiter, shared_limiter
from ._parse import normalize, parse_packed, parse_single
from ._pricing import Price, price_for
from ._report import RunReport, set_last_report
from ._retry import retry_delay
from ._template import Template
from ._tokens import Tokenizer, count_messages, get_tokenizer

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
#: Seconds between cache flushes while a run goes: a crash loses at most this much.
FLUSH_SECONDS = 2.0

_MAX_TOKEN_KEYS = ("max_completion_tokens", "max_tokens")


def max_tokens_param(params: Mapping[str, Any] | None) -> str | None:
    """Which of ``max_completion_tokens`` / ``max_tokens`` the user set, if any."""
    return next((k for k in _MAX_TOKEN_KEYS if params and params.get(k) is not None), None)


@dataclass
class Job:
    """One distinct prompt: the rows that share a key get one answer."""

    key: str
    values: dict[str, str]
    rows: list[int]
    item_tokens: int = -1
    resends: int = 0
    done: bool = False
    limit: int = 0  # when resent: the largest batch it may go in next (0: no limit)
    no_canaries: bool = False  # its request was too large with canaries added


@dataclass
class RunResult:
    answers: list[str | None]
    errors: list[RowError]
    report: RunReport


@dataclass
class _Batch:
    jobs: list[Job]
    canaries: bool = True  # False: send without canaries (the request would be too large)
    warmup: bool = False  # a single row sent first to learn canary answers


@dataclass
class _Request:
    """One request as it will be sent, with its token estimate."""

    messages: list[dict[str, str]]
    params: dict[str, Any]
    response_format: Any
    input_tokens: int  # exact (tiktoken over the messages as sent)
    output_tokens: int  # expected: max_tokens if set, else the running answer-length guess

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


#: The structured-output mode that worked per (base_url, model), so later runs in
#: the process do not pay a rejected request to find it again.
_FORMAT_MEMORY: dict[tuple[str, str], str] = {}


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
    max_key: str | None = None  # which of max_completion_tokens / max_tokens the user set
    response_format: str = "json_schema"
    failing: float = 0.0  # moving average of the share of rows a packed reply got wrong
    # Rows sent and rows failed per packed batch size, to tell whether smaller batches help.
    by_size: dict[int, list[int]] = field(default_factory=dict)
    fatal: CallError | None = None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    in_flight: int = 0
    system_tokens: int = 0
    format_key: tuple[str, str] = ("", "")
    # Canaries: rows whose one-row answer is known, by key.
    known: dict[str, str] = field(default_factory=dict)
    known_keys: list[str] = field(default_factory=list)
    known_jobs: dict[str, Job] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    warmup: int = 0  # rows still to send alone before packing starts (to seed canaries)
    warmup_active: int = 0

    # ---- planning -------------------------------------------------------------------
    def item_tokens(self, job: Job) -> int:
        if job.item_tokens < 0:
            job.item_tokens = self.tokenizer.count(_packing.item_line(0, job.values)) + 1
        return job.item_tokens

    def take(self) -> _Batch | None:
        """The next batch to send: resent rows first, topped up with new rows.

        A resent row goes in a batch at most half the size of the one it failed in,
        but that batch is filled up with new rows: resending one dropped row alone
        would pay the whole task (system prompt, template) again for one answer.
        """
        if self.fatal is not None:
            return None
        jobs: list[Job] = []
        size = self.cap
        while self.resend and len(jobs) < size:
            job = self.resend[0]
            limit = job.limit or size
            if jobs and limit < len(jobs) + 1:
                break
            jobs.append(self.resend.popleft())
            size = min(size, limit)
        if not jobs:
            if not self.pending:
                return None
            if self.warmup == 0 and self.warmup_active and not self.known:
                return None  # packed batches wait until the first canary answer is known
            jobs.append(self.pending.popleft())
            if self.warmup > 0:
                # With canaries on and none known yet, the first rows go alone: their answers
                # are real answers for the output and the canaries for every later batch.
                self.warmup -= 1
                self.warmup_active += 1
                return _Batch(jobs, warmup=True)
        if size > 1 and not (self.warmup_active and not self.known):
            per_row_out = self.answer_tokens + PACKED_TOKENS_PER_ROW
            budget = self.max_batch_tokens - self.system_tokens
            used = sum(self.item_tokens(j) + per_row_out for j in jobs)
            while self.pending and len(jobs) < size:
                cost = self.item_tokens(self.pending[0]) + per_row_out
                if used + cost > budget:
                    break
                used += cost
                jobs.append(self.pending.popleft())
        return _Batch(jobs, canaries=not any(j.no_canaries for j in jobs))

    # ---- one request ----------------------------------------------------------------
    def request_for(self, jobs: list[Job]) -> _Request:
        params = dict(self.opts.params or {})
        if len(jobs) == 1:
            prompt = self.template.render(jobs[0].values)
            messages = _packing.single_messages(prompt, self.opts.system)
            return _Request(messages, params, None, count_messages(messages, self.tokenizer), self.answer_tokens)
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
        return _Request(messages, params, fmt, count_messages(messages, self.tokenizer), out)

    def estimate_cost(self, request: _Request) -> float:
        if self.price is None:
            return 0.0
        return self.price.cost(request.input_tokens, request.output_tokens)

    async def process(self, batch: _Batch) -> None:
        try:
            await self.send(batch.jobs, batch.canaries)
        except Exception as exc:  # a bug must cost its rows, never the run
            unfinished = [j for j in batch.jobs if not j.done]
            self.fail(unfinished, "internal", f"unexpected {type(exc).__name__}: {exc}")
        finally:
            if batch.warmup:
                self.warmup_active -= 1

    async def send(self, jobs: list[Job], use_canaries: bool = True) -> None:
        canaries = self.pick_canaries(jobs) if use_canaries else []
        sent = self.place_canaries(jobs, canaries)
        request = self.request_for(sent)
        mode = self.response_format
        est = request.tokens
        if not self.limiter.fits(est) or (len(sent) > 1 and est > self.max_batch_tokens * 2):
            if len(jobs) > 1:
                self.split(jobs, len(jobs) // 2)
                return
            if canaries:
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
        attempt = 0
        while True:
            if self.fatal is not None:
                self.fail(jobs, self.fatal.kind, self.fatal.message, self.fatal.status)
                return
            est_cost = self.estimate_cost(request)
            limit = self.opts.max_cost_usd
            if limit is not None and self.spent_usd + self.reserved_usd + est_cost > limit:
                if attempt == 0:
                    self.report.budget_unsent_rows += sum(len(j.rows) for j in jobs)
                when = "before this row was sent" if attempt == 0 else f"before retry {attempt}"
                self.fail(jobs, "budget", f"max_cost_usd={limit} reached (spent ${self.spent_usd:.4f}) {when}")
                return
            self.reserved_usd += est_cost
            try:
                reservation = await self.limiter.acquire(est)
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
                            err.retry_after if err.retry_after is not None else retry_delay(attempt, {})
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
            except CallError as err:
                if self.handle_error(err, jobs, canaries, mode):
                    attempt += 1
                    if attempt < self.opts.max_attempts:
                        self.report.retries += 1
                        delay = 0.0 if err.kind == "rate_limit" else retry_delay(attempt - 1, err.headers)
                        await self.sleep(delay)
                        continue
                    self.fail(jobs, err.kind, f"{err.message} (gave up after {attempt} attempts)", err.status)
                return
            finally:
                self.reserved_usd -= est_cost
            if len(sent) > 1:
                _FORMAT_MEMORY[self.format_key] = mode
            self.accept(jobs, sent, done)
            return

    def handle_error(self, err: CallError, jobs: list[Job], canaries: list[Job], mode: str) -> bool:
        """Deal with a failed attempt; True means "try the same request again"."""
        if err.kind == "auth":
            if self.fatal is None:
                self.fatal = err
            self.fail(jobs, err.kind, err.message, err.status)
            return False
        packed = len(jobs) + len(canaries) > 1
        if err.status == 400 and packed and mode != "text" and "response_format" in err.message:
            # The endpoint rejects this structured-output mode: step down once for the run
            # (requests already in flight with the same mode fail too; they must not step twice).
            if self.response_format == mode:
                self.response_format = "json_object" if mode == "json_schema" else "text"
            for job in jobs:
                job.limit = len(jobs)
            self.resend.extend(jobs)
            return False
        if err.kind == "too_large" and len(jobs) > 1:
            self.split(jobs, len(jobs) // 2)
            return False
        if err.retryable:
            return True
        self.fail(jobs, err.kind, err.message, err.status)
        return False

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
                self.learn_canary(jobs[0], answer)
            return
        parsed = parse_packed(done.content, n, truncated=truncated)
        position = {id(job): i for i, job in enumerate(sent)}
        canary_at = [i for i, job in enumerate(sent) if not job.rows]
        wrong = [
            i for i in canary_at
            if i not in parsed.answers or normalize(parsed.answers[i]) != normalize(self.known[sent[i].key])
        ]  # fmt: skip
        if wrong:
            # A canary's packed answer differs from its one-row answer: this batch's answers
            # may be shifted or guessed, so none of them is trusted.
            self.report.canary_failures += 1
            self.track_failures(n, len(jobs), len(jobs))
            self.retry_rows(jobs, dict.fromkeys(range(len(jobs)), "a canary row's answer was wrong"), len(jobs))
            return
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

    def pick_canaries(self, jobs: list[Job]) -> list[Job]:
        """Rows with a known one-row answer, added to a packed request as a check."""
        want = self.opts.canaries
        if not want or len(jobs) < 2 or not self.known:
            return []
        keys = {j.key for j in jobs}
        pool = [k for k in self.known_keys if k not in keys]
        if not pool:
            return []
        chosen = self.rng.sample(pool, min(want, len(pool)))
        return [self.known_jobs[k] for k in chosen]

    def place_canaries(self, jobs: list[Job], canaries: list[Job]) -> list[Job]:
        """One canary last, where a skipped or repeated item shifts every later answer;
        the others at random places, to catch errors elsewhere in the batch."""
        if not canaries:
            return jobs
        sent = list(jobs)
        for canary in canaries[1:]:
            sent.insert(self.rng.randrange(len(sent) + 1), canary)
        sent.append(canaries[0])
        return sent

    def learn_canary(self, job: Job, answer: str) -> None:
        if self.opts.canaries and job.key not in self.known:
            self.known[job.key] = answer
            self.known_keys.append(job.key)
            self.known_jobs[job.key] = Job(job.key, job.values, [])  # no rows: never written out

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
            job.limit = max(1, size)
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
            for row in job.rows:
                self.report.errors.append(RowError(row, kind, message, status))
            self.progress.update(len(job.rows))
            # Budget stops and cancellations say nothing about the row: do not store them.
            if self.cache is not None and kind not in ("budget", "cancelled", "auth"):
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
    progress: Any = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> _Run:
    """The state of a run (or of an estimate, which plans the same batches but sends none)."""
    model = opts.model or ""
    tokenizer = get_tokenizer(model)
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
        response_format=opts.response_format if opts.response_format != "auto" else "json_schema",
    )
    base_url = client.base_url if client is not None else ""
    state.format_key = (base_url, model)
    if opts.response_format == "auto" and state.format_key in _FORMAT_MEMORY:
        state.response_format = _FORMAT_MEMORY[state.format_key]
    if opts.canaries and state.cap > 1:
        state.warmup = min(len(prepared.todo), max(4, 2 * opts.canaries))
    state.max_key = max_tokens_param(opts.params)
    if state.max_key is not None:
        state.answer_tokens = int(opts.params[state.max_key])  # type: ignore[index]
    if state.cap > 1:
        system_text = _packing.packed_system(template.text, opts.system)
        state.system_tokens = count_messages(
            [{"role": "system", "content": system_text}, {"role": "user", "content": ""}], tokenizer
        )
    return state


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
                # A 401 stopped the run: rows never sent fail with the same error, so that
                # every row has an answer or a RowError.
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
        report.batch_size_final = state.cap if state is not None else _batch_cap(opts, template)
        report.finish(time.monotonic() - start)
        set_last_report(report)

    errors = sorted(report.errors, key=lambda e: e.row)
    if state is not None and state.fatal is not None and state.fatal.kind == "auth":
        raise AuthenticationError(state.fatal.message, errors, report)
    if errors and opts.errors == "raise":
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(report.failures.items()))
        raise RunError(
            f"{len(errors)} of {n_rows} rows failed ({kinds}); first: {errors[0]}. "
            "Every other row was answered and cached; run again to retry only the failed rows.",
            errors,
            report,
        )
    return RunResult(prepared.answers, errors, report)
