"""Smoke runs of ``benchmarks.packing`` and ``benchmarks.cache`` at a tiny scale.

They prove the scripts run end to end against the fake server and keep their
correctness checks; the performance targets are only meaningful at full scale
(``python -m benchmarks.packing``, ``python -m benchmarks.cache``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from benchmarks import cache as cache_bench
from benchmarks import packing as packing_bench


@pytest.fixture
def fast_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same limits, almost no latency: the smoke run checks the plumbing, not the timing."""
    monkeypatch.setattr(
        packing_bench,
        "RPM_SERVER",
        {**packing_bench.RPM_SERVER, "latency": 0.01, "latency_per_token": 0.0},
    )
    monkeypatch.setattr(
        packing_bench,
        "TPM_SERVER",
        {**packing_bench.TPM_SERVER, "latency": 0.01, "latency_per_token": 0.0},
    )
    monkeypatch.setattr(packing_bench, "LATENCY_SERVER", {"latency": 0.01})
    monkeypatch.setattr(
        packing_bench,
        "SHORT_SERVER",
        {**packing_bench.SHORT_SERVER, "latency": 0.01, "latency_per_token": 0.0},
    )


def test_packing_benchmark_smoke(
    fast_servers: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        code = packing_bench.main(["--scale", "0.05", "--out", str(tmp_path), "--quiet"])
    printed = capsys.readouterr().out
    # Every correctness check passed; the performance targets are not enforced below scale 1.
    assert code == 0, printed
    assert "$ python -m benchmarks.packing --scale 0.05" in printed and "CPUs" in printed
    data = json.loads((tmp_path / "packing.json").read_text())
    runs = {(r["workload"], r["variant"]): r for r in data["results"]}
    assert runs[("rpm", "one-row")]["requests"] == runs[("rpm", "one-row")]["rows"]
    assert runs[("rpm", "packed")]["requests"] < runs[("rpm", "packed")]["rows"]
    assert all(r["correct_rows"] == r["rows"] for key, r in runs.items() if "shuffle" not in key[1])
    assert {c["name"].split(":")[0] for c in data["checks"]} >= {"rpm", "tpm", "short"}
    assert {e["format"] for e in data["format_estimates"]} == {
        "one row per request", "JSON, 20 per request", "id lines, 20 per request"}  # fmt: skip
    assert runs[("short", "batch_size=20, lines")]["response_format"] == "lines"
    for name in ("batch_size", "concurrency"):
        assert (tmp_path / f"packing_throughput_vs_{name}.png").stat().st_size > 0
    assert (tmp_path / "packing_tokens_per_row.png").stat().st_size > 0


def test_adversarial_rows_are_distinct_and_keep_their_answers() -> None:
    rows = packing_bench.adversarial_reviews(400)
    assert len(set(rows)) == len(rows)
    assert set(packing_bench.ADVERSARIAL) <= set(rows)
    task = packing_bench.SENTIMENT_TASK
    expected = task.expected(rows)
    assert len(set(expected)) > 150  # answers tell rows apart, so a misplaced one is caught


def test_extraction_answers_are_per_row() -> None:
    rows = packing_bench.support_messages(50)
    answers = packing_bench.EXTRACTION_TASK.expected(rows)
    assert len(set(answers)) == len(answers)
    assert all(None not in json.loads(a).values() for a in answers)
    assert json.loads(answers[0]) == {
        "name": "Ana Silva",
        "order": "10000",
        "city": "Porto",
        "date": "2024-01-01",
    }


def test_cache_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A server-filled sample plus directly written rows: the direct keys must match the engine's.
    # One backend keeps it quick (each measurement is a fresh process); both run at full scale.
    code = cache_bench.main(
        [
            "--rows",
            "3000",
            "--sample",
            "1000",
            "--fill",
            "direct",
            "--repeat",
            "1",
            "--backends",
            "polars",
            "--out",
            str(tmp_path / "out"),
            "--workdir",
            str(tmp_path / "work"),
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    data = json.loads((tmp_path / "out" / "cache.json").read_text())
    assert data["fill"]["direct_rows"] == 2000 and data["fill"]["verify"]["requests"] == 0
    assert data["server_requests_during_reruns"] == 0
    assert data["summary"]["polars_cold"]["requests"] == 0
    assert data["summary"]["polars_warm"]["requests"] == 0
    assert (tmp_path / "out" / "cache_profile_polars.prof").exists()
    assert "Where the time goes: polars" in printed
