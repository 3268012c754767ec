"""What a batch job has done so far: :class:`BatchStatus`, and the jobs a cache folder records."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ._batch_state import FINAL, JobState, list_jobs
from ._cache import resolve_cache_dir
from ._config import get_defaults
from ._errors import ConfigError
from ._html import table

__all__ = ["BatchStatus", "batch_jobs", "job_folder", "status_of"]

#: Batch statuses from least to most advanced: a job is where its slowest batch is.
_ORDER = ("uploading", "creating", "queued", "validating", "in_progress", "finalizing", "cancelling", "completed",
          "expired", "cancelled", "failed")  # fmt: skip


@dataclass(frozen=True)
class BatchStatus:
    """One job at a glance: ``state`` (validating, in_progress, finalizing, completed, cancelled,
    failed; queued while the endpoint's enqueued-token limit holds it back; uploading or
    creating while its file or batch is being sent), requests done of the total, rows,
    batches."""

    job_id: str
    state: str
    requests_done: int
    requests_total: int
    rows: int
    batches: int
    model: str = ""
    created: str = ""
    message: str = ""

    @property
    def done_share(self) -> float:
        return self.requests_done / self.requests_total if self.requests_total else 1.0

    def __str__(self) -> str:
        text = (f"batch job {self.job_id}: {self.state} {self.done_share:.0%} ({self.requests_done:,} of "
                f"{self.requests_total:,} requests, {self.rows:,} rows, {self.batches} batch"
                f"{'es' if self.batches != 1 else ''})")  # fmt: skip
        return text + (f": {self.message}" if self.message else "")

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython
        p.text(str(self))

    def _repr_html_(self) -> str:  # Jupyter
        rows = [
            ("state", f"{self.state} ({self.done_share:.0%})"),
            ("requests", f"{self.requests_done:,} of {self.requests_total:,} done"),
            ("rows", f"{self.rows:,}"),
            ("batches", self.batches),
            ("model", self.model or "-"),
            ("created", self.created or "-"),
        ]
        if self.message:
            rows.append(("message", self.message))
        return table(f"llmframe batch job {self.job_id}", rows)


def status_of(state: JobState) -> BatchStatus:
    """The status of ``state`` as last polled."""
    if state.status in FINAL or not state.in_flight:
        where = state.status
    else:
        where = min((b.status for b in state.in_flight), key=lambda s: _ORDER.index(s) if s in _ORDER else 0)
    done = sum(len(b.requests) if b.taken else b.completed + b.failed for b in state.batches)
    return BatchStatus(state.id, where, done, state.requests, state.rows, len(state.batches), state.model,
                       state.created, state.message)  # fmt: skip


def job_folder(cache: bool | str | os.PathLike[str] | None) -> Any:
    """The cache folder batch jobs live in (``None``: the configured one, as ``apply``'s)."""
    folder = resolve_cache_dir(get_defaults().cache if cache is None else cache)
    if folder is None:
        raise ConfigError("batch jobs live in the cache folder: pass cache=<folder> (cache=False has none)")
    return folder


def batch_jobs(cache: bool | str | os.PathLike[str] | None = None) -> list[BatchStatus]:
    """The batch jobs recorded in the cache folder, oldest first, as last polled.

    >>> for job in llmframe.batch_jobs():
    ...     print(job)          # batch job job-...: in_progress 41% (205 of 500 requests, ...)
    """
    return [status_of(state) for state in list_jobs(job_folder(cache))]
