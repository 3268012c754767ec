"""What a finished run hands back: every row's answer, the failed rows, the report; or the
error the run ended with."""

from __future__ import annotations

from dataclasses import dataclass

from ._answers import Answers
from ._client import CallError
from ._config import Options
from ._errors import AuthenticationError, EndpointError, RowError, RunError
from ._prepare import Prepared
from ._report import RunReport

__all__ = ["RunResult", "result_of"]


@dataclass
class RunResult:
    answers: Answers  # every row's, compactly; ``list(answers)`` for Python strings
    errors: list[RowError]
    report: RunReport


def result_of(prepared: Prepared, fatal: CallError | None, opts: Options) -> RunResult:
    """A finished run's result; raises as the run ended: stopped (``fatal``), or with failed
    rows and ``errors="raise"``."""
    report, n_rows = prepared.report, len(prepared.answers)
    errors = sorted(report.errors, key=lambda e: e.row)
    if fatal is not None:
        error = AuthenticationError if fatal.kind == "auth" else EndpointError
        raise error(f"{fatal.message} ({len(errors)} of {n_rows} rows without an answer)", errors, report)
    if errors and opts.errors == "raise":
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(report.failures.items()))
        raise RunError(
            f"{len(errors)} of {n_rows} rows failed ({kinds}); first: {errors[0]}. "
            "Every other row was answered and cached; run again to retry only the failed rows.",
            errors, report,
        )  # fmt: skip
    return RunResult(prepared.answers, errors, report)

