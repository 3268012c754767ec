"""The state of a Batch API job, in ``<cache folder>/_batches/<job id>.json``.

It is what a new process needs to find a job in flight and finish it: the batches
and their input files, each request's ``custom_id`` and the cache keys of the rows
it carries (in order: a packed reply's ids are positions), the hash of the
template and options, and the job's status. It holds no API key and no
credentials of ``base_url`` (only its scheme, host, port and path), and no row
text: the frame gives that back. Every write goes to a temporary file renamed
over the old one, so a kill leaves the last state or the one before, whole.

A batch is written down before it is sent: its ``token``, which goes in the
name of its input file and in the batch's ``metadata``, lets a new process find
a file or a batch whose id a kill kept from being written (status ``uploading``:
the file may exist; ``creating``: the batch may exist) instead of paying for it
twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["FINAL", "JOBS_DIR", "SENDING", "JobState", "SentBatch", "drop_job", "find_job", "list_jobs", "load_job"]

JOBS_DIR = "_batches"
#: Job statuses after which nothing is left to wait for.
FINAL = frozenset({"completed", "cancelled", "failed"})
#: Batch statuses after which its files are what they will be.
BATCH_DONE = frozenset({"completed", "expired", "cancelled", "failed"})
#: Statuses of a batch written down but not known to exist yet: its file or the batch
#: itself may have been made by a process killed before it wrote the id.
SENDING = frozenset({"uploading", "creating"})


@dataclass
class SentBatch:
    """One batch of the job: its file, its requests and how far it has come."""

    batch_id: str
    input_file_id: str
    round: int
    requests: dict[str, list[str]]  # custom_id -> the cache keys it carries, in order
    canaries: dict[str, list[int]] = field(default_factory=dict)  # custom_id -> positions of canary copies
    status: str = "validating"
    taken: bool = False  # its results were read and their answers cached
    completed: int = 0  # requests done, from the batch's request_counts
    failed: int = 0
    token: str = ""  # in its file's name and its metadata: how a new process finds them again
    since: int = 0  # unix seconds when it was written down: lookups go no further back

    def renew(self) -> SentBatch:
        """A new token (for a batch not sent yet, or sent again after its batch failed)."""
        self.token, self.since = secrets.token_hex(8), int(time.time())
        return self

    def file_name(self, job_id: str) -> str:
        """The name its input file is uploaded under (the token makes it unique)."""
        return f"{job_id}-{self.round}-{self.token}.jsonl"


@dataclass
class JobState:
    """One job: what ``submit`` sent, and what came of it."""

    id: str
    hash: str
    model: str
    base_url: str
    template: str
    rows: int
    status: str = "in_progress"  # in_progress / completed / cancelled / failed
    created: str = ""
    cancelled: bool = False  # the user cancelled: nothing more is submitted
    message: str = ""  # why it failed
    options: dict[str, Any] = field(default_factory=dict)  # what rebuilds the call: no key, no URL
    batches: list[SentBatch] = field(default_factory=list)

    @classmethod
    def new(cls, *, hash: str, model: str, base_url: str, template: str, rows: int,
            options: dict[str, Any]) -> JobState:  # fmt: skip
        stamp = datetime.now(timezone.utc)
        job_id = f"job-{stamp:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"
        return cls(job_id, hash, model, base_url, template, rows, created=stamp.isoformat(timespec="seconds"),
                   options=options)  # fmt: skip

    @property
    def keys(self) -> set[str]:
        return {k for b in self.batches for keys in b.requests.values() for k in keys}

    @property
    def requests(self) -> int:
        return sum(len(b.requests) for b in self.batches)

    @property
    def in_flight(self) -> list[SentBatch]:
        return [b for b in self.batches if not b.taken]

    def save(self, folder: Path) -> None:
        """Write the state atomically (temp file + rename) under ``folder/_batches``."""
        target = folder / JOBS_DIR
        target.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(asdict(self), f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target / f"{self.id}.json")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _from_dict(data: dict[str, Any]) -> JobState:
    batches = [SentBatch(**b) for b in data.pop("batches", [])]
    return JobState(**data, batches=batches)


def load_job(folder: Path, job_id: str) -> JobState | None:
    path = folder / JOBS_DIR / f"{job_id}.json"
    try:
        return _from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def drop_job(folder: Path, job_id: str) -> None:
    """Forget a job that never had a batch (its first one was refused)."""
    with contextlib.suppress(FileNotFoundError):
        (folder / JOBS_DIR / f"{job_id}.json").unlink()


def list_jobs(folder: Path) -> list[JobState]:
    """Every job recorded in the cache ``folder``, oldest first."""
    found = []
    for path in sorted((folder / JOBS_DIR).glob("job-*.json")):
        job = load_job(folder, path.stem)
        if job is not None:
            found.append(job)
    return found


def find_job(folder: Path, task_hash: str, keys: Iterable[str]) -> JobState | None:
    """The newest job in flight with this ``task_hash`` whose requests carry every one of
    ``keys`` (the rows not cached yet): the one a repeated ``submit`` waits for."""
    wanted = set(keys)
    for job in reversed(list_jobs(folder)):
        if job.hash == task_hash and job.status not in FINAL and wanted and wanted <= job.keys:
            return job
    return None
