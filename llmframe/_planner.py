"""Planning: which rows go in the next request.

Batches are formed lazily, when a worker is free, not planned up front: the
batch size can then shrink mid-run (:mod:`._sizer`), and rows sent again are
served before new ones (they are the oldest work). A batch holds resent rows
first, topped up with new rows up to the item cap and the token budget:
resending one dropped row alone would pay the whole task (system prompt,
template) again for one answer. A resent row goes in a batch at most half the
size of the one it failed in.

While the packing check (:mod:`._check`) runs, requests are its reference rows
(one per request) and its trial batches; then, while the trial is out, packed
requests of new rows whose answers wait for the verdict (``ahead``, at most one
wave, as many as the endpoint showed it answers at once), or, when the size is
decided already and the check only seeds canaries, rows as usual. Where the
packed format is not confirmed, its probe is a small packed request of new rows
sent with the reference rows, not the trial. And
while a probe is out (:meth:`~llmframe._endpoint.EndpointState.gate`), nothing
else goes. When several processes share the cache folder, rows reach ``pending``
only once claimed (``feed``, :mod:`._claims_run`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from ._canaries import Canaries
from ._check import PROBE_ROWS, PackingCheck, Verdict
from ._endpoint import EndpointState
from ._jobs import Batch, Job
from ._requests import RequestBuilder
from ._sizer import BatchSizer
from ._todo import JobQueue

__all__ = ["Planner"]


class Planner:
    __slots__ = (
        "builder",
        "canaries",
        "check",
        "concurrency",
        "endpoint",
        "feed",
        "max_batch_tokens",
        "on_verdict",
        "pending",
        "resend",
        "sizer",
    )

    def __init__(
        self,
        jobs: JobQueue,
        *,
        cap: int,
        max_batch_tokens: int,
        builder: RequestBuilder,
        endpoint: EndpointState,
        canaries: Canaries | None = None,
        check: PackingCheck | None = None,
        on_verdict: Callable[[PackingCheck], int] | None = None,
    ) -> None:
        self.pending = jobs  # made into jobs as they are taken (:mod:`._todo`)
        self.resend: deque[Job] = deque()
        self.sizer = BatchSizer(cap)
        self.max_batch_tokens = max_batch_tokens
        self.builder = builder
        self.endpoint = endpoint
        self.canaries = canaries if canaries is not None else Canaries(0)
        self.check = check
        # Told when the check has its verdict; returns the batch size to use from then on.
        self.on_verdict = on_verdict
        # With claims (:mod:`._claims_run`): called with how many rows ``pending`` should
        # hold; claims that many more from the rows not claimed yet.
        self.feed: Callable[[int], None] | None = None
        self.concurrency = 32  # requests in flight at most (the run's max_concurrency): one wave

    @property
    def cap(self) -> int:
        return self.sizer.cap

    def take(self) -> Batch | None:
        """The next batch to send, or ``None`` when there is none now."""
        check = self.check
        if self.endpoint.fatal is not None:
            if check is not None and check.verdict is not None:
                self.decided(check)  # keep what the trial answered before the stop
            return None
        if self.endpoint.probe_in_flight:
            return None
        if self.feed is not None and len(self.pending) < self.cap:
            self.feed(self.cap)
        if check is not None and check.verdict is None:
            if self.resend:  # while checking, every request is one row
                return self.endpoint.gate(Batch([self.resend.popleft()]))
            if check.wants_reference() and self.pending:
                job = self.pending.popleft()
                check.add_reference(job)
                return self.endpoint.gate(Batch([job], kind="reference"))
            if check.first_trial_due and not check.probe_sent and not self.endpoint.format_confirmed:
                check.probe_sent = True  # the format's probe: small, and beside the reference rows
                if len(self.pending) > PROBE_ROWS:  # no canary: it asks whether the format works
                    return self.take_ahead(PROBE_ROWS, canaries=False)
            room = None
            if check.first_trial_due:
                fits = self.rows_that_fit(check.reference_jobs())
                room = check.first_trial_room(fits)
            if room is not None:
                if not self.pending:
                    check.verdict = Verdict(1, "no rows left to pack after the sampled ones", {})
                else:
                    size = check.first_size(fits)
                    refs = check.reference_jobs()[: max(2, size - room)]
                    new = self.fill([], room, also=refs)
                    return self.endpoint.gate(Batch(check.first_trial(new, size), kind="trial"))
            elif (trial := check.next_trial(self.rows_that_fit(check.answered_jobs()))) is not None:
                return self.endpoint.gate(Batch(trial, kind="trial"))
            if check.verdict is None:  # the check's answers are not all back
                if check.ahead > 1:
                    return self.take_rows(check.ahead)
                size = check.ahead_size(self.concurrency)
                if size < 2 or not self.pending:
                    return None
                check.ahead_sent += 1
                return self.take_ahead(size)
        if check is not None and check.verdict is not None:
            self.decided(check)
        return self.take_rows()

    def decided(self, check: PackingCheck) -> None:
        assert check.verdict is not None
        self.check = None
        size = self.on_verdict(check) if self.on_verdict else check.verdict.batch_size
        self.sizer.set_limit(size)

    def take_rows(self, at_most: int | None = None, *, canaries: bool = True) -> Batch | None:
        jobs: list[Job] = []
        size = self.cap if at_most is None else min(self.cap, at_most)
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
            jobs = self.fill(jobs, size - len(jobs))
        riders = self.canaries.pick(jobs) if canaries and not any(j.no_canaries for j in jobs) else []
        return self.endpoint.gate(Batch(jobs, canaries=riders))

    def take_ahead(self, size: int, *, canaries: bool = True) -> Batch | None:
        """New rows packed ``size`` to a request before the verdict: their answers are held
        until it (:meth:`~llmframe._check.PackingCheck.fate`)."""
        batch = self.take_rows(size, canaries=canaries)
        if batch is not None:
            batch.kind, batch.size = "ahead", size
        return batch

    def fill(self, jobs: list[Job], room: int, also: Sequence[Job] = ()) -> list[Job]:
        """``jobs`` topped up with up to ``room`` new rows, within the token budget of one
        request that also carries ``also``."""
        per_row = self.builder.per_row_output
        budget = self.max_batch_tokens - self.builder.system_tokens
        used = sum(self.builder.item_tokens(j) + per_row for j in (*jobs, *also))
        pending, item_tokens = self.pending, self.builder.item_tokens
        for _ in range(room):
            if not pending:
                break
            job = pending.popleft()
            cost = item_tokens(job) + per_row
            if used + cost > budget:
                pending.extendleft([job])  # the next request's first
                break
            used += cost
            jobs.append(job)
        return jobs

    def rows_that_fit(self, jobs: Sequence[Job]) -> int:
        """How many rows like ``jobs``, on average, one packed request carries in the token budget."""
        if not jobs:
            return self.cap
        per_row = self.builder.per_row_output
        avg = sum(self.builder.item_tokens(j) for j in jobs) / len(jobs) + per_row
        return max(1, int((self.max_batch_tokens - self.builder.system_tokens) // avg))

    def split(self, jobs: Sequence[Job], size: int) -> None:
        """Queue ``jobs`` to be sent again in batches of at most ``size``."""
        for job in jobs:
            job.max_batch = max(1, size)
        self.resend.extend(jobs)

    def unfinished(self) -> list[Job]:
        return [j for j in (*self.resend, *self.pending) if not j.done]
