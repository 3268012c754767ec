"""The packing check: pack only where packed answers agree with one-row answers.

Packing many rows into one request is cheap and fast, but a small model can
lose its place in a packed list and return answers that are valid JSON, under
the right ids, and wrong (a 0.5B model echoed the country names back when asked
for their capitals). No parser can see that. So with ``batch_size=None`` a run
checks before it packs::

    reference   the first ``sample`` rows, one per request: real answers,
                written out and cached like any other
    trial       the same rows again, packed ``size`` to a request (their
                answers are only compared, never written out)
    verdict     pack at the first size whose answers agree with the one-row
                answers on at least ``min_agreement`` of rows; try the next,
                smaller size otherwise; one row per request when none does

While the trial is out, the run does not wait (``ahead``): once the reference
requests are back, new rows go packed at the trial's size, their answers held
until the verdict, then kept if the verdict packs at least that many rows per
request, asked again otherwise. How many such requests go (at most one wave) is
how many the endpoint answered side by side: the reference requests went
together, so ``rows x fastest latency / span`` is the parallelism it showed; an
endpoint that answered them one after another (a local server with one slot)
gets none, since each would only queue behind the trial. What it risks is one
wave of packed requests on a run whose check fails (their rows are asked again
as the verdict says). Where the packed format is not confirmed yet, its first
packed request (the format's probe, which goes alone) is a small one of new
rows with no canary, sent beside the reference requests, so the trial and the
wave do not wait for it.

The reference answers then serve as canaries (:mod:`._canaries`) for the rest
of the run. The check costs the trial requests (one per size at the default
sample and batch sizes, about 0.3% of the tokens of a 10,000-row run) and the
difference between one-row and packed tokens for the sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._agreement import agreement, field_agreement
from ._jobs import Job

__all__ = ["PROBE_ROWS", "PackingCheck", "Verdict"]

#: A trial reply with no usable answer is sent again this many times before it counts.
TRIAL_RETRIES = 2
#: Agreement is measured only when at least this share of trial rows got a packed answer.
MIN_ANSWERED = 0.5
#: Rows of the small packed request that probes a packed format not confirmed yet.
PROBE_ROWS = 2
#: Reference requests answered side by side at least this share of them: the endpoint is
#: wider than the sample, and a whole wave (``max_concurrency`` requests) may go ahead.
SIDE_BY_SIDE = 0.75


@dataclass(frozen=True)
class Verdict:
    batch_size: int  # 1: do not pack
    reason: str
    agreement: dict[int, float]  # packed size -> share of sampled rows that agreed
    fields: dict[str, float] = field(default_factory=dict)  # structured: each field's agreement, last size


class PackingCheck:
    """The state of one run's check; the planner feeds it rows and answers, and asks
    what to send next."""

    __slots__ = ("_answers", "_batches_out", "_current", "_in_flight", "_jobs", "_opened",
                 "_queue", "_references", "_retries", "_spans", "_trial_rows", "agreement", "ahead",
                 "ahead_held", "ahead_sent", "fields", "held", "min_agreement", "probe_sent", "returned",
                 "sample", "sizes", "taken", "verdict")  # fmt: skip

    def __init__(self, sample: int, sizes: Sequence[int], min_agreement: float, ahead: int = 0) -> None:
        self.sample = sample
        # Rows per request that may go while the check runs, answered as usual: a warm-up
        # whose size is decided already (batch_size=, a remembered verdict), which only
        # seeds canaries. 0: packing waits for the verdict.
        self.ahead = ahead
        self.sizes = [s for s in sizes if s > 1]
        self.min_agreement = min_agreement
        self.taken = 0
        self.verdict: Verdict | None = None
        self.agreement: dict[int, float] = {}
        self.fields: dict[str, float] = {}  # structured answers: agreement per field, last size judged
        # New rows that rode in the first trial: (job, packed answer, usage). Kept as
        # answers when the trial agrees (``held``), asked again when it does not
        # (``returned``).
        self.held: list[tuple[Job, str | None, Any]] = []
        self.returned: list[Job] = []
        self._jobs: dict[str, Job] = {}  # the reference rows, by key
        self._references: dict[str, str | None] = {}  # key -> one-row answer (None: failed)
        self._queue: list[list[Job]] = []  # trial batches to send (again)
        self._in_flight = 0  # reference and trial requests not yet settled
        self._batches_out = 0  # trial batches of the current size not yet answered
        self._answers: dict[str, str | None] = {}  # key -> packed answer at the current size
        self._trial_rows: list[Job] = []  # copies of the reference rows in the current trial
        self._current = 0
        self._retries = 0
        self._opened = False  # the first trial was sent
        self._spans: list[tuple[float, float]] = []  # reference requests' (sent, answered) times
        # Packed answers of new rows sent ahead of the verdict: (job, answer, usage, size).
        self.ahead_held: list[tuple[Job, str, Any, int]] = []
        self.ahead_sent = 0  # packed requests sent ahead of the verdict
        self.probe_sent = False  # the small probe of an unconfirmed packed format went

    # ---- reference rows ------------------------------------------------------------
    def wants_reference(self) -> bool:
        return self.verdict is None and self.taken < self.sample

    def add_reference(self, job: Job) -> None:
        job.reference = True
        self._jobs[job.key] = job
        self.taken += 1
        self._in_flight += 1

    def settle_reference(self, job: Job, answer: str | None) -> None:
        self._references[job.key] = answer
        self._in_flight -= 1
        self._maybe_judge()

    def reference_jobs(self) -> list[Job]:
        return list(self._jobs.values())

    def answered_jobs(self) -> list[Job]:
        """The reference rows that got a one-row answer."""
        return [self._jobs[k] for k, a in self._references.items() if a is not None]

    @property
    def answers(self) -> dict[str, str]:
        """The reference rows' one-row answers, by key."""
        return {k: a for k, a in self._references.items() if a is not None}

    # ---- ahead of the verdict -------------------------------------------------------
    def timed(self, sent: float, answered: float) -> None:
        """A reference request went at ``sent`` and was answered at ``answered`` (the
        endpoint's first request, which goes alone, is not timed)."""
        self._spans.append((sent, answered))

    def side_by_side(self) -> float:
        """How many requests the endpoint answered at once, as the timed reference
        requests showed: ``n x fastest / span`` (``n`` at once, 1 one after another)."""
        if len(self._spans) < 2:
            return 0.0
        span = max(a for _, a in self._spans) - min(s for s, _ in self._spans)
        fastest = min(a - s for s, a in self._spans)
        return float(len(self._spans)) if span <= 0 else len(self._spans) * fastest / span

    def ahead_size(self, concurrency: int) -> int:
        """Rows per request for the next packed request of new rows ahead of the verdict,
        or 0 when none may go: only while the first size's trial is out, once every
        reference row is answered, up to one wave of what the endpoint answered at once."""
        if self.verdict is not None or self.ahead or not self._opened or self.agreement or self._queue:
            return 0
        if len(self._references) < self.taken:  # the parallelism is not known yet
            return 0
        shown = self.side_by_side()
        wave = concurrency if shown >= SIDE_BY_SIDE * len(self._spans) else int(shown) - 1  # one place: the trial's
        return self._current if self.ahead_sent < wave else 0

    def fate(self, size: int) -> str | None:
        """What becomes of a packed answer given ahead of the verdict at ``size`` rows per
        request: ``None`` held until the verdict, else ``"keep"`` (it packs at least that
        many rows per request) or ``"again"``."""
        if self.verdict is None:
            return None
        return "keep" if self.verdict.batch_size >= size else "again"

    # ---- trials --------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Reference or trial requests are out: packing waits for their answers."""
        return self._in_flight > 0

    @property
    def first_trial_due(self) -> bool:
        """The first trial was not sent yet, and there are sizes to try."""
        return not self._opened and bool(self.sizes) and self.verdict is None

    def first_trial_room(self, fits: int) -> int | None:
        """How many new rows may ride in the first trial (``None``: it was sent already).

        The first trial goes out with the reference requests, not after them: the
        check then costs about one request's time. New rows fill it up to the first
        size, so it measures the size the run will pack at and answers rows too.
        """
        if not self.first_trial_due:
            return None
        return max(0, self.first_size(fits) - self.taken)

    def first_size(self, fits: int) -> int:
        return min(self.sizes[0], max(2, fits))

    def first_trial(self, new_jobs: Sequence[Job], size: int) -> list[Job]:
        """The first trial batch of ``size`` rows: copies of the reference rows, spread
        among ``new_jobs`` with one last (where a skipped item shifts every later answer)."""
        self._opened = True
        refs = list(self._jobs.values())[: max(2, size - len(new_jobs))]
        copies = [job.copy() for job in refs]
        batch = list(new_jobs)
        for i, copy in enumerate(copies[:-1]):
            batch.insert(round(i * (len(batch) + 1) / max(1, len(copies) - 1)), copy)
        if copies:
            batch.append(copies[-1])
        self._trial_rows = copies
        self._current = len(batch)
        self._batches_out = 1
        self._in_flight += 1
        return batch

    def next_trial(self, fits: int) -> list[Job] | None:
        """The next trial batch to send, or ``None`` while waiting or when decided.

        ``fits`` is how many reference rows one request can carry under the token
        budget; a size above it is measured at ``fits``.
        """
        if self.verdict is not None:
            return None
        if self._queue:
            self._in_flight += 1
            return self._queue.pop(0)
        if self._in_flight or self._batches_out:
            return None
        self._start_next_size(fits)
        if not self._queue:
            return None
        self._in_flight += 1
        return self._queue.pop(0)

    def requeue(self, batch: list[Job]) -> None:
        """A trial request was refused for a reason that was then fixed: send it again."""
        self._in_flight -= 1
        self._queue.insert(0, batch)

    def record_trial(
        self, batch: Sequence[Job], answers: Sequence[str | None], usages: Sequence[Any] | None = None
    ) -> None:
        """The packed answers of one trial request, in ``batch`` order (``None``: failed).

        A reply with no usable answer at all (unparsable, cut off, misnumbered) says
        nothing about agreement: that batch is sent again, up to ``TRIAL_RETRIES`` times.
        """
        self._in_flight -= 1
        if all(a is None for a in answers) and self._retries < TRIAL_RETRIES:
            self._retries += 1
            self._queue.insert(0, list(batch))
            return
        for i, (job, answer) in enumerate(zip(batch, answers, strict=True)):
            if job.rows:
                self.held.append((job, answer, None if usages is None else usages[i]))
            else:
                self._answers[job.key] = answer
        self._batches_out -= 1
        self._maybe_judge()

    def _maybe_judge(self) -> None:
        if self._opened and self._trial_rows and not self._in_flight and not self._queue and self._batches_out <= 0:
            self._judge()

    def _start_next_size(self, fits: int) -> None:
        rows = [job.copy() for job in self.answered_jobs()]
        if len(rows) < 2:
            self.verdict = Verdict(
                1,
                f"one row per request: only {len(rows)} of {self.taken} sampled rows got a "
                "one-row answer, too few to check packing against",
                {},
            )
            return
        while self.sizes:
            size = min(self.sizes[0], max(2, fits), len(rows))
            if size in self.agreement:  # already measured (a smaller cap or sample)
                self.sizes.pop(0)
                continue
            self._opened = True
            self._trial_rows = rows
            self._queue = [rows[i : i + size] for i in range(0, len(rows), size)]
            if len(self._queue) > 1 and len(self._queue[-1]) < 2:
                self._queue[-2].extend(self._queue.pop())  # no one-row "trial"
            self._batches_out = len(self._queue)
            self._current = size
            return
        self._decide()

    def _judge(self) -> None:
        size = self._current
        # Compared: reference rows with a one-row answer. Rows whose packed answer is
        # missing are resent by a run, never answered wrong: agreement counts the rows
        # that got one, if most did.
        keys = [j.key for j in self._trial_rows if self._references.get(j.key) is not None]
        answered = [k for k in keys if self._answers.get(k) is not None]
        share = None
        if keys and len(answered) >= MIN_ANSWERED * len(keys):
            refs, answers = [self._references[k] for k in answered], [self._answers[k] for k in answered]
            share, _ = agreement(refs, answers)
            self.fields = field_agreement(refs, answers)
        self.agreement[size] = share or 0.0
        self._retries = 0
        self._trial_rows = []
        self._answers = {}
        if self.agreement[size] >= self.min_agreement:
            self.verdict = Verdict(
                size,
                f"packed {size} rows per request: on {len(keys)} sampled rows, packed answers agreed "
                f"with one-row answers on {self.agreement[size]:.0%} (need {self.min_agreement:.0%})",
                dict(self.agreement),
                dict(self.fields),
            )
            return
        self.returned.extend(job for job, _, _ in self.held)  # answered at a size that failed
        self.held = []
        self.sizes.pop(0)
        if not self.sizes:
            self._decide()

    def _decide(self) -> None:
        if self.verdict is not None:
            return
        measured = ", ".join(f"{a:.0%} at {s}" for s, a in sorted(self.agreement.items(), reverse=True))
        self.verdict = Verdict(
            1,
            "one row per request: packed answers did not agree with one-row answers on the "
            f"{len(self.answers)} sampled rows ({measured}; need {self.min_agreement:.0%}). "
            "Pass batch_size=N to pack anyway, or calibrate() to measure more rows" + _fields_note(self.fields),
            dict(self.agreement),
            dict(self.fields),
        )


def _fields_note(fields: dict[str, float]) -> str:
    worst = sorted((share, name) for name, share in fields.items() if share < 1.0)[:3]
    if not worst:
        return ""
    return "; fields that disagreed most: " + ", ".join(f"{name} ({share:.0%} agree)" for share, name in worst)
