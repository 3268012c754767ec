"""merge_reports: one report for a run done in parts, and the Dask run folder that feeds it."""

from __future__ import annotations

from pathlib import Path

from llmframe._dask_report import read_run, write_part
from llmframe._errors import RowError
from llmframe._report import RunReport, merge_reports


def part(rows: int, failed_at: list[int], cost: float | None, seconds: float, latencies: list[float]) -> RunReport:
    report = RunReport(model="m", rows=rows, answered_rows=rows - len(failed_at), requests=rows // 2,
                       rate_limited=1, prompt_tokens=10 * rows, completion_tokens=rows, cost_usd=cost,
                       errors=[RowError(r, "too_large", "no") for r in failed_at], latencies=latencies,
                       packing_agreement={10: 1.0}, answered_elsewhere_rows=1, waited_seconds=0.5)  # fmt: skip
    report.finish(seconds)
    return report


def test_counters_add_up_and_derived_fields_are_recomputed() -> None:
    merged = merge_reports([part(10, [3], 0.5, 2.0, [0.1, 0.2]), part(6, [], 0.25, 3.0, [0.9])])
    assert (merged.rows, merged.answered_rows, merged.failed_rows, merged.requests) == (16, 15, 1, 8)
    assert (merged.rate_limited, merged.prompt_tokens, merged.completion_tokens) == (2, 160, 16)
    assert merged.cost_usd == 0.75 and merged.seconds == 3.0 and merged.failures == {"too_large": 1}
    assert merged.answered_elsewhere_rows == 2 and merged.waited_seconds == 1.0  # every counter adds up
    assert merged.latency_p50 == 0.2 and merged.latency_p95 == 0.9 and merged.packing_agreement == {10: 1.0}
    # A part of unknown cost makes the whole unknown; the wall time can be given.
    assert merge_reports([part(2, [], 0.1, 1.0, []), part(2, [], None, 1.0, [])], seconds=7.5).cost_usd is None
    assert merge_reports([part(2, [], 0.1, 1.0, [])], seconds=7.5).seconds == 7.5
    assert merge_reports([]).rows == 0


def test_run_folder_places_errors_in_the_whole_frame_and_a_rerun_replaces_its_part(tmp_path: Path) -> None:
    assert read_run(tmp_path / "none") is None
    write_part(tmp_path, 1, part(6, [2], 0.1, 1.0, []), 100.0, 104.0)
    write_part(tmp_path, 0, part(10, [3], 0.1, 1.0, []), 101.0, 103.0)
    write_part(tmp_path, 1, part(6, [0, 2], 0.1, 1.0, []), 102.0, 105.0)  # partition 1 again: replaces
    merged = read_run(tmp_path)
    assert merged is not None and merged.rows == 16
    assert [e.row for e in merged.errors] == [3, 10, 12]  # partition 1 starts at row 10
    assert merged.seconds == 4.0  # from the first start to the last finish
    assert merged.packing_agreement == {10: 1.0}  # int keys back from JSON
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-0.json", "part-1.json"]
