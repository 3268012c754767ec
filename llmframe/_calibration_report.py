"""What :func:`llmframe.calibrate` measured, and its recommendation.

One :class:`CalibrationRow` per batch size; :class:`CalibrationReport` prints as
a table, renders as HTML in Jupyter, plots, and says the recommended size and
why (:func:`recommend`): the largest one that, like every smaller one measured,
agrees with the one-row answers on at least ``min_agreement`` of rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ._html import table

__all__ = ["CalibrationReport", "CalibrationRow", "recommend"]



@dataclass(frozen=True)
class CalibrationRow:
    """One batch size's measurement. Per-row figures divide by the rows sent."""

    batch_size: int
    agreement: float | None  # share of rows agreeing with the one-row answers (1.0 at size 1)
    rows: int  # rows compared (those with a one-row answer)
    failed_rows: int  # rows without an answer at this size (they count as disagreeing)
    requests: int  # HTTP requests, retries and resends included
    items_per_request: float | None  # below batch_size when the token budget cut batches
    prompt_tokens_per_row: float | None
    completion_tokens_per_row: float | None
    cost_per_row: float | None  # None when the model's price is unknown
    seconds: float
    fields: dict[str, float] = field(default_factory=dict)  # schema runs: each field's agreement


_ROW_SCHEMA: dict[str, str] = {
    "batch_size": "Int64",
    "agreement": "Float64",
    "rows": "Int64",
    "failed_rows": "Int64",
    "requests": "Int64",
    "items_per_request": "Float64",
    "prompt_tokens_per_row": "Float64",
    "completion_tokens_per_row": "Float64",
    "cost_per_row": "Float64",
    "seconds": "Float64",
}


@dataclass
class CalibrationReport:
    """What :func:`calibrate` measured and what it recommends.

    ``print(report)`` shows a table and the verdict; ``to_dict()`` every field;
    ``to_frame()`` one row per batch size as a polars DataFrame.

    >>> report = df.llm.calibrate("Capital of {country}?", model="gpt-4o-mini")  # doctest: +SKIP
    >>> report.recommended_batch_size                                            # doctest: +SKIP
    10
    """

    rows: list[CalibrationRow]
    recommended_batch_size: int
    min_agreement: float
    model: str
    template_hash: str
    verdict: str
    sample_rows: int = 0
    key: str = ""
    skipped_batch_sizes: list[int] = field(default_factory=list)

    @property
    def pack(self) -> bool:
        """False when even the smallest packed batch disagrees: do not pack this task."""
        return self.recommended_batch_size > 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrationReport:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        row_names = {f.name for f in fields(CalibrationRow)}
        values["rows"] = [
            CalibrationRow(**{k: v for k, v in row.items() if k in row_names})
            for row in data.get("rows", [])
        ]
        return cls(**values)

    def to_frame(self) -> Any:
        """One row per batch size (polars DataFrame), columns as in :class:`CalibrationRow`."""
        import polars as pl

        schema = {name: getattr(pl, dtype) for name, dtype in _ROW_SCHEMA.items()}
        return pl.DataFrame([[getattr(r, name) for name in _ROW_SCHEMA] for r in self.rows], schema=schema,
                            orient="row")  # fmt: skip

    def field_lines(self) -> list[str]:
        """For schema runs: the fields that disagreed, per batch size."""
        lines = []
        for r in self.rows:
            off = {k: v for k, v in r.fields.items() if v < 1.0}
            if off:
                shown = ", ".join(f"{k} {v:.0%}" for k, v in sorted(off.items(), key=lambda kv: kv[1]))
                lines.append(f"fields agreeing at batch_size {r.batch_size}: {shown}")
        return lines

    def _repr_html_(self) -> str:  # Jupyter
        header = ["batch", "agreement", "rows", "failed", "requests", "items/req",
                  "in tok/row", "out tok/row", "cost/row", "seconds"]  # fmt: skip
        rows = [
            [r.batch_size, _pct(r.agreement), r.rows, r.failed_rows, r.requests,
             _num(r.items_per_request, 1), _num(r.prompt_tokens_per_row, 1),
             _num(r.completion_tokens_per_row, 1), _usd(r.cost_per_row), f"{r.seconds:.2f}"]
            for r in self.rows
        ]  # fmt: skip
        title = (
            f"llmframe calibration: {self.model}, {self.sample_rows} sampled rows; "
            f"recommended batch_size {self.recommended_batch_size}"
        )
        return table(title, rows, header=header, note=" ".join([*self.field_lines(), self.verdict]))

    def plot(self, ax: Any = None) -> Any:
        """Agreement and tokens per row against batch size, on one matplotlib ``Axes``.

        matplotlib is imported only here (``pip install matplotlib``). Returns the axes.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as exc:  # pragma: no cover - matplotlib is in the test extra
            raise ImportError("CalibrationReport.plot() needs matplotlib: pip install matplotlib") from exc
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        sizes = [r.batch_size for r in self.rows]
        ax.plot(sizes, [100 * (r.agreement or 0.0) for r in self.rows], "o-", label="agreement (%)")
        ax.axhline(100 * self.min_agreement, linestyle=":", color="gray", label="min_agreement")
        ax.axvline(self.recommended_batch_size, linestyle="--", color="green", label="recommended")
        ax.set_xlabel("rows per request (batch_size)")
        ax.set_ylabel("agreement with one-row answers (%)")
        ax.set_ylim(0, 105)
        tokens = ax.twinx()
        per_row = [(r.prompt_tokens_per_row or 0) + (r.completion_tokens_per_row or 0) for r in self.rows]
        tokens.plot(sizes, per_row, "s--", color="tab:orange", label="tokens per row")
        tokens.set_ylabel("tokens per row")
        lines = ax.get_legend_handles_labels()[0] + tokens.get_legend_handles_labels()[0]
        labels = ax.get_legend_handles_labels()[1] + tokens.get_legend_handles_labels()[1]
        ax.legend(lines, labels, loc="lower left", fontsize="small")
        ax.set_title(f"calibration: {self.model}")
        return ax

    def __str__(self) -> str:
        head = (
            f"llmframe calibration: {self.model}, {self.sample_rows} sampled rows, "
            f"min_agreement {self.min_agreement:.0%}"
        )
        header = (
            f"{'batch':>6} {'agreement':>10} {'rows':>5} {'failed':>6} {'requests':>8} "
            f"{'items/req':>9} {'in tok/row':>10} {'out tok/row':>11} {'cost/row':>11} {'seconds':>8}"
        )
        lines = [head, header]
        for r in self.rows:
            lines.append(
                f"{r.batch_size:>6} {_pct(r.agreement):>10} {r.rows:>5} {r.failed_rows:>6} "
                f"{r.requests:>8} {_num(r.items_per_request, 1):>9} "
                f"{_num(r.prompt_tokens_per_row, 1):>10} {_num(r.completion_tokens_per_row, 1):>11} "
                f"{_usd(r.cost_per_row):>11} {r.seconds:>8.2f}"
            )
        if self.skipped_batch_sizes:
            skipped = ", ".join(map(str, self.skipped_batch_sizes))
            lines.append(f"not measured (larger than the sample): {skipped}")
        lines.extend(self.field_lines())
        lines.append(f"recommended batch_size: {self.recommended_batch_size}")
        lines.append(self.verdict)
        return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.7f}"


def recommend(rows: Sequence[CalibrationRow], min_agreement: float) -> tuple[int, str]:
    packed = sorted((r for r in rows if r.batch_size > 1), key=lambda r: r.batch_size)
    if not packed:
        return 1, (
            "only one row per request was measured, so there is nothing to compare; "
            "give a larger sample or smaller batch_sizes"
        )
    best = 1
    first_miss: CalibrationRow | None = None
    for row in packed:
        if row.agreement is not None and row.agreement >= min_agreement:
            best = row.batch_size
        else:
            first_miss = row
            break
    need = f"min_agreement {min_agreement:.0%}"
    if first_miss is None:
        return best, (
            f"pack up to {best} rows per request: every measured batch size agrees with the "
            f"one-row answers on at least {min_agreement:.0%} of rows (larger sizes were not measured)"
        )
    seen = _pct(first_miss.agreement)
    if best == 1:
        return 1, (
            f"do not pack this task on this model: at {first_miss.batch_size} rows per request "
            f"only {seen} of answers agree with the one-row answers ({need}); use batch_size=1"
        )
    return best, (
        f"use batch_size={best}: at {first_miss.batch_size} rows per request agreement with "
        f"the one-row answers falls to {seen}, below {need}"
    )


