"""Every benchmark runs end to end at a tiny scale, so that none of them rots.

The numbers at that scale mean nothing (a run fits in the buckets' first
burst); what is checked is that each script runs, prints its table, saves its
JSON, and that llmframe still answers every row correctly in every variant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
# `python -m pytest` puts the repo on sys.path, plain `pytest` does not: benchmarks/ lives there.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import rate_limits  # noqa: E402
from benchmarks._common import (  # noqa: E402
    achieved_rates,
    apply_on_server,
    command_line,
    format_table,
    ideal_send_seconds,
    phrase_rows,
    rate_timeline,
    save_json,
    scaled,
)
from llmframe.testing import FakeServer, expected_answer  # noqa: E402
from llmframe.testing._stats import RequestRecord  # noqa: E402


def test_rate_limits_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert rate_limits.main(["--scale", "0.01", "--out", str(tmp_path), "--no-plot"]) == 0
    printed = capsys.readouterr().out
    assert "command: python -m benchmarks.rate_limits --scale 0.01" in printed
    assert "machine: " in printed and "burst_seconds=1" in printed
    [saved] = tmp_path.glob("rate_limits-*.json")
    result = json.loads(saved.read_text())
    variants = {v["name"]: v for v in result["variants"]}
    assert list(variants) == list(rate_limits.VARIANTS)
    for name, v in variants.items():
        assert rate_limits.LABELS[name] in printed
        assert v["rows"] > 0 and v["requests"] > 0
        if name != "naive":  # the naive gather may lose rows to 429s; that is its point
            assert v["correct"] == v["rows"], (name, v)
    assert variants["two_calls"]["rows"] == result["settings"]["two_calls_rows"]
    assert result["machine"]["cores"] >= 1


@pytest.mark.alone  # no 429 and an even split between two processes
def test_processes_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import processes

    # Two processes on 8 rows, the machine limiter only (the default one is the same code with
    # another option): the plumbing, the table and every answer; the numbers mean nothing.
    argv = ["--scale", "0.013", "--processes", "2", "--variants", "machine"]
    assert processes.main([*argv, "--out", str(tmp_path)]) in (0, 1)
    printed = capsys.readouterr().out
    assert "command: python -m benchmarks.processes --scale 0.013 --processes 2" in printed
    assert 'limiter="machine"' in printed and "reservation (acquire + settle" in printed
    [saved] = tmp_path.glob("processes-*.json")
    result = json.loads(saved.read_text())
    variants = {v["name"]: v for v in result["variants"]}
    assert list(variants) == ["machine"]
    machine = variants["machine"]
    assert machine["rows"] == 8 and machine["correct"] == 8 and machine["rate_limited"] == 0
    assert [c["requests"] for c in machine["client"]["children"]] == [4, 4]
    cost = result["reservations_per_second"]
    assert cost["machine"] > 0 and cost["process"] > 0


def test_rate_limits_rejects_unknown_variant() -> None:
    with pytest.raises(SystemExit):
        rate_limits.main(["--variants", "given,nope"])


def _record(
    start: float, end: float, status: int = 200, prompt: int = 10, out: int = 2
) -> RequestRecord:
    return RequestRecord(
        start, end, status, prompt, out if status == 200 else 0, 1 if status == 200 else 0
    )


def test_achieved_rates_over_the_busy_window() -> None:
    # 60 RPM = 1/s, 600 TPM = 10 tokens/s; 4 answered requests of 12 tokens in 4 s.
    log = [_record(i, i + 0.5) for i in range(3)] + [_record(3.0, 4.0)]
    log.append(_record(3.5, 3.6, status=429))
    log.append(_record(3.6, 3.7, status=503, prompt=10))
    rates = achieved_rates(log, rpm=60, tpm=600)
    assert rates.window_seconds == 4.0
    assert (rates.requests, rates.answered, rates.rate_limited) == (5, 4, 1)
    assert rates.tokens == 48  # the 5xx is refunded, the 429 never admitted
    assert rates.rpm_fraction == pytest.approx(5 / 4)
    assert rates.tpm_fraction == pytest.approx(48 / 4 / 10)
    # Without a burst, each request after the first is paced by tokens (1.2 s), the 5xx by
    # requests (1 s); the client took 3.6 s from the first admission to the last.
    assert rates.binding_fraction == pytest.approx((3 * 1.2 + 1.0) / 3.6)
    bursty = achieved_rates(log, rpm=60, tpm=600, burst_seconds=2.0)
    assert bursty.binding_fraction == pytest.approx(ideal_send_seconds(
        [12, 12, 12, 12, 0], rpm=60, tpm=600, burst_seconds=2.0) / 3.6)  # fmt: skip
    assert (bursty.binding_fraction or 0) < (rates.binding_fraction or 0)
    assert achieved_rates([], rpm=60, tpm=None).binding_fraction is None
    assert achieved_rates(log, rpm=None, tpm=None).binding_fraction is None


def test_rate_timeline_bins_by_start() -> None:
    log = [_record(0.1, 0.2), _record(0.5, 2.5), _record(1.2, 1.3, status=429)]
    assert rate_timeline(log, bin_seconds=1.0) == [
        (0.0, 2.0, 24.0, 0),
        (1.0, 0.0, 0.0, 1),
        (2.0, 0.0, 0.0, 0),
    ]


def test_table_scale_command_and_json(tmp_path: Path) -> None:
    text = format_table(["variant", "rows/s", "share"], [["a", 19.71, "97%"], ["bb", None, "5%"]])
    assert text.splitlines() == [
        "variant  rows/s  share",
        "-------  ------  -----",
        "a          19.7    97%",
        "bb            -     5%",
    ]
    assert (scaled(2000, 0.1), scaled(200, 0.001), scaled(200, 0.001, minimum=4)) == (200, 1, 4)
    assert command_line("benchmarks.x", ["--scale", "0.1"]) == "python -m benchmarks.x --scale 0.1"
    payload: dict[str, Any] = {"log": [_record(0, 1)], "inf": float("inf"), "path": tmp_path}
    saved = json.loads(save_json("unit", payload, tmp_path).read_text())
    assert saved["log"][0]["status"] == 200 and saved["inf"] is None
    assert saved["path"] == str(tmp_path)


def test_phrase_rows_visit_every_combination_once() -> None:
    parts = ("abc", "xy", "pqrst")  # 30 combinations
    rows = phrase_rows(30, parts, step=7, distinct=True)
    assert len(set(rows)) == 30 and rows == phrase_rows(30, parts, step=7)
    assert rows[:2] == [("a", "x", "p"), ("b", "x", "q")]  # row 1: 7 = 1 + 0 * 3 + 1 * 6
    assert phrase_rows(31, parts)[30] == phrase_rows(1, parts)[0]  # without distinct: it wraps
    with pytest.raises(ValueError, match="at most 30 distinct rows, asked for 31"):
        phrase_rows(31, parts, distinct=True)
    with pytest.raises(ValueError, match="step 6 shares a factor"):
        phrase_rows(5, parts, step=6, distinct=True)


def test_apply_on_server_times_and_checks_one_call(fake_server: FakeServer) -> None:
    values = ["good", None, "bad"]
    run = apply_on_server(fake_server, "Sentiment of {review}", "review", values, cache=False)
    assert run.answers == [expected_answer("Sentiment of good"), None, expected_answer("Sentiment of bad")]
    assert run.report.requests == fake_server.stats.requests and run.report.null_rows == 1
    assert run.seconds > 0


def test_structured_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import structured

    # A fast server: the smoke run checks the plumbing and every field, not the timing.
    fast = {**structured.SERVER, "rpm": 6_000, "latency": 0.01, "latency_per_token": 0.0}
    monkeypatch.setattr(structured, "SERVER", fast)
    assert structured.main(["--scale", "0.05", "--out", str(tmp_path), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "command: python -m benchmarks.structured --scale 0.05" in printed
    assert "machine: " in printed and "fields ok" in printed
    [saved] = tmp_path.glob("structured-*.json")
    result = json.loads(saved.read_text())
    checks = result["checks"]
    assert all(c["ok"] for c in checks if c["kind"] == "correctness"), checks
    assert {c["name"] for c in checks if c["kind"] == "target"} == {
        "main: packed >= 10x rows/s",
        "main: packed output tokens/row <= 1.2x one-row",
    }
    runs = {(r["workload"], r["variant"]): r for r in result["results"]}
    one, packed = runs[("main", "one-row")], runs[("main", "packed")]
    assert one["requests"] == one["rows"] and packed["requests"] < packed["rows"] / 4
    assert packed["correct_fields"] == 4 * packed["rows"]
    faults = [r for (w, _), r in runs.items() if w == "faults"]
    assert len(faults) == 2 + len(structured.FAULT_KINDS) + 1  # clean, mixed, each, shuffle
    assert sum(sum(r["packing_faults"].values()) for r in faults) > 0, "faults were injected"
    assert all(r["wrong_rows"] == 0 for r in faults if "shuffle" not in r["variant"])


def test_throughput_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import throughput

    # pandas with the server in its own process, measured and profiled: two fresh processes of
    # 100 rows (the thread mode and polars: below). The numbers mean nothing at this size.
    argv = ["--scale", "0.001", "--repeat", "1", "--backends", "pandas", "--modes", "process"]
    assert throughput.main([*argv, "--out", str(tmp_path), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "command: python -m benchmarks.throughput --scale 0.001" in printed
    assert "load:    before:" in printed and "top 15 by own time:" in printed
    assert "llmframe/_engine.py" in printed and "own time summed per module" in printed
    [saved] = tmp_path.glob("throughput-*.json")
    result = json.loads(saved.read_text())
    assert [(r["backend"], r["mode"]) for r in result["results"]] == [("pandas", "process")]
    for r in [*result["results"], result["profiled"]]:
        assert r["rows"] == 100 and r["wrong_answers"] == 0 and r["failed_rows"] == 0
        assert r["checked_rows"] == 100 and r["cached_rows"] == 0
        assert r["requests"] >= 100 / 20 and r["server_requests"] == r["requests"]
        # The task packs (a task too short to pack would measure the SDK per row instead).
        assert r["batch_size_final"] == 20 and r["requests"] < r["rows"] / 2, r["packing_reason"]
        assert r["server_cpu_seconds"] > 0 and 0 < r["server_share"] < 1
        assert r["peak_increase"] > 0 and r["frame_bytes"] > 0
    # The second memory figure: another fresh process, warmed up by other rows before its baseline.
    [measured] = result["results"]
    warm = measured["warm"]
    assert warm["warm_up"]["rows"] == throughput.WARM_ROWS and warm["warm_up"]["kept"] > 0
    imported = warm["warm_up"]["modules_imported"]
    assert imported > 0 and warm["modules_imported"] < imported
    assert (warm["wrong_answers"], warm["failed_rows"], warm["cached_rows"]) == (0, 0, 0)
    assert warm["peak_x_frame"] == warm["peak_increase"] / measured["frame_bytes"]
    assert measured["warm_up"] is None and "warm +MB" in printed
    assert result["failures"] == []


def test_throughput_measures_polars(tmp_path: Path) -> None:
    import argparse

    from benchmarks import throughput

    # The polars frame and answers with the server in a thread, in this process (timings and
    # memory mean nothing here).
    args = argparse.Namespace(
        backend="polars", rows=50, mode="thread", out=tmp_path, profile=False,
        base_url=None, api_key=None,
    )  # fmt: skip
    r = throughput.child_measure(args)
    assert (r["rows"], r["checked_rows"], r["wrong_answers"], r["failed_rows"]) == (50, 50, 0, 0)
    assert r["server_thread_cpu_seconds"] is not None and r["requests"] >= 50 / 20
    assert 0 < r["server_thread_cpu_seconds"] < r["client_cpu_seconds"]


def test_embeddings_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import embeddings

    assert embeddings.main(["--scale", "0.01", "--repeat", "1", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "command: python -m benchmarks.embeddings --scale 0.01" in printed
    assert "one text per request" in printed and "embed / apply speed" in printed
    [saved] = tmp_path.glob("embeddings-*.json")
    result = json.loads(saved.read_text())
    packing, cached = result["packing"], result["cached"]
    assert packing["packed"]["requests"] == 1 and packing["one text per request"]["requests"] == 50
    assert packing["packed"]["correct"] and packing["one text per request"]["correct"]
    assert cached["rows"] == 10_000 and cached["server_requests"] == 0
    assert set(cached["rows_per_second"]) == {"embed", "apply", "embed, rows shuffled", "embed, compacted"}


def test_durability_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import durability

    # One kill with the log and one without: the plumbing, not the numbers.
    argv = ["--rows", "100", "--kills", "1", "--baseline-kills", "1", "--seed", "4", "--window", "0.3"]
    assert durability.main([*argv, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "command: python -m benchmarks.durability --rows 100" in printed and "machine: " in printed
    [saved] = tmp_path.glob("durability-*.json")
    result = json.loads(saved.read_text())
    assert [t["name"] for t in result["trials"]] == ["log-1", "baseline-1"]
    for t in result["trials"]:
        assert t["rerun_correct"] and t["paid_twice"] >= 0
        assert t["answered"] + t["rerun_asked"] >= 100  # every row answered, some maybe twice
    assert result["summary"]["passed"] == 1 and result["summary"]["run_seconds"] > 0


def test_warm_start_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import warm_start

    assert warm_start.main(["--scale", "0.01", "--tasks", "short", "--burst", "60", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "command: python -m benchmarks.warm_start --scale 0.01" in printed
    [saved] = tmp_path.glob("warm_start*.json")
    results = json.loads(saved.read_text())["results"]
    assert [r["variant"] for r in results] == ["batch_size=1", "default, first process", "default, second process"]
    assert all(r["burst_seconds"] == 60 for r in results)
    assert all(r["correct"] == r["rows"] == 60 for r in results)


def test_sdk_floor_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import sdk_floor

    assert sdk_floor.main(["--requests", "40", "--rounds", "2", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "command: python -m benchmarks.sdk_floor --requests 40 --rounds 2" in printed
    [saved] = tmp_path.glob("sdk_floor-*.json")
    result = json.loads(saved.read_text())
    assert result["rows_per_request"] == 20  # the throughput workload's batch size, not the probe's 2
    per_request = result["cpu_seconds_per_request"]
    assert set(per_request) == {"aiohttp", "SDK"} and all(len(v) == 2 and min(v) > 0 for v in per_request.values())


def test_batch_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import batch

    assert batch.main(["--scale", "0.02", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "command: python -m benchmarks.batch --scale 0.02" in printed and "batch mode" in printed
    [saved] = tmp_path.glob("batch-*.json")
    live, through_batch = json.loads(saved.read_text())["results"]
    assert live["mode"] == "live" and through_batch["mode"] == "batch"
    assert live["correct"] == through_batch["correct"] == 200
    assert through_batch["batches"] == 1 and through_batch["live_requests"] == 0


def test_claims_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import claims

    assert claims.main(["--shared", "40", "--own", "5", "--out", str(tmp_path)]) == 0
    assert "command: python -m benchmarks.claims --shared 40" in capsys.readouterr().out
    [saved] = tmp_path.glob("claims-*.json")
    by_claims = {r["claims"]: r for r in json.loads(saved.read_text())["results"]}
    assert by_claims[True]["shared_asked_twice"] == 0 and by_claims[True]["asked"] == 50


def test_dask_lazy_and_scale_out_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    distributed = pytest.importorskip("distributed")
    from benchmarks import dask_lazy, scale_out

    # One LocalCluster of 2 processes for both (each would start its own): the plumbing, every answer.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:  # fmt: skip
        client.wait_for_workers(2)  # under CI's load both may register after the cluster returns
        argv = ["--scale", "0.005", "--rpm", "6000", "--out", str(tmp_path)]
        assert dask_lazy.main(argv, client=client) == 0
        printed = capsys.readouterr().out
        assert "command: python -m benchmarks.dask_lazy --scale 0.005" in printed and "429 share" in printed
        argv = ["--scale", "0.0002", "--partitions", "3", "--quota-rows", "20", "--rpm", "6000", "--out", str(tmp_path)]
        assert scale_out.main(argv, client=client) == 0
    [saved] = tmp_path.glob("dask_lazy-*.json")
    result = json.loads(saved.read_text())
    assert [t["run"] for t in result["throughput"]][:2] == ["pandas eager (baseline)", "dask, 2 processes, 8 partitions"]
    assert [q["run"] for q in result["quota"]][:3] == ["pandas eager", "dask, 2 processes",
                                                       "dask, 2 processes, limiter='machine'"]  # fmt: skip
    assert all(q["rows"] == 100 and q["requests"] >= 1 for q in result["quota"])
    printed = capsys.readouterr().out
    assert "command: python -m benchmarks.scale_out --scale 0.0002" in printed and "x local" in printed
    [saved] = tmp_path.glob("scale_out-*.json")
    result = json.loads(saved.read_text())
    local, dask = result["runs"]
    assert local["rows"] == dask["rows"] == 200 and dask["requests"] >= 2  # every answer checked inside
    assert len(dask["peak_bytes"]) == 2 and all(peak > 10**7 for peak in dask["peak_bytes"])  # VmHWM of each worker
    assert [q["rows"] for q in result["quota"]] == [20] * len(result["quota"])
