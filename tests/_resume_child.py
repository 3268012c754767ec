"""A child process for tests/test_resume.py: one ``df.llm.apply`` run against a fake server.

Usage: ``python tests/_resume_child.py CONFIG.json``. The config holds::

    base_url, api_key, cache      where to send requests, and the cache folder
    rows                          the row numbers of the frame (column "review": "review <n>")
    backend                       "pandas" or "polars"
    batch_size, max_concurrency   apply options
    result                        where to write the outcome as JSON
    go                            optional: wait for this file to exist before calling apply
    flush_seconds                 optional: override the engine's flush interval (stress tests)
    lease_seconds                 optional: a short claim lease (refreshed six times per lease)

The outcome is ``{"status": "ok", "answers": [...], "report": {...}}``, or, when
Ctrl-C (SIGINT) interrupts the call, ``{"status": "interrupted", "frames": [...],
"report": {...}}`` with the functions the KeyboardInterrupt passed through; the
process then exits with :data:`INTERRUPTED_EXIT`. Any llmframe cache warning
(an unreadable segment, a record that could not be stored) is an error here, but
the one about a killed process's answer log that ends in a torn record.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

TEMPLATE = "Classify the sentiment of: {review}"
MODEL = "gpt-4o-mini"
INTERRUPTED_EXIT = 42
STARTED_SUFFIX = ".started"


def review(n: int) -> str:
    return f"review {n}"


def _report_dict() -> dict[str, Any]:
    import llmframe

    report = llmframe.last_report()
    if report is None:
        return {}
    return {
        "answered_rows": report.answered_rows,
        "cached_rows": report.cached_rows,
        "failed_rows": report.failed_rows,
        "requests": report.requests,
        "answered_elsewhere_rows": report.answered_elsewhere_rows,
        "taken_over_rows": report.taken_over_rows,
        "waited_seconds": report.waited_seconds,
    }


def main(config_path: str) -> int:
    warnings.filterwarnings("error", message="llmframe cache")
    # Except the one a kill -9 may cause: a log whose last write was cut short, folded.
    warnings.filterwarnings("default", message="llmframe cache: the log .* incomplete record")
    config = json.loads(Path(config_path).read_text())
    import pandas as pd
    import polars as pl

    import llmframe  # noqa: F401  (registers df.llm)
    from llmframe import _claims, _engine

    if config.get("flush_seconds") is not None:
        _engine.FLUSH_SECONDS = float(config["flush_seconds"])
    if config.get("lease_seconds") is not None:
        _claims.LEASE_SECONDS = float(config["lease_seconds"])
        _claims.REFRESH_SECONDS = _claims.LEASE_SECONDS / 6
    data = {"review": [review(n) for n in config["rows"]]}
    df: Any = pd.DataFrame(data) if config["backend"] == "pandas" else pl.DataFrame(data)
    result = Path(config["result"])
    Path(str(result) + STARTED_SUFFIX).touch()
    go = config.get("go")
    if go:
        deadline = time.monotonic() + 60
        while not Path(go).exists():
            if time.monotonic() > deadline:
                raise SystemExit("the go file never appeared")
            time.sleep(0.005)
    try:
        out = df.llm.apply(
            TEMPLATE,
            output="sentiment",
            model=MODEL,
            base_url=config["base_url"],
            api_key=config["api_key"],
            cache=config["cache"],
            batch_size=config["batch_size"],
            max_concurrency=config["max_concurrency"],
            progress=False,
        )
    except KeyboardInterrupt as exc:
        frames = [
            f"{Path(f.filename).parent.name}/{Path(f.filename).name}:{f.name}"
            for f in traceback.extract_tb(exc.__traceback__)
        ]
        outcome = {"status": "interrupted", "frames": frames, "report": _report_dict()}
        result.write_text(json.dumps(outcome))
        return INTERRUPTED_EXIT
    answers = (
        out["sentiment"].tolist() if isinstance(out, pd.DataFrame) else out["sentiment"].to_list()
    )
    result.write_text(json.dumps({"status": "ok", "answers": answers, "report": _report_dict()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
