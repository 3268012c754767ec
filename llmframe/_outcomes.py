"""Outcomes of a run: each row's answer or error, the report, progress, cache records.

Every finished row passes here once, answered (:meth:`Outcomes.finish`) or failed
(:meth:`Outcomes.fail`), so the output, the report, the progress bar and the
cache can never disagree. Answers go to :class:`~llmframe._answers.Answers`,
which keeps them compactly (equal short answers once). One builder makes every cache record,
as a tuple of its values (:meth:`~llmframe._cache.AnswerCache.add_rows`: no
:class:`~llmframe._cache.CacheRecord` per row). Inside :meth:`Outcomes.one_reply` the
records of a reply's rows are handed to the cache together, as one append to its log,
when the reply has been taken.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

from ._answers import Answers
from ._cache import AnswerCache
from ._cache_schema import micros
from ._errors import RowError
from ._jobs import Job
from ._report import RunReport

__all__ = ["NoProgress", "Outcomes", "progress_bar", "split_tokens"]

#: Failures that say nothing about the row itself: never stored in the cache.
_NOT_STORED = frozenset({"budget", "cancelled", "auth", "endpoint", "changed"})

#: (prompt tokens, completion tokens, cost, request id) of the reply a record came from.
Usage = tuple[int, int, float | None, str | None]


def split_tokens(total: int, n: int) -> list[int]:
    """Split a reply's ``total`` tokens over its ``n`` rows so that the shares add up exactly."""
    base, extra = divmod(total, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


class NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return NoProgress()
    try:  # a widget bar in notebooks when ipywidgets is there; tqdm.auto warns otherwise
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm import tqdm

    return tqdm(total=total, unit="row", desc="llmframe", dynamic_ncols=True)


class Outcomes:
    __slots__ = (
        "answers", "cache", "model", "now", "on_done", "pending", "progress", "report", "template_hash",
    )  # fmt: skip

    def __init__(
        self,
        report: RunReport,
        answers: Answers,
        cache: AnswerCache | None,
        *,
        model: str,
        template_hash: str,
        progress: Any = None,
        on_done: Callable[[Job, str | None], None] | None = None,
    ) -> None:
        self.report = report
        self.answers = answers
        self.cache = cache
        self.model = model
        self.template_hash = template_hash
        self.progress = progress or NoProgress()
        self.on_done = on_done  # told of every finished job (the packing check's references)
        self.pending: list[tuple[Any, ...]] | None = None  # a reply's records, inside one_reply()
        self.now: int | None = None  # when the reply came (micros), inside one_reply(): its records' time

    @contextlib.contextmanager
    def one_reply(self) -> Iterator[None]:
        """Gather the cache records made inside (one reply's rows) and add them to the
        cache in one call, which is one write to its log. Only around code that does
        not await: the records of concurrent replies are never mixed."""
        if self.pending is not None or self.cache is None:  # nested, or nothing to store
            yield
            return
        self.pending = []
        self.now = micros(datetime.now(timezone.utc))  # one clock read per reply, not per row
        try:
            yield
        finally:
            records, self.pending, self.now = self.pending, None, None
            if records:
                self.cache.add_rows(records)

    def store(self, records: list[tuple[Any, ...]]) -> None:
        if self.pending is not None:
            self.pending.extend(records)
        elif self.cache is not None and records:
            self.cache.add_rows(records)

    def record(self, job: Job, answer: str | None, error: str | None, usage: Usage) -> tuple[Any, ...]:
        """The cache record of ``job``: its values in the order of the cache's columns."""
        prompt, completion, cost, request_id = usage
        created = micros(datetime.now(timezone.utc)) if self.now is None else self.now
        status = "ok" if error is None else "error"
        return (job.key, self.model, self.template_hash, answer, status, error, prompt, completion, cost, created,
                request_id)  # fmt: skip

    def finish(self, job: Job, answer: str, usage: Usage) -> None:
        job.done = True
        rows = job.rows
        self.answers.set_rows(rows, answer)
        if self.on_done is not None:
            self.on_done(job, answer)
        self.report.answered_rows += len(rows)
        self.progress.update(len(rows))
        if self.cache is not None:
            record = self.record(job, answer, None, usage)
            if self.pending is not None:
                self.pending.append(record)
            else:
                self.cache.add_rows([record])

    def fail(
        self,
        jobs: Sequence[Job],
        kind: str,
        message: str,
        status: int | None = None,
        *,
        usage: Usage | None = None,
    ) -> None:
        records = []
        for job in jobs:
            job.done = True
            if self.on_done is not None:
                self.on_done(job, None)
            self.report.errors.extend(RowError(row, kind, message, status) for row in job.rows)
            self.progress.update(len(job.rows))
            if self.cache is not None and kind not in _NOT_STORED:
                records.append(self.record(job, None, f"{kind}: {message}", usage or (0, 0, None, None)))
        self.store(records)

    def show_progress(self) -> None:
        report = self.report
        cost = "?" if report.cost_usd is None else f"${report.cost_usd:.4f}"
        self.progress.set_postfix_str(
            f"cached {report.cached_rows}, tok {report.prompt_tokens + report.completion_tokens:,}, {cost}",
            refresh=False,
        )
