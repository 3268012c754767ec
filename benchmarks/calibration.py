"""Calibration benchmark: does ``calibrate`` find where packing breaks a model?

Two fake models (:class:`llmframe.testing.Degrade` curves), each calibrated on a
sample of a 1,000-row frame at batch sizes 1/5/10/20/50 (row counts at
``--scale 1``):

- **sturdy**: a large model; no wrong answers up to 20 rows per request, then
  +0.5% per extra row (``Degrade(error_per_item=0.005, start=20)``).
- **small**: a 0.5B-class model; +4% wrong answers per row beyond the first,
  and in requests of more than 6 rows it runs one row behind
  (``Degrade(error_per_item=0.04, start=1, shift_after=6)``).

Because each curve is known, so is the agreement to expect at every batch size
(``expected``: computed from the curve and the batches the sample is cut
into); the check is that calibrate's recommendation equals the largest size
whose expected agreement reaches ``min_agreement``. The baseline is the
one-row pass measured in the same run: tokens and requests per row are shown
as ratios to it. The table, a plot and a JSON of every number go to
``benchmarks/out/``.

Usage::

    python -m benchmarks.calibration              # ~10 s
    python -m benchmarks.calibration --scale 0.2  # a quick look
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from benchmarks._common import (
    MODEL,
    add_standard_arguments,
    command_line,
    format_table,
    machine,
    run_header,
    save_json,
    scaled,
)
from llmframe._calibrate import CalibrationReport, calibrate
from llmframe.testing import Degrade, FakeServer

TEMPLATE = (
    "You are a careful geography assistant. Give the capital city of the country below, "
    "in English, with no explanation and no punctuation.\nCountry: {country}"
)
BATCH_SIZES = (1, 5, 10, 20, 50)
MIN_AGREEMENT = 0.95
ROWS = 1000
SAMPLE = 100


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    degrade: Degrade


PROFILES = (
    Profile(
        "sturdy",
        "a large model: no errors up to 20 rows per request, +0.5% per row beyond",
        Degrade(error_per_item=0.005, start=20),
    ),
    Profile(
        "small",
        "a 0.5B-class model: +4% errors per row beyond 1, and runs one row behind after row 6",
        Degrade(error_per_item=0.04, start=1, shift_after=6),
    ),
)


def expected_agreement(degrade: Degrade, sample: int, batch_size: int) -> float:
    """The agreement the curve predicts for ``sample`` rows cut into batches of ``batch_size``."""
    sizes = [batch_size] * (sample // batch_size) + (
        [sample % batch_size] if sample % batch_size else []
    )
    right = 0.0
    for n in sizes:
        if n == 1:
            right += 1
            continue
        p = degrade.error_rate(n)
        # Shifted items carry another row's answer; the first k keep theirs if not made wrong.
        k = degrade.shift_after
        kept = min(n, k) if k is not None and n > k else n
        right += kept * (1 - p)
    return right / sample


def expected_recommendation(degrade: Degrade, sample: int) -> int:
    best = 1
    for size in BATCH_SIZES[1:]:
        if size > sample or expected_agreement(degrade, sample, size) < MIN_AGREEMENT:
            break
        best = size
    return best


def countries(n: int) -> pl.DataFrame:
    return pl.DataFrame({"country": [f"Country number {i}" for i in range(n)]})


def run_profile(profile: Profile, sample: int, rows: int) -> CalibrationReport:
    with (
        FakeServer(degrade=profile.degrade, latency=0.01) as server,
        tempfile.TemporaryDirectory() as d,
    ):
        return calibrate(
            countries(rows),
            TEMPLATE,
            sample=sample,
            batch_sizes=BATCH_SIZES,
            min_agreement=MIN_AGREEMENT,
            model=MODEL,
            base_url=server.base_url,
            api_key=server.api_key,
            progress=False,
            cache=d,
        )


HEADER = ["batch", "agreement", "expected", "tokens/row", "vs 1-row", "requests", "vs 1-row"]


def table_rows(profile: Profile, report: CalibrationReport) -> list[list[object]]:
    base = report.rows[0]
    base_tokens = (base.prompt_tokens_per_row or 0) + (base.completion_tokens_per_row or 0)
    rows: list[list[object]] = []
    for r in report.rows:
        tokens = (r.prompt_tokens_per_row or 0) + (r.completion_tokens_per_row or 0)
        expected = expected_agreement(profile.degrade, report.sample_rows, r.batch_size)
        rows.append(
            [
                r.batch_size,
                f"{r.agreement or 0:.1%}",
                f"{expected:.1%}",
                tokens,
                f"{tokens / base_tokens if base_tokens else 0:.2f}x",
                r.requests,
                f"{r.requests / base.requests if base.requests else 0:.2f}x",
            ]
        )
    return rows


def plot(results: Sequence[tuple[Profile, CalibrationReport]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for profile, report in results:
        sizes = [r.batch_size for r in report.rows]
        (line,) = ax.plot(
            sizes, [r.agreement or 0 for r in report.rows], marker="o", label=profile.name
        )
        ax.axvline(report.recommended_batch_size, color=line.get_color(), linestyle=":")
    ax.axhline(
        MIN_AGREEMENT, color="grey", linestyle="--", label=f"min_agreement {MIN_AGREEMENT:.0%}"
    )
    ax.set_xscale("log")
    ax.set_xticks(list(BATCH_SIZES), [str(b) for b in BATCH_SIZES])
    ax.set_xlabel("rows per request")
    ax.set_ylabel("agreement with one-row answers")
    ax.set_title("llmframe calibrate against degrading fake models")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.calibration",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_standard_arguments(parser)
    parser.add_argument("--no-plot", action="store_true", help="do not save the PNG plot")
    args = parser.parse_args(argv)
    sample = scaled(SAMPLE, args.scale, minimum=10)
    rows = scaled(ROWS, args.scale, minimum=sample)
    started = datetime.now(timezone.utc)

    results: list[tuple[Profile, CalibrationReport]] = []
    mismatches = 0
    sections = []
    for profile in PROFILES:
        report = run_profile(profile, sample, rows)
        results.append((profile, report))
        predicted = expected_recommendation(profile.degrade, report.sample_rows)
        mismatches += predicted != report.recommended_batch_size
        sections.append(
            "\n".join(
                [
                    f"{profile.name}: {profile.description}",
                    f"  {profile.degrade}",
                    format_table(HEADER, table_rows(profile, report)),
                    f"recommended batch_size {report.recommended_batch_size} (the curve predicts "
                    f"{predicted}: {'ok' if predicted == report.recommended_batch_size else 'DIFFERS'})",
                    report.verdict,
                ]
            )
        )
    print(run_header(command_line("benchmarks.calibration", argv), started))
    print(f"sample: {sample} of {rows} rows, min_agreement {MIN_AGREEMENT:.0%}\n")
    print("\n\n".join(sections))
    saved = save_json(
        "calibration",
        {
            "command": command_line("benchmarks.calibration", argv),
            "date": started,
            "machine": machine(),
            "sample": sample,
            "rows": rows,
            "min_agreement": MIN_AGREEMENT,
            "profiles": [
                {
                    "name": profile.name,
                    "degrade": profile.degrade,
                    "expected": {
                        b: expected_agreement(profile.degrade, report.sample_rows, b)
                        for b in BATCH_SIZES
                    },
                    "expected_recommendation": expected_recommendation(
                        profile.degrade, report.sample_rows
                    ),
                    "report": report.to_dict(),
                }
                for profile, report in results
            ],
        },
        args.out,
    )
    print(f"\nresults saved to {saved}")
    if not args.no_plot and plot(results, Path(args.out) / "calibration_agreement.png"):
        print(f"plot saved to {Path(args.out) / 'calibration_agreement.png'}")
    # Below the specified sample, sampling noise may move the crossing: report, do not fail.
    return 1 if mismatches and sample >= SAMPLE else 0


if __name__ == "__main__":
    sys.exit(main())
