"""Steps 1-3 of a run: render and key every row, deduplicate, look keys up in the cache.

What is left are the jobs: one per distinct prompt the cache does not answer, kept
as rows until the run takes them (:mod:`._todo`).
A run (``claim=True``) opens the folder's claim store before the lookup, so that
keys other processes release later are looked up again (:mod:`._claims_run`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._answers import Answers
from ._cache import AnswerCache
from ._cache_admin import cache_location
from ._claims import Claims
from ._claims_run import RunClaims, open_claims
from ._config import Options
from ._errors import RowError
from ._keys import call_prefix, output_spec, row_digests
from ._report import RunReport
from ._template import Template
from ._todo import JobQueue, distinct_rows

__all__ = ["Prepared", "prepare"]


@dataclass
class Prepared:
    """Steps 1-3 of a run: rows rendered, keyed, deduplicated and looked up in the cache."""

    report: RunReport
    answers: Answers
    todo: JobQueue
    cache: AnswerCache | None
    store: Claims | None = None  # with claim=, a cache folder and rows to send
    to_send: np.ndarray | None = None  # per row: whether it is a job's (the cache and nulls left it)

    def unfinished_rows(self, errors: Iterable[RowError]) -> list[int]:
        """The rows to send that have neither an answer nor an error (a run stopped early)."""
        if self.to_send is None:
            return []
        failed = {e.row for e in errors}
        answers = self.answers
        return [r for r in np.flatnonzero(self.to_send).tolist() if answers[r] is None and r not in failed]

    def claims(self, run: Any, sleep: Callable[[float], Awaitable[None]]) -> RunClaims | None:
        """The run's claims (:class:`~llmframe._claims_run.RunClaims`), wired to its planner."""
        return RunClaims.of(self.store, run, self.cache, sleep=sleep)

    def close(self) -> None:
        """Close the cache and the claim store, for a run that stops before it starts."""
        if self.cache is not None:
            self.cache.close()
        if self.store is not None:
            self.store.close()


def prepare(
    columns: Mapping[str, Sequence[str | None]],
    n_rows: int,
    template: Template,
    opts: Options,
    *,
    chunk_rows: int = 100_000,
    flush_seconds: float = 2.0,
    claim: bool = False,
) -> Prepared:
    """``columns`` holds each template field's rendered values (``None`` for a null),
    as lists or as the accessor's :class:`~llmframe._frames.RenderedColumn`, which
    renders a slice at a time.

    Rows are rendered and keyed ``chunk_rows`` at a time and only each row's key is
    kept, in binary (16 bytes): a cached re-run of a million rows never holds a
    million prompts or key strings, nor a Python string per answer found. Rows the cache does
    not answer stay row numbers in the :class:`~llmframe._todo.JobQueue`, rendered a
    second time only when the run takes them (a window at a time), which costs little
    next to sending them.
    """
    model = opts.model or ""
    report = RunReport(model=model, rows=n_rows)
    fields = template.fields
    sources = [columns[f] for f in fields]

    # 1-2: render and key every row, a slice at a time (nulls found vectorized per slice).
    prefix = call_prefix(model=model, template=template.text, system=opts.system, params=opts.params,
                         output=output_spec(opts.schema))  # fmt: skip
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
    where = cache_location(opts.cache, opts.cache_options)  # a folder, or a URL's segments and this machine's logs
    cache = AnswerCache(where, flush_seconds=flush_seconds) if where is not None else None
    hits = None
    found = np.zeros(n_rows, dtype=bool)
    store = open_claims(where, opts.limiter) if claim and report.null_rows < n_rows else None
    if cache is not None and report.null_rows < n_rows:
        try:
            hits = cache.lookup_binary(digests)
        except BaseException:
            if store is not None:
                store.close()
            raise
        found = hits.is_valid().to_numpy(zero_copy_only=False)
    missing = ~null & ~found
    if hits is not None:
        report.cached_rows = n_rows - report.null_rows - int(missing.sum())

    # Rows with equal keys are asked once, in order of first appearance; jobs are made
    # from these rows only when the run reaches them (:mod:`._todo`).
    firsts, repeats = distinct_rows(digests, np.flatnonzero(missing))
    report.duplicate_rows = int(missing.sum()) - len(firsts)
    todo = JobQueue(fields=fields, sources=sources, digests=digests, firsts=firsts, repeats=repeats,
                    prefix=prefix)  # fmt: skip
    del digests

    # The answers found stay the Arrow array the lookup returned: no Python string per row.
    # None found (an uncached run): nothing to keep (its offsets were 4 bytes a row).
    answers = Answers(n_rows, hits if report.cached_rows else None)
    if hits is not None:
        for row in np.flatnonzero(null & found).tolist():
            answers[row] = None  # a row without a key has no answer, whatever the cache holds
    if store is not None and not todo:
        store.close()
        store = None
    return Prepared(report, answers, todo, cache, store, missing)
