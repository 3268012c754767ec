"""A Batch API job: submit a frame's requests, poll, take the results, follow up, finish.

``start`` prepares the rows as a live run does (rendered, keyed, deduplicated,
looked up in the cache: only misses are sent), then either finds a job in flight
for the same task and rows (a new process after a crash) and waits for it, or
writes the first round's requests to JSONL files, uploads them and creates their
batches. :meth:`BatchJob.aresult` polls with backoff, downloads each finished
batch's output and error files, hands every result to the run
(:mod:`._batch_run`), and sends what must go again as a follow-up batch, until
nothing is left; then the frame is made as ``apply`` makes it. The job's state
(:mod:`._batch_state`) is written after every step, and each batch is written
down before it is sent (:mod:`._batch_send`), so a kill loses nothing that was
submitted and a new process never submits it twice.

Where the endpoint's enqueued-token limit refuses a batch, its file waits
("queued") and is submitted as earlier batches finish. ``on_expired="live"``
sends the rows of expired or unfinished requests through the live engine at
the end. :meth:`BatchJob.acancel` cancels the batches; what completed is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _engine
from ._answers import Answers
from ._batch_client import BatchClient
from ._batch_jsonl import read_results, split_lines
from ._batch_run import BatchRun, Sent, task_hash
from ._batch_send import create, record, recover, send
from ._batch_state import BATCH_DONE, FINAL, JobState, SentBatch, find_job, load_job
from ._batch_status import BatchStatus, job_folder, status_of
from ._client import CallError, _shown
from ._config import Options, resolve
from ._endpoint import Endpoint
from ._errors import ConfigError, EndpointError
from ._frames import rendered_columns
from ._outcomes import progress_bar
from ._prepare import prepare
from ._report import set_last_report
from ._run import frame_out
from ._sync import run_sync
from ._template import Template, parse_template
from ._todo import JobQueue

__all__ = ["BatchJob", "Work", "batch_job", "start"]

#: Seconds before the first poll, the factor each quiet poll grows it by, and its cap.
POLL_FIRST = 0.2
POLL_FACTOR = 1.5
POLL_MAX = 60.0


@dataclass
class Work:
    """What finishing a frame takes: the frame, the call, and the run wired for it."""

    df: Any
    template: Template
    opts: Options
    output: str
    unnest: bool
    prefix: str
    batch: BatchRun
    started: float
    progress: Any = None


class BatchJob:
    """A Batch API job. ``status()`` polls once; ``result()`` waits and returns the frame
    ``apply`` would; ``cancel()`` stops it, keeping what completed.

    >>> job = df.llm.submit("Classify: {review}", output="sentiment", model="gpt-4o-mini")
    >>> job.status()            # batch job job-...: in_progress 41% (205 of 500 requests, ...)
    >>> out = job.result()      # blocks with a progress bar
    """

    def __init__(self, state: JobState, folder: Path, opts: Options, work: Work | None = None, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:  # fmt: skip
        self.state, self.folder, self.opts, self.work, self.sleep = state, folder, opts, work, sleep
        self.out: Any = None  # the frame, once result() has made it

    @property
    def id(self) -> str:
        return self.state.id

    def __repr__(self) -> str:
        return f"BatchJob({self.id!r}, {status_of(self.state).state!r})"

    # ---- the public, synchronous side ----------------------------------------------------
    def status(self) -> BatchStatus:
        """Poll every batch in flight once; the job's state, requests done and rows."""
        return run_sync(self.astatus)

    def result(self, df: Any = None) -> Any:
        """Wait (with a progress bar) until every row has an answer or an error; the frame
        ``apply`` returns, priced at the batch rate in its report. A job reattached with
        :func:`llmframe.batch_job` takes the frame it was submitted for: ``result(df)``."""
        return run_sync(lambda: self.aresult(df))

    def cancel(self) -> BatchStatus:
        """Cancel the batches in flight; ``result()`` then returns what completed (the other
        rows null, with errors of kind ``cancelled``)."""
        return run_sync(self.acancel)

    # ---- async ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[BatchClient]:
        o = self.opts
        client = BatchClient(client=o.client, base_url=o.base_url, api_key=o.api_key, timeout=o.timeout,
                             sleep=self.sleep)  # fmt: skip
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def astatus(self) -> BatchStatus:
        if self.state.status not in FINAL:
            async with self.client() as client:
                for sent in self.state.in_flight:
                    if sent.batch_id and sent.status not in BATCH_DONE:
                        self.note(sent, await client.retrieve(sent.batch_id))
            self.save()
        return status_of(self.state)

    async def acancel(self) -> BatchStatus:
        fresh = load_job(self.folder, self.id)
        self.state.cancelled = True
        async with self.client() as client:
            for sent in self.state.in_flight:
                if fresh is not None:  # another process may have moved on: keep its progress
                    sent.status = next((b.status for b in fresh.batches if b.batch_id == sent.batch_id), sent.status)
                if sent.batch_id and sent.status not in BATCH_DONE:
                    with contextlib.suppress(EndpointError):  # it may have finished meanwhile
                        self.note(sent, await client.cancel(sent.batch_id))
                elif not sent.batch_id:  # queued, never created: nothing to cancel or charge
                    sent.status = "cancelled"
        if self.work is None and not any(b.batch_id and not b.taken for b in self.state.batches):
            self.state.status = "cancelled"
        self.save()
        return status_of(self.state)

    async def aresult(self, df: Any = None) -> Any:
        if self.out is not None:
            return self.out
        if self.work is None:
            if df is None:
                raise ConfigError(f"job {self.id} was reattached without its frame: pass it, job.result(df)")
            self.work = (await self.reattach(df)).work
        work = self.work
        assert work is not None
        report = work.batch.run.report
        work.progress = progress_bar(report.rows, work.opts.progress)
        work.progress.update(report.cached_rows + report.null_rows + report.answered_rows + len(report.errors))
        work.batch.run.outcomes.progress = work.progress
        outcomes = work.batch.run.outcomes
        try:
            async with self.client() as client:
                await self.wait(client, work)
        finally:
            work.progress.close()
            if outcomes.cache is not None:
                outcomes.cache.close()
        self.out = await self.finish(work)
        return self.out

    async def reattach(self, df: Any) -> BatchJob:
        """This job wired to ``df``, the frame it was submitted for (its call rebuilt from the state)."""
        stored = dict(self.state.options)
        if stored.pop("structured", False):
            raise ConfigError(f"job {self.id} has a schema, which its state does not keep: call df.llm.submit(...) "
                              "with the same arguments, which finds the job and waits for it")  # fmt: skip
        output, unnest, prefix = stored.pop("output", "answer"), stored.pop("unnest", True), stored.pop("prefix", "")
        keep = {f.name: getattr(self.opts, f.name) for f in dataclasses.fields(Options)
                if f.name in ("base_url", "api_key", "client", "timeout", "progress", "errors", "error_column",
                              "prices", "batch_prices", "on_expired", "max_attempts")}  # fmt: skip
        opts = resolve(**{**keep, **stored, "model": self.state.model, "cache": str(self.folder), "mode": "batch"})
        tpl = parse_template(self.state.template, list(getattr(df, "columns", [])))
        return await start(df, tpl, opts, output, unnest=unnest, prefix=prefix, state=self.state, sleep=self.sleep)

    # ---- rounds -----------------------------------------------------------------------
    async def submit_round(self, client: BatchClient, work: Work) -> bool:
        """Plan the next round and submit it; False when nothing is left to send."""
        lines = work.batch.plan()
        if not lines:
            return False
        run = work.batch.run
        cost = run.budget.estimate(sum(i.request.input_tokens for i, _ in lines if i.request),
                                   sum(i.request.output_tokens for i, _ in lines if i.request))  # fmt: skip
        if not run.budget.admits(cost):
            message = (f"the batch would cost up to ${cost:.4f} at the batch price, over max_cost_usd="
                       f"{run.budget.limit} with ${run.budget.spent:.4f} spent")  # fmt: skip
            if not self.state.batches:  # nothing submitted yet: nothing is charged
                raise ConfigError(message + "; raise max_cost_usd= or submit fewer rows")
            for item, _ in lines:
                work.batch.sent.pop(item.custom_id, None)
                run.outcomes.fail(item.batch.jobs, "budget", message)
            return False
        by_id = {item.custom_id: item for item, _ in lines}
        for part in split_lines((item.custom_id, line) for item, line in lines):
            items = [by_id[custom_id] for custom_id, _ in part]
            sent = SentBatch("", "", work.batch.round, {i.custom_id: [j.key for j in i.sent] for i in items},
                             {i.custom_id: _copies(i) for i in items if _copies(i)}).renew()  # fmt: skip
            await send(client, self.state, self.folder, sent, b"".join(line for _, line in part))
        return True

    async def wait(self, client: BatchClient, work: Work) -> None:
        delay = POLL_FIRST
        while True:
            fresh = load_job(self.folder, self.id)
            if fresh is not None and fresh.cancelled and not self.state.cancelled:
                self.state.cancelled = True  # cancelled from another process
            live = self.state.in_flight
            if not live:
                if self.state.cancelled or not await self.submit_round(client, work):
                    return
                delay = POLL_FIRST
                continue
            changed = False
            for sent in live:
                if not sent.batch_id:
                    continue
                info = await client.retrieve(sent.batch_id)
                self.note(sent, info)
                if sent.status in BATCH_DONE:
                    await self.take(client, work, sent, info)
                    changed = True
            queued = [b for b in self.state.in_flight if not b.batch_id]
            if queued and self.state.cancelled:
                for sent in queued:
                    sent.taken = True
                    work.batch.take(list(sent.requests), {}, resend=False)
            elif queued and (changed or len(queued) == len(self.state.in_flight)):
                await create(client, self.state, self.folder, queued[0])
            self.save()
            work.progress.set_postfix_str(str(status_of(self.state)).split(": ", 1)[-1], refresh=False)
            if not changed:
                await self.sleep(delay)
                delay = min(delay * POLL_FACTOR, POLL_MAX)
            else:
                delay = POLL_FIRST

    def note(self, sent: SentBatch, info: Any) -> None:
        sent.status = str(info.status)
        counts = getattr(info, "request_counts", None)
        if counts is not None:
            sent.completed, sent.failed = int(counts.completed or 0), int(counts.failed or 0)

    async def take(self, client: BatchClient, work: Work, sent: SentBatch, info: Any) -> None:
        """A finished batch: its answers to the run (and so to the cache), its failures queued again."""
        if sent.status == "failed":
            problems = [e for e in getattr(getattr(info, "errors", None), "data", None) or []]
            codes = " ".join(f"{getattr(e, 'code', '')} {getattr(e, 'message', '')}" for e in problems)
            if "token_limit" in codes or "enqueued token" in codes.lower():
                sent.batch_id, sent.status = "", "queued"  # submitted again as earlier batches finish
                sent.renew()  # (a lookup must not take the failed batch for the new one)
                return
            message = "; ".join(f"line {getattr(e, 'line', '?')}: {getattr(e, 'message', '')}" for e in problems[:3])
            self.state.status, self.state.message = "failed", f"batch {sent.batch_id} failed validation: {message}"
            sent.taken = True
            self.save()
            fatal = CallError("endpoint", self.state.message + " (nothing in it was charged)", False, fatal=True)
            work.batch.run.endpoint.fatal = fatal
            work.batch.close_out(fatal.kind, fatal.message)
            return
        seconds = max(0.0, float((info.completed_at or info.expired_at or info.cancelled_at or time.time())
                                 - (info.created_at or time.time())))  # fmt: skip
        text = await client.content(info.output_file_id) + "\n" + await client.content(info.error_file_id)
        results = read_results(text, latency=seconds)
        work.batch.take(list(sent.requests), results, resend=not self.state.cancelled)
        sent.taken = True
        self.save()

    async def finish(self, work: Work) -> Any:
        batch, opts = work.batch, work.opts
        run = batch.run
        fatal = run.endpoint.fatal
        if fatal is None:
            batch.close_out("cancelled", "the batch job was cancelled before this row ran")
        else:
            batch.close_out(fatal.kind, fatal.message, fatal.status)
        report = run.report
        result_fatal = fatal
        if batch.live_left and fatal is None:
            # The rest through the live path: every answered row is a cache hit there.
            live = await _engine.run(rendered_columns(work.df, work.template.fields), len(work.df), work.template,
                                     dataclasses.replace(opts, mode="live"))  # type: ignore[arg-type]  # fmt: skip
            for job in batch.live_left:
                job.done = True
            _add_live(report, live.report, live.answers, run.outcomes.answers)
        if self.state.status not in FINAL:
            self.state.status = "cancelled" if self.state.cancelled else "completed"
        self.save()
        report.batch_size_final = run.planner.cap
        report.finish(time.monotonic() - work.started)
        set_last_report(report)
        prepared = _engine.Prepared(report, run.outcomes.answers, JobQueue(), None)
        return frame_out(work.df, _engine.result_of(prepared, result_fatal, opts), opts, work.output,
                         unnest=work.unnest, prefix=work.prefix)  # fmt: skip

    def save(self) -> None:
        record(self.state, self.folder)


def _copies(item: Sent) -> list[int]:
    return [i for i, job in enumerate(item.sent) if not job.rows]


def _add_live(report: Any, live: Any, live_answers: Answers, answers: Answers) -> None:
    """The live pass's answers and counts added to the batch run's."""
    for row, answer in enumerate(live_answers):
        if answer is not None and answers[row] is None:
            answers[row] = answer
    report.errors = [e for e in report.errors if answers[e.row] is None]
    report.errors.extend(e for e in live.errors if all(e.row != f.row for f in report.errors))
    for name in ("requests", "retries", "rate_limited", "answered_rows", "resent_rows"):
        setattr(report, name, getattr(report, name) + getattr(live, name))
    report.add_usage(live.prompt_tokens, live.completion_tokens, live.cost_usd)
    report.endpoint_notes.append(f"{live.answered_rows:,} rows answered through the live path (on_expired='live')")


async def start(df: Any, template: Template, opts: Options, output: str, *, unnest: bool = True, prefix: str = "",
                state: JobState | None = None, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> BatchJob:  # fmt: skip
    """Submit ``df``'s rows (those not cached), or reattach to the job in flight for them."""
    folder = job_folder(opts.cache)
    started = time.monotonic()
    endpoint = Endpoint.of(model=opts.model or "", base_url=opts.base_url, api_key=opts.api_key, client=opts.client)
    base_url = _shown(endpoint.base_url)
    prepared = prepare(rendered_columns(df, template.fields), len(df), template, opts, flush_seconds=2.0)
    thash = task_hash(template, opts, base_url)
    keys = [job.key for job in prepared.todo]
    found = state or (find_job(folder, thash, keys) if keys else None)
    new = found or JobState.new(hash=thash, model=opts.model or "", base_url=base_url, template=template.text,
                                rows=len(df), options=_stored(opts, output, unnest, prefix))  # fmt: skip
    if not keys and found is None:
        new.status = "completed"  # every row is cached (or null): nothing to send, no job recorded
    try:
        batch = BatchRun.wire(prepared, template, opts, endpoint, new.id)
        work = Work(df, template, opts, output, unnest, prefix, batch, started)
        job = BatchJob(new, folder, opts, work, sleep=sleep)
        if found is not None or keys:
            async with job.client() as client:
                if found is not None:  # a batch a killed process wrote down is found, not sent again
                    await recover(client, found, folder)
                    batch.resume(found)
                if not new.in_flight and not new.cancelled and keys:
                    await job.submit_round(client, work)
    except BaseException:
        prepared.close()
        raise
    return job


def _stored(opts: Options, output: str, unnest: bool, prefix: str) -> dict[str, Any]:
    """The options a reattached job needs to rebuild the call (never a key or a URL)."""
    return {"system": opts.system, "params": dict(opts.params or {}), "batch_size": opts.batch_size,
            "max_batch_tokens": opts.max_batch_tokens, "response_format": opts.response_format,
            "canaries": opts.canaries, "output": output, "unnest": unnest, "prefix": prefix,
            "structured": opts.schema is not None}  # fmt: skip


def batch_job(job_id: str, *, cache: Any = None, **options: Any) -> BatchJob:
    """Reattach to a recorded job (``options``: where it runs, e.g. ``base_url=``, ``api_key=``).

    >>> job = llmframe.batch_job("job-20261201-101500-1a2b3c4d")
    >>> job.status()
    >>> out = job.result(df)    # the frame it was submitted for
    """
    folder = job_folder(cache)
    state = load_job(folder, job_id)
    if state is None:
        raise ConfigError(f"no batch job {job_id!r} in {folder}; llmframe.batch_jobs(cache=...) lists them")
    opts = resolve(**{"model": state.model, **options, "cache": str(folder), "mode": "batch"})
    return BatchJob(state, folder, opts)
