"""Run every benchmark, print one summary table, regenerate cost-analysis.md.

    python -m benchmarks                 # everything at full size (~30 minutes on 2 cores)
    python -m benchmarks --scale 0.1     # a quick pass (rows scaled; limits and latencies not)
    python -m benchmarks --only packing,cache

Each benchmark is its own script (``python -m benchmarks.<name>``), run here in a
fresh process so one cannot warm the next; each prints its own tables, saves its
JSON and PNG plots under ``benchmarks/out/`` and compares against a baseline
measured in the same run. This entry point then reads the newest results and
prints the headline of each in one table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "out"
ROOT = Path(__file__).parent.parent

BENCHMARKS = ["rate_limits", "processes", "packing", "structured", "cache", "calibration", "throughput", "embeddings",
              "durability", "claims", "dask_lazy", "scale_out", "batch"]  # fmt: skip


def _newest(pattern: str) -> dict[str, Any] | None:
    files = sorted(OUT.glob(pattern), key=lambda p: p.stat().st_mtime)
    return json.loads(files[-1].read_text()) if files else None


def _rate_limits(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    by_name = {v["name"]: v for v in d["variants"]}
    for name in ("given", "learned", "faults", "two_calls"):
        v = by_name.get(name)
        if v:
            rows.append((
                f"rate_limits: {v['label']}",
                f"{v['rates']['binding_fraction']:.0%} of the binding limit, "
                f"{v['share_429']:.1%} 429s, {v['correct']}/{v['rows']} correct",
                "target >= 90%, <= 1%, 100%",
            ))  # fmt: skip
    for name in ("naive", "sequential"):
        v = by_name.get(name)
        if v:
            rows.append((
                f"rate_limits: {v['label']} (baseline)",
                f"{v['rows_per_second']:.1f} rows/s, {v['share_429']:.0%} 429s, "
                f"{v['correct']}/{v['rows']} correct",
                "",
            ))  # fmt: skip
    return rows


def _processes(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    n = d["settings"]["processes"]
    for v in d["variants"]:
        machine = v["name"] == "machine"
        rows.append((
            f"processes: {n} on one key, limiter={v['name']!r}" + ("" if machine else " (baseline)"),
            f"{v['rates']['binding_fraction']:.0%} of the binding limit, {v['share_429']:.1%} 429s, "
            f"{v['correct']}/{v['rows']} correct",
            "target >= 90%, <= 1%, 100%" if machine else "",
        ))  # fmt: skip
    cost = d.get("reservations_per_second") or {}
    if cost:
        rows.append(("processes: reservations/s of one process", f"machine {cost['machine']:,.0f}/s, "
                     f"in-process {cost['process']:,.0f}/s", ""))  # fmt: skip
    return rows


def _packing(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(f"packing: {c['name']}", c["detail"], "ok" if c["ok"] else "MISSED") for c in d["checks"]
            if c.get("kind") in ("target", "cost") or "cost" in c["name"]]  # fmt: skip


def _structured(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    checks = d["checks"]
    rows = [(f"structured: {c['name']}", c["detail"], "ok" if c["ok"] else "MISSED")
            for c in checks if c["kind"] == "target"]  # fmt: skip
    faults = [c for c in checks if c["kind"] == "correctness" and c["name"].startswith("faults")]
    main = [c for c in checks if c["kind"] == "correctness" and c["name"].startswith("main")]
    rows.append(("structured: 100% of fields correct, packed and one-row",
                 f"{sum(c['ok'] for c in main)}/{len(main)} runs", "ok" if all(c["ok"] for c in main) else "MISSED"))  # fmt: skip
    rows.append(("structured: packing faults at 20%, never a wrong row",
                 f"{sum(c['ok'] for c in faults)}/{len(faults)} runs", "ok" if all(c["ok"] for c in faults) else "MISSED"))  # fmt: skip
    return rows


def _cache(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for name, s in d.get("summary", {}).items():
        rows.append((
            f"cache: 1M-row fully cached re-run, {name.replace('_', ' ')}",
            f"{s['rows_per_second']:,.0f} rows/s, peak {s['peak_x_frame']:.1f}x the frame",
            f"target >= 200,000 rows/s ({'ok' if s['speed_ok'] else 'MISSED'}), "
            f"<= 3x ({'ok' if s['memory_ok'] else 'MISSED'})",
        ))  # fmt: skip
    fill = d.get("fill", {})
    if fill.get("bytes_per_million_rows"):
        rows.append(("cache: size on disk", f"{fill['bytes_per_million_rows'] / 1e6:.1f} MB per million rows", ""))
    return rows


def _calibration(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for p in d.get("profiles", []):
        rows.append((
            f"calibration: {p['name']}",
            f"recommends batch_size={p['report']['recommended_batch_size']}",
            f"the curve predicts {p['expected_recommendation']}",
        ))  # fmt: skip
    return rows


def _throughput(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    results = [r for r in d.get("results", []) if r["mode"] == "process"]
    for backend, size in sorted({(r["backend"], r["rows"]) for r in results}):
        runs = [r for r in results if (r["backend"], r["rows"]) == (backend, size)]
        rate = max(min(r["rows_per_second"], r["rows_per_client_cpu_second"] or 0) for r in runs)
        ratio = max(r["peak_x_frame"] for r in runs)
        share = max(r["server_share"] or 0 for r in runs)
        rows.append((
            f"throughput: {size:,} rows uncached, {backend}, server in its own process",
            f"{rate:,.0f} rows/s per core (best of {len(runs)}), peak {ratio:.1f}x the frame, "
            f"server {share:.0%} of the CPU",
            f"target >= 20,000 rows/s ({'ok' if rate >= 20_000 else 'MISSED'}), <= 3x at 1M"
            + (f" ({'ok' if ratio <= 3 else 'MISSED'})" if size >= 1_000_000 else ""),
        ))  # fmt: skip
    return rows


def _embeddings(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    packing, cached = d["packing"], d["cached"]
    return [
        ("embeddings: packed vs one text per request",
         f"{packing['request_ratio']:,.0f}x fewer requests, {packing['speedup']:.1f}x faster", ""),
        (f"embeddings: {cached['rows']:,}-row cached re-run vs apply's",
         f"{cached['rows_per_second']['embed']:,.0f} vs {cached['rows_per_second']['apply']:,.0f} rows/s",
         f"target >= 1x ({'ok' if cached['embed_vs_apply'] >= 1 else 'MISSED'})"),
    ]  # fmt: skip


def _durability(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    s = d["summary"]
    per_kill = s["paid_twice"] / max(1, s["kills"])
    baseline = s["baseline_paid_twice"] / max(1, s["baseline_kills"])
    return [(
        f"durability: kill -9 at random instants, {d['rows']:,} rows, batch_size=10",
        f"{s['passed']}/{s['kills']} kills paid twice only rows in flight ({per_kill:.0f} rows per kill; "
        f"{baseline:.0f} without the log)",
        f"target: every kill, every re-run correct ({'ok' if s['passed'] == s['kills'] and s['all_reruns_correct'] else 'MISSED'})",
    )]  # fmt: skip


def _batch(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    live, batch = d["results"]
    return [(
        f"batch: {batch['rows']:,} rows through the Batch API vs live",
        f"{batch['requests']:,} requests ({batch['rows'] / batch['requests']:.1f} rows each), "
        f"{batch['cost_usd'] / live['cost_usd']:.2f}x the live cost, {batch['correct']:,}/{batch['rows']:,} correct",
        f"target <= rows/15 requests, 0.5x ({'ok' if batch['requests'] * 15 <= batch['rows'] else 'MISSED'})",
    )]  # fmt: skip


def _claims(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    by = {r["claims"]: r for r in d["results"]}
    return [(
        f"claims: two processes, {d['shared']:,} shared rows into one cache folder",
        f"shared rows asked twice: {by[True]['shared_asked_twice']} with claims, {by[False]['shared_asked_twice']} "
        f"without; a claim {d['cost']['per_row_us']:.1f} us per row",
        f"target 0 ({'ok' if by[True]['shared_asked_twice'] == 0 else 'MISSED'})",
    )]  # fmt: skip


def _quota_rows(name: str, quota: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    rows = []
    for q in quota:
        shared = "limiter=" in q["run"]
        binding = q["binding_fraction"] or 0.0
        ok = binding >= 0.9 and q["share_429"] <= 0.01
        rows.append((f"{name}: quota, {q['run']}" + ("" if shared else " (baseline)"),
                     f"{q['share_429']:.1%} 429s, {binding:.0%} of the binding limit",
                     f"target >= 90%, <= 1% ({'ok' if ok else 'MISSED'})" if shared else ""))  # fmt: skip
    return rows


def _dask_lazy(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = [(f"dask_lazy: {t['run']}", f"{t['seconds']:.1f} s, {t['x eager']:.2f}x eager", "")
            for t in d["throughput"]]  # fmt: skip
    return rows + _quota_rows("dask_lazy", d["quota"])


def _scale_out(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    local, dask = d["runs"]
    cores = d["machine"].get("cores") or 0
    return [(
        f"scale_out: {d['rows']:,} rows, {d['workers']} Dask workers vs 1 process",
        f"{dask['x_local']:.2f}x, peak {max(dask['peak_bytes']) / 1e6:,.0f} MB per worker "
        f"({local['peak_bytes'][0] / 1e6:,.0f} MB the local process)",
        "" if cores > d["workers"] else f"{cores} cores: contention, not scale-out",
    ), *_quota_rows("scale_out", d["quota"])]  # fmt: skip


SUMMARIES: dict[str, tuple[str, Callable[[dict[str, Any]], list[tuple[str, str, str]]]]] = {
    "rate_limits": ("rate_limits-*.json", _rate_limits),
    "processes": ("processes-*.json", _processes),
    "packing": ("packing.json", _packing),
    "structured": ("structured-*.json", _structured),
    "cache": ("cache.json", _cache),
    "calibration": ("calibration-*.json", _calibration),
    "throughput": ("throughput-*.json", _throughput),
    "embeddings": ("embeddings-*.json", _embeddings),
    "durability": ("durability-*.json", _durability),
    "batch": ("batch-*.json", _batch),
    "claims": ("claims-*.json", _claims),
    "dask_lazy": ("dask_lazy-*.json", _dask_lazy),
    "scale_out": ("scale_out-*.json", _scale_out),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--only", default=",".join(BENCHMARKS))
    parser.add_argument("--summary-only", action="store_true", help="only summarize the newest results")
    args = parser.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    failed = []
    if not args.summary_only:
        for name in chosen:
            cmd = [sys.executable, "-m", f"benchmarks.{name}"]
            if name == "cache":
                cmd += ["--rows", str(max(10_000, int(1_000_000 * args.scale)))]
            elif name == "durability":
                cmd += ["--rows", str(max(200, int(3_000 * args.scale)))]
            elif name == "claims":
                cmd += ["--shared", str(max(100, int(1_500 * args.scale))), "--own", str(max(10, int(100 * args.scale)))]
            else:
                cmd += ["--scale", str(args.scale)]
            print(f"\n$ {' '.join(cmd[1:])}", flush=True)
            if subprocess.run(cmd, cwd=ROOT).returncode != 0:
                failed.append(name)
        subprocess.run([sys.executable, "-m", "benchmarks.cost_table", "--write", "cost-analysis.md"], cwd=ROOT)
    rows: list[tuple[str, str, str]] = []
    for name in chosen:
        pattern, summarize = SUMMARIES[name]
        data = _newest(pattern)
        if data is None:
            rows.append((name, "no results yet", ""))
            continue
        try:
            rows.extend(summarize(data))
        except (KeyError, TypeError) as exc:
            rows.append((name, f"results not readable ({exc!r})", ""))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    print("\nSummary (newest results in benchmarks/out/):")
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)).rstrip())
    if failed:
        print(f"\nbenchmarks that exited non-zero (a missed target or an error): {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
