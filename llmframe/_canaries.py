"""Canaries: rows whose one-row answer is known, mixed into packed requests.

A packed reply can be valid JSON with every id and still be wrong: answers
shifted by one, guessed, or copied from the rows' own text. No id check sees
that, so some packed requests carry a canary, a row answered alone earlier.
If its packed answer disagrees with its one-row answer (:mod:`._agreement`),
the batch is not trusted and its rows are sent again in smaller batches.

One canary goes last, where a skipped or repeated item shifts every later
answer; any others go at random places, to catch errors elsewhere.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from ._agreement import answer_agreement
from ._jobs import Job

__all__ = ["Canaries"]


class Canaries:
    """The known answers and the schedule: ``per_request`` canaries on every ``every``-th
    packed request (``every=1``: all of them)."""

    __slots__ = ("_answers", "_jobs", "_packed", "every", "per_request", "rng")

    def __init__(self, per_request: int, every: int = 1, seed: int = 0) -> None:
        self.per_request = per_request
        self.every = max(1, every)
        self.rng = random.Random(seed)
        self._answers: dict[str, str] = {}
        self._jobs: list[Job] = []
        self._packed = 0

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def wanted(self) -> bool:
        return self.per_request > 0

    def learn(self, job: Job, answer: str) -> None:
        if self.per_request and job.key not in self._answers:
            self._answers[job.key] = answer
            self._jobs.append(job.copy())

    def pick(self, jobs: Sequence[Job]) -> list[Job]:
        """The canaries for a packed request of ``jobs`` (none when it is not their turn)."""
        if not self.per_request or not self._jobs or len(jobs) < 2:
            return []
        self._packed += 1
        if (self._packed - 1) % self.every:
            return []
        keys = {j.key for j in jobs}
        pool = [j for j in self._jobs if j.key not in keys]
        return self.rng.sample(pool, min(self.per_request, len(pool)))

    def place(self, jobs: list[Job], canaries: Sequence[Job]) -> list[Job]:
        """``jobs`` with ``canaries`` placed: the first last, the others at random."""
        if not canaries:
            return jobs
        sent = list(jobs)
        for canary in canaries[1:]:
            sent.insert(self.rng.randrange(len(sent) + 1), canary)
        sent.append(canaries[0])
        return sent

    def wrong(self, sent: Sequence[Job], answers: Mapping[int, str]) -> list[int]:
        """Positions in ``sent`` of canaries whose packed answer disagrees (or is missing)."""
        others = list(self._answers.values())
        return [
            i
            for i, job in enumerate(sent)
            if not job.rows
            and (i not in answers or answer_agreement(self._answers[job.key], answers[i], others) < 1.0)
        ]
