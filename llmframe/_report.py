"""The run report: what one ``apply`` did, cost and took."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ._errors import RowError
from ._html import table

__all__ = ["RunReport", "last_report", "merge_reports"]

log = logging.getLogger("llmframe")

_last: RunReport | None = None
_last_lock = threading.Lock()


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class RunReport:
    """Counters of one run. ``print(report)`` shows a summary; ``to_dict()`` every field."""

    model: str = ""
    rows: int = 0
    cached_rows: int = 0
    duplicate_rows: int = 0  # rows answered by another row with the same key in this call
    null_rows: int = 0  # rows with a null in a template field: null answer, no request
    answered_rows: int = 0
    failed_rows: int = 0
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    rate_limited: int = 0  # 429 answers
    resent_rows: int = 0  # rows sent again because a packed answer did not validate
    canary_failures: int = 0  # packed requests rejected because a canary's answer was wrong
    budget_unsent_rows: int = 0
    # Rows another process sharing the cache folder answered while this run waited for them
    # (they are in cached_rows: no tokens, no cost), the seconds rows waited, and rows this
    # run took over from a claim whose process had died or whose lease had expired.
    answered_elsewhere_rows: int = 0
    waited_seconds: float = 0.0
    taken_over_rows: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    seconds: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)  # by kind
    latency_p50: float | None = None
    latency_p95: float | None = None
    batch_size_final: int | None = None
    packing_reason: str = ""  # why the run packed as it did (the packing check's verdict)
    packing_agreement: dict[int, float] = field(default_factory=dict)  # checked size -> agreement
    packing_fields: dict[str, float] = field(default_factory=dict)  # schema field -> agreement, last size
    check_requests: int = 0  # packed requests of the packing check (answers compared, not kept)
    check_tokens: int = 0  # their tokens: the check's cost beyond the rows' own answers
    canary_rows: int = 0  # canary copies carried by packed requests
    ahead_rows: int = 0  # rows sent packed before the packing check's verdict (held until it)
    ahead_again: int = 0  # of those, rows asked again: the verdict packs fewer rows per request
    response_format: str = ""  # the structured-output mode packed requests used in the end
    endpoint_notes: list[str] = field(default_factory=list)  # what the endpoint rejected, and the change
    errors: list[RowError] = field(default_factory=list, repr=False)
    latencies: list[float] = field(default_factory=list, repr=False)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def add_usage(self, prompt_tokens: int, completion_tokens: int, cost: float | None) -> None:
        # Called from the run's event loop only, so no lock is needed.
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if cost is None or self.cost_usd is None:
            self.cost_usd = None
        else:
            self.cost_usd += cost

    def finish(self, seconds: float) -> None:
        self.seconds = seconds
        self.failed_rows = len(self.errors)
        self.failures = dict(Counter(e.kind for e in self.errors))
        self.latency_p50 = _percentile(self.latencies, 0.5)
        self.latency_p95 = _percentile(self.latencies, 0.95)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("latencies", None)
        d["errors"] = [asdict(e) for e in self.errors]
        d["rows_per_second"] = self.rows_per_second
        return d

    def shared(self) -> str:
        """What other processes sharing the cache folder did for this run ("" when nothing)."""
        if not (self.answered_elsewhere_rows or self.taken_over_rows):
            return ""
        text = (f"{self.answered_elsewhere_rows:,} answered by another process sharing the cache folder "
                f"(waited {self.waited_seconds:.1f} s)")  # fmt: skip
        if self.taken_over_rows:
            text += f", {self.taken_over_rows:,} taken over from a dead or expired claim"
        return text

    def summary(self) -> str:
        cost = "unknown" if self.cost_usd is None else f"${self.cost_usd:.4f}"
        fails = ", ".join(f"{k}={v}" for k, v in sorted(self.failures.items())) or "none"
        p50 = "-" if self.latency_p50 is None else f"{self.latency_p50:.2f}s"
        p95 = "-" if self.latency_p95 is None else f"{self.latency_p95:.2f}s"
        shared = self.shared()
        return (
            f"llmframe: {self.rows} rows ({self.cached_rows} cached, {self.answered_rows} answered, "
            f"{self.failed_rows} failed: {fails}) in {self.seconds:.1f}s ({self.rows_per_second:.1f} rows/s); "
            f"{self.requests} requests, {self.retries} retries, {self.rate_limited} rate-limited; "
            f"tokens {self.prompt_tokens} in / {self.completion_tokens} out; cost {cost}; "
            f"latency p50 {p50} p95 {p95}" + (f"; {shared}" if shared else "")
            + (f"; packing: {self.packing_reason}" if self.packing_reason else "")
        )

    def __str__(self) -> str:
        return self.summary()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython shows the summary
        p.text(self.summary())

    def _repr_html_(self) -> str:  # Jupyter
        cost = "unknown" if self.cost_usd is None else f"${self.cost_usd:.4f}"
        fails = ", ".join(f"{k}: {v}" for k, v in sorted(self.failures.items())) or "none"
        checked = ", ".join(f"{a:.0%} at {s}" for s, a in sorted(self.packing_agreement.items(), reverse=True))
        rows: list[tuple[str, Any]] = [
            ("rows", f"{self.rows:,} ({self.cached_rows:,} cached, {self.answered_rows:,} answered, "
                     f"{self.null_rows:,} null)"),
            ("failed rows", f"{self.failed_rows:,} ({fails})"),
            ("packing", self.packing_reason or "-"),
            ("batch size at the end", self.batch_size_final if self.batch_size_final is not None else "-"),
            ("packing check", f"agreement {checked}; {self.check_requests} requests, "
                              f"{self.check_tokens:,} tokens; {self.ahead_rows:,} rows packed ahead of "
                              f"its verdict, {self.ahead_again:,} asked again" if checked else "not run"),
            ("fields agreeing", ", ".join(f"{k} {v:.0%}" for k, v in self.packing_fields.items()) or "-"),
            ("canaries", f"{self.canary_rows:,} rows carried, {self.canary_failures} batches rejected"),
            ("response format", self.response_format or "-"),
            ("requests", f"{self.requests:,} ({self.retries} retries, {self.rate_limited} rate-limited, "
                         f"{self.resent_rows:,} rows resent)"),
            ("tokens", f"{self.prompt_tokens:,} in / {self.completion_tokens:,} out"),
            ("cost", cost),
            ("time", f"{self.seconds:.1f} s ({self.rows_per_second:,.1f} rows/s)"),
        ]  # fmt: skip
        if self.shared():
            rows.insert(1, ("other processes", self.shared()))
        rows.extend(("endpoint", note) for note in self.endpoint_notes)
        return table(f"llmframe run: {self.model}", rows)


def set_last_report(report: RunReport) -> None:
    global _last
    with _last_lock:
        _last = report
    log.info(report.summary())


def last_report() -> RunReport | None:
    """The report of the most recent ``apply`` in this process (``None`` before the first)."""
    return _last


#: Fields worked out from others, or not added: every other number of a part adds up to the run's
#: (a counter added to RunReport later is summed without a change here).
_NOT_SUMMED = frozenset({"failed_rows", "seconds", "cost_usd", "latency_p50", "latency_p95", "batch_size_final"})
_SUMMED = tuple(f.name for f in fields(RunReport) if f.type in ("int", "float") and f.name not in _NOT_SUMMED)


def merge_reports(parts: Sequence[RunReport], seconds: float | None = None) -> RunReport:
    """One report for a run done in parts (Dask partitions, polars batches).

    Counters, tokens and cost add up (the cost is unknown if any part's is); errors
    and latencies are joined, and the failures and percentiles recomputed from
    them; the packing verdict, format and batch size are the last part's that has
    one. ``seconds`` is the run's wall time (the parts ran side by side), by
    default the longest part's. Each error keeps the ``row`` its part gave it.
    """
    out = RunReport(model=next((p.model for p in parts if p.model), ""))
    for part in parts:
        for name in _SUMMED:
            setattr(out, name, getattr(out, name) + getattr(part, name))
        out.cost_usd = None if out.cost_usd is None or part.cost_usd is None else out.cost_usd + part.cost_usd
        out.errors.extend(part.errors)
        out.latencies.extend(part.latencies)
        out.packing_reason = part.packing_reason or out.packing_reason
        out.response_format = part.response_format or out.response_format
        if part.batch_size_final is not None:
            out.batch_size_final = part.batch_size_final
        out.packing_agreement.update(part.packing_agreement)
        out.packing_fields.update(part.packing_fields)
        out.endpoint_notes.extend(n for n in part.endpoint_notes if n not in out.endpoint_notes)
    out.finish(seconds if seconds is not None else max((p.seconds for p in parts), default=0.0))
    return out
