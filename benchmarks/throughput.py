"""Throughput benchmark: the client's CPU over the whole path of an uncached ``df.llm.apply``.

The client-CPU target: against the fake server with no limits and zero latency,
an uncached run goes through everything a real one does: the template, the row
keys, the cache lookup (an empty cache), packing (``batch_size=None``, the
default: 20 rows per request for this task; ``--batch-size`` sets it), HTTP through the real
``openai`` client, parsing, the cache append and the frame out. Targets: at
least 20,000 rows/s on one core, and at most 3x the frame's own size in peak
memory at 1M rows.

How it runs:

- Every measurement is one ``apply`` in a fresh subprocess: build the frame of
  ``--scale`` x 100,000 short codes (``... Code: <<K0000042>>``), import
  what the call imports, take the baseline RSS, reset the kernel's peak mark,
  call, read the peak (as ``benchmarks.cache`` does). The memory column is that
  peak increase over the frame's own size (pandas ``memory_usage(deep=True)``,
  polars ``estimated_size()``); the cache folder is new and empty each time.
- **Two memory figures.** The headline (``peak +MB``, ``x frame``; the target
  is checked on it) is that first ``apply`` in a fresh process: it includes the
  costs a process pays once, at its first apply, whatever the frame's size (the
  modules the run imports, the tokenizer, the HTTP client). The second
  (``warm +MB``, ``warm x``; ``warm`` in the JSON) is measured in one more fresh
  process, where a warm-up apply of ``WARM_ROWS`` other rows, with another
  template and on a cache folder of its own (deleted after), runs before the
  baseline: nothing of the measured run is cached, and its peak is what grows
  with the rows. ``fixed MB`` is what the warm-up left resident. ``--no-warm``
  skips that second process.
- **Server in a separate process** (``process``, the headline): the fake
  server runs in a ``multiprocessing`` child, so its CPU and memory are not
  the client's. Its CPU seconds over each measurement are read from that
  process (``time.process_time`` there) and shown beside the client's.
- **Server in the client's process** (``thread``, for comparison): the
  ``FakeServer`` thread inside the measuring process, as the tests use it; its
  thread's CPU clock gives its share of that run.
- ``rows/s`` is wall time; ``rows/CPU-s`` is rows per second of the client
  process's CPU time, i.e. per core. A speed PASS needs both >= 20,000 (the
  machine may be shared: wall time then suffers, CPU time much less).
- One more 100k-row pandas run, server out of process, under cProfile: top
  functions by cumulative and by own time, and own time summed per module.

Usage::

    python -m benchmarks.throughput                 # 100k rows, pandas and polars, twice each
    python -m benchmarks.throughput --million       # also 1M rows (~5-6 min per run at ~3k rows/s)
    python -m benchmarks.throughput --scale 0.01    # a quick pass (1,000 rows)

Targets are enforced (exit 1) only at the specified sizes: speed at >= 100k
rows, memory at 1M rows. A wrong or missing answer always fails.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import multiprocessing
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# _common and cache import nothing heavy at module level: the measuring child imports
# them before its memory baseline.
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
from benchmarks.cache import current_rss, peak_rss, reset_peak

#: A one-line task with a short field. The task is long enough that packing pays for itself
#: (~20 input tokens a row packed, ~46 alone): with a bare ``Reverse the code <<{code}>>``
#: the default path finds a packed row dearer in tokens than one row per request and sends
#: every row alone, and the client's CPU is then the SDK's per request (~150-250 rows/s).
TEMPLATE = (
    "Reply with the check label of this product code, and nothing else: no explanation, no "
    "punctuation, no quotes. Codes are case-sensitive, opaque text. Code: <<{code}>>"
)
#: The warm-up apply of the second memory figure: another template (so no key of the measured
#: run is cached by it), its own cache folder (deleted after), and rows enough to go the whole
#: way once (the packing check, packed requests, a cache segment).
WARM_TEMPLATE = "Warm-up, discarded. " + TEMPLATE
WARM_ROWS = 2_000
ROWS = 100_000
MILLION = 1_000_000
TARGET_ROWS_PER_SECOND = 20_000
TARGET_MEMORY_RATIO = 3.0
PROFILE_TOP = 15
REPO = Path(__file__).resolve().parents[1]
MODES = ("process", "thread")


def codes(n: int, prefix: str = "K") -> list[str]:
    """``n`` distinct short codes, the same on every call."""
    return [f"{prefix}{i:07d}" for i in range(n)]


# --------------------------------------------------------------------------- the server process


def _serve(conn: Connection) -> None:
    """In a child process: run a FakeServer (no limits, no latency) and answer CPU queries."""
    warnings.simplefilter("ignore", RuntimeWarning)
    from llmframe.testing import FakeServer

    with FakeServer() as server:
        conn.send((server.base_url, server.api_key))
        while True:
            message = conn.recv()
            if message == "stop":
                break
            conn.send((time.process_time(), server.stats.requests))
    conn.close()


class ServerProcess:
    """The fake server in a process of its own; :meth:`cpu` is its CPU seconds and requests."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), daemon=True)

    def __enter__(self) -> ServerProcess:
        self._process.start()
        self.base_url, self.api_key = self._conn.recv()
        return self

    def cpu(self) -> tuple[float, int]:
        self._conn.send("cpu")
        seconds, requests = self._conn.recv()
        return float(seconds), int(requests)

    def __exit__(self, *exc: object) -> None:
        self._conn.send("stop")
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()


# --------------------------------------------------------------------------- the child: one measurement


def _frame(backend: str, n: int, prefix: str = "K") -> tuple[Any, int]:
    """A frame of ``n`` codes (:func:`codes`) and its own size in bytes."""
    values = codes(n, prefix)
    if backend == "pandas":
        import pandas as pd

        frame = pd.DataFrame({"code": values})
        return frame, int(frame.memory_usage(deep=True).sum())
    import polars as pl

    polars_frame = pl.DataFrame({"code": values})
    return polars_frame, int(polars_frame.estimated_size())


def _answers(out: Any, backend: str, rows: range) -> list[Any]:
    if backend == "pandas":
        column = out["answer"]
        return [column.iat[i] for i in rows]
    column = out.get_column("answer")
    return [column[i] for i in rows]


def _thread_cpu(name: str) -> float | None:
    """CPU seconds of the live thread called ``name`` (Linux, macOS), else None."""
    getclock = getattr(time, "pthread_getcpuclockid", None)
    for thread in threading.enumerate():
        if thread.name == name and thread.ident is not None and getclock is not None:
            return time.clock_gettime(getclock(thread.ident))
    return None


def _warm_up(backend: str, base_url: str, api_key: str) -> dict[str, Any]:
    """The process's fixed costs paid: one apply of :data:`WARM_ROWS` other rows, with
    :data:`WARM_TEMPLATE`, on a cache folder of its own (deleted after). What it cost and kept."""
    import pyarrow as pa

    df, _ = _frame(backend, WARM_ROWS, prefix="W")
    folder = tempfile.mkdtemp(prefix="llmframe-bench-warm-up-")
    modules = set(sys.modules)
    gc.collect()
    before = current_rss()
    reset_peak()
    cpu = time.process_time()
    out = df.llm.apply(
        WARM_TEMPLATE, output="answer", model=MODEL, base_url=base_url, api_key=api_key,
        cache=folder, progress=False,
    )  # fmt: skip
    cpu = time.process_time() - cpu
    peak = peak_rss()
    del out, df
    shutil.rmtree(folder, ignore_errors=True)
    gc.collect()
    pa.default_memory_pool().release_unused()
    return {
        "rows": WARM_ROWS,
        "cpu_seconds": cpu,
        "peak_increase": peak - before,
        "kept": current_rss() - before,
        "modules_imported": len(set(sys.modules) - modules),
    }


def child_measure(args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: one uncached apply of ``args.rows`` rows; time, CPU, memory, answers.
    With ``args.warm``, a warm-up apply (:func:`_warm_up`) comes first, before the baseline."""
    import openai  # noqa: F401  (imported before the baseline: a fixed cost, not the run's)
    import pyarrow as pa

    import llmframe
    from llmframe.testing import FakeServer, expected_answer

    warnings.simplefilter("ignore", RuntimeWarning)  # the once-only offline-tokenizer notice
    server = None
    if args.mode == "thread":
        server = FakeServer().start()  # started (tokenizer loaded) before the baseline
        base_url, api_key = server.base_url, server.api_key
    else:
        base_url, api_key = args.base_url, args.api_key
    df, frame_bytes = _frame(args.backend, args.rows)
    warm_up = _warm_up(args.backend, base_url, api_key) if getattr(args, "warm", False) else None
    cache_dir = tempfile.mkdtemp(prefix="llmframe-bench-throughput-")
    modules = set(sys.modules)
    gc.collect()
    pa.default_memory_pool().release_unused()
    baseline = current_rss()
    exact_peak = reset_peak()
    profiler = cProfile.Profile() if args.profile else None
    server_cpu_before = _thread_cpu("llmframe-fake-server") if server else None
    cpu_before = time.process_time()
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    out = df.llm.apply(
        TEMPLATE,
        output="answer",
        model=MODEL,
        base_url=base_url,
        api_key=api_key,
        cache=cache_dir,
        progress=False,
        batch_size=getattr(args, "batch_size", None),
    )
    if profiler is not None:
        profiler.disable()
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu_before
    peak = peak_rss()
    modules_imported = len(set(sys.modules) - modules)
    server_cpu = None
    if server is not None:
        after = _thread_cpu("llmframe-fake-server")
        if after is not None and server_cpu_before is not None:
            server_cpu = after - server_cpu_before
        server.stop()
    report = llmframe.last_report()
    assert report is not None
    step = max(1, args.rows // 1000)
    checked = range(0, args.rows, step)
    wrong = sum(
        answer != expected_answer(TEMPLATE.format(code=f"K{i:07d}"))
        for i, answer in zip(checked, _answers(out, args.backend, checked), strict=True)
    )
    result: dict[str, Any] = {
        "backend": args.backend,
        "mode": args.mode,
        "rows": args.rows,
        "seconds": seconds,
        "client_cpu_seconds": cpu,  # in thread mode this includes the server thread
        "server_thread_cpu_seconds": server_cpu,
        "frame_bytes": frame_bytes,
        "baseline_rss": baseline,
        "peak_increase": peak - baseline,
        "peak_exact": exact_peak,
        "modules_imported": modules_imported,  # by the apply, after the baseline
        "warm_up": warm_up,
        "requests": report.requests,
        "batch_size_final": report.batch_size_final,
        "packing_reason": report.packing_reason,
        "failed_rows": report.failed_rows,
        "cached_rows": report.cached_rows,
        "checked_rows": len(checked),
        "wrong_answers": wrong,
    }
    if profiler is not None:
        path = Path(args.out) / f"throughput_profile_{args.backend}.prof"
        path.parent.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(path)
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(40)
        path.with_suffix(".txt").write_text(stream.getvalue())
        result["profile"] = str(path)
    return result


# --------------------------------------------------------------------------- the parent


def _measure(
    args: argparse.Namespace,
    backend: str,
    rows: int,
    mode: str,
    server: ServerProcess | None,
    *,
    profile: bool = False,
    warm: bool = False,
) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "benchmarks.throughput", "--child",
        "--backend", backend, "--rows", str(rows), "--mode", mode, "--out", str(args.out),
    ]  # fmt: skip
    if server is not None:
        command += ["--base-url", server.base_url, "--api-key", server.api_key]
    if args.batch_size is not None:
        command += ["--batch-size", str(args.batch_size)]
    if profile:
        command.append("--profile")
    if warm:
        command.append("--warm")
    load = os.getloadavg()[0]
    before = server.cpu() if server is not None else None
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    after = server.cpu() if server is not None else None
    if done.returncode != 0:
        raise RuntimeError(f"measurement of {backend} failed:\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_before"] = load
    result["load_after"] = os.getloadavg()[0]
    if before is not None and after is not None:
        result["server_cpu_seconds"] = after[0] - before[0]
        result["server_requests"] = after[1] - before[1]
        client = result["client_cpu_seconds"]
    else:
        result["server_cpu_seconds"] = result["server_thread_cpu_seconds"]
        result["server_requests"] = result["requests"]
        # The process's CPU includes the server thread's: the client is the rest.
        client = result["client_cpu_seconds"] - (result["server_cpu_seconds"] or 0.0)
    server_cpu = result["server_cpu_seconds"]
    result["client_only_cpu_seconds"] = client
    result["server_share"] = None if server_cpu is None else server_cpu / (server_cpu + client)
    result["rows_per_second"] = rows / result["seconds"]
    result["rows_per_client_cpu_second"] = rows / client if client > 0 else None
    result["peak_x_frame"] = result["peak_increase"] / result["frame_bytes"]
    return result


def _warm_figure(measured: dict[str, Any]) -> dict[str, Any]:
    """What the table and JSON keep of a warmed-up measurement: its memory, and its checks."""
    keep = (
        "peak_increase", "peak_x_frame", "baseline_rss", "warm_up", "modules_imported",
        "client_only_cpu_seconds", "rows_per_client_cpu_second", "requests", "wrong_answers",
        "failed_rows", "cached_rows", "checked_rows",
    )  # fmt: skip
    return {name: measured[name] for name in keep}


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f}"


def _where(filename: str, line: int, name: str) -> str:
    if filename == "~":
        return name
    if "site-packages/" in filename:
        short = filename.split("site-packages/")[-1]
    elif filename.startswith(str(REPO)):
        short = os.path.relpath(filename, REPO)
    else:
        short = "/".join(filename.split("/")[-2:])
    return f"{short}:{line}({name})"


def _module(filename: str) -> str:
    """The group a function's time is summed under: ``llmframe._engine``, ``openai``, ``stdlib json``..."""
    if filename == "~":
        return "(C builtins)"
    if "site-packages/" in filename:
        return filename.split("site-packages/")[-1].split("/")[0].removesuffix(".py")
    if filename.startswith(str(REPO)):
        parts = os.path.relpath(filename, REPO).removesuffix(".py").split("/")
        return ".".join(parts[:2])
    parts = filename.split("/")
    if len(parts) < 2:  # <frozen importlib._bootstrap>, <string>
        return filename
    if parts[-2].startswith("python3"):  # a top-level stdlib module (json/ is a package)
        return "stdlib " + parts[-1].removesuffix(".py")
    return "stdlib " + parts[-2]


def module_times(stats: pstats.Stats) -> dict[str, float]:
    """Own time summed per module; a C builtin's own time goes to the modules of its callers
    (split as pstats splits it per caller), so ``json.loads`` counts where it is called."""
    groups: dict[str, float] = defaultdict(float)
    entries = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, _name), (_cc, _nc, tottime, _cum, callers) in entries.items():
        if filename != "~" or not callers:
            groups[_module(filename)] += tottime
            continue
        for (caller_file, _l, _n), caller_stats in callers.items():
            groups[_module(caller_file)] += caller_stats[2]
    return dict(groups)


def profile_summary(path: Path, total: float) -> list[str]:
    """Top functions by cumulative and own time, llmframe's by cumulative, own time per module."""
    stats = pstats.Stats(str(path))
    entries = stats.stats  # type: ignore[attr-defined]
    rows = [
        (filename, line, name, tottime, cumtime)
        for (filename, line, name), (_cc, _nc, tottime, cumtime, _callers) in entries.items()
    ]
    # Event-loop frames (_run_once, Handle._run, Context.run) are counted once per callback
    # resumed and so exceed the whole call: they say nothing and are left out.
    real = [r for r in rows if r[4] <= total * 1.01]
    lines = [f"  top {PROFILE_TOP} by cumulative time (event-loop frames over 100% left out):"]
    for filename, line, name, _tot, cum in sorted(real, key=lambda r: -r[4])[:PROFILE_TOP]:
        lines.append(f"    {cum:7.2f}s {100 * cum / total:5.1f}%  {_where(filename, line, name)}")
    lines.append(f"  top {PROFILE_TOP} by own time:")
    for filename, line, name, tot, _cum in sorted(rows, key=lambda r: -r[3])[:PROFILE_TOP]:
        lines.append(f"    {tot:7.2f}s {100 * tot / total:5.1f}%  {_where(filename, line, name)}")
    ours = [r for r in real if "/llmframe/" in r[0] and "/testing/" not in r[0]]
    lines.append(f"  top {PROFILE_TOP} llmframe functions by cumulative time:")
    for filename, line, name, _tot, cum in sorted(ours, key=lambda r: -r[4])[:PROFILE_TOP]:
        lines.append(f"    {cum:7.2f}s {100 * cum / total:5.1f}%  {_where(filename, line, name)}")
    lines.append("  own time summed per module (C builtins charged to their callers' modules):")
    groups = module_times(stats)
    for module, tot in sorted(groups.items(), key=lambda kv: -kv[1])[: PROFILE_TOP * 2]:
        lines.append(f"    {tot:7.2f}s {100 * tot / total:5.1f}%  {module}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_standard_arguments(parser)
    parser.add_argument("--million", action="store_true", help="also measure 1M rows (slow)")
    parser.add_argument(
        "--repeat", type=int, default=2, help="fresh processes per measurement (default 2)"
    )
    parser.add_argument("--backends", default="pandas,polars")
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="where the fake server runs: process (the headline), thread, or both (default)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None,
        help="rows per request (default: automatic, as batch_size=None; 20 for this task)",
    )  # fmt: skip
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    parser.add_argument(
        "--no-warm", action="store_true",
        help="skip the second memory figure (a second process per measurement, warmed up)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    # Internal: one measurement in a fresh process.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=("pandas", "polars"), help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--api-key", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    given = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(given)
    if args.child:
        print(json.dumps(child_measure(args)))
        return 0
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not backends or not set(backends) <= {"pandas", "polars"}:
        parser.error("--backends takes pandas, polars or both")
    if not modes or not set(modes) <= set(MODES):
        parser.error("--modes takes process, thread or both")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    sizes = [scaled(ROWS, args.scale)] + ([scaled(MILLION, args.scale)] if args.million else [])

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    started = datetime.now(timezone.utc)
    uptime_before = _uptime()
    wall = time.perf_counter()
    results: list[dict[str, Any]] = []
    profiled: dict[str, Any] | None = None
    with ServerProcess() as server:
        for rows in sizes:
            for i in range(args.repeat):
                for backend in backends:
                    for mode in modes:
                        log(f"{rows:,} rows, {backend}, server in a {mode} ({i + 1}/{args.repeat})")
                        result = _measure(
                            args, backend, rows, mode, server if mode == "process" else None
                        )
                        result["repeat"] = i + 1
                        if not args.no_warm:
                            log(f"{rows:,} rows, {backend}, server in a {mode}, warmed up")
                            warmed = _measure(
                                args, backend, rows, mode, server if mode == "process" else None, warm=True
                            )
                            result["warm"] = _warm_figure(warmed)
                        results.append(result)
        if not args.no_profile:
            log(f"profiling {sizes[0]:,} rows, pandas, server in a process")
            profiled = _measure(args, "pandas", sizes[0], "process", server, profile=True)
    uptime_after = _uptime()

    table = []
    failures = []
    for r in results:
        per_cpu = r["rows_per_client_cpu_second"] or 0.0
        speed_ok = min(r["rows_per_second"], per_cpu) >= TARGET_ROWS_PER_SECOND
        memory_ok = r["peak_x_frame"] <= TARGET_MEMORY_RATIO
        r["speed_ok"], r["memory_ok"] = speed_ok, memory_ok
        share = r["server_share"]
        warm = r.get("warm")
        warm_cells = ["-", "-", "-"] if warm is None else [
            _mb(warm["warm_up"]["kept"]), _mb(warm["peak_increase"]),
            f"{warm['peak_x_frame']:.1f}x",
        ]  # fmt: skip
        table.append([
            r["backend"], r["mode"], r["rows"], r["repeat"], r["seconds"], r["rows_per_second"],
            r["client_only_cpu_seconds"], per_cpu, "PASS" if speed_ok else "FAIL",
            r["server_cpu_seconds"], "-" if share is None else f"{share:.0%}", r["requests"],
            f"{r['rows'] / max(1, r['requests']):.1f}", _mb(r["frame_bytes"]),
            _mb(r["peak_increase"]), f"{r['peak_x_frame']:.1f}x", "PASS" if memory_ok else "FAIL",
            *warm_cells, f"{r['checked_rows'] - r['wrong_answers']}/{r['checked_rows']}",
            f"{r['load_before']:.1f}/{r['load_after']:.1f}",
        ])  # fmt: skip
        name = f"{r['backend']} {r['rows']:,} rows, server in a {r['mode']} (run {r['repeat']})"
        if r["wrong_answers"] or r["failed_rows"] or r["cached_rows"]:
            failures.append(
                f"{name}: {r['wrong_answers']} wrong, {r['failed_rows']} failed, "
                f"{r['cached_rows']} cached rows"
            )
        if warm is not None and (
            warm["wrong_answers"] or warm["failed_rows"] or warm["cached_rows"]
        ):
            failures.append(
                f"{name}, warmed up: {warm['wrong_answers']} wrong, {warm['failed_rows']} failed, "
                f"{warm['cached_rows']} cached rows"
            )
        if r["mode"] == "process" and r["rows"] >= ROWS and not speed_ok:
            failures.append(f"{name}: speed target missed")
        if r["mode"] == "process" and r["rows"] >= MILLION and not memory_ok:
            failures.append(f"{name}: memory target missed")

    print(run_header(command_line("benchmarks.throughput", given), started))
    print(f"load:    before: {uptime_before}; after: {uptime_after}")
    size = "None (automatic)" if args.batch_size is None else str(args.batch_size)
    print(f"task:    {TEMPLATE!r}, batch_size={size}, fresh empty cache per run")
    reasons = sorted({str(r["packing_reason"]) for r in results})
    print("packing: " + "; ".join(reasons) + "\n")
    print(format_table(
        ["backend", "server", "rows", "run", "seconds", "rows/s", "client CPU-s", "rows/CPU-s",
         "speed", "server CPU-s", "server share", "requests", "rows/req", "frame MB", "peak +MB",
         "x frame", "memory", "fixed MB", "warm +MB", "warm x", "checked", "load"],
        table,
    ))  # fmt: skip
    print(
        f"\nTargets: >= {TARGET_ROWS_PER_SECOND:,} rows/s on one core (speed PASS needs both the "
        f"wall rows/s and rows per client CPU-second), peak RSS increase <= {TARGET_MEMORY_RATIO:g}x "
        "the frame (specified at 1M rows uncached; shown at every size). Headline: server = "
        "process (the fake server in its own process; its CPU is not the client's). server = "
        "thread: the FakeServer thread inside the measuring process, client CPU-s excludes that "
        "thread's CPU. Server share = server CPU / (server + client CPU). openai is "
        "imported before the memory baseline; each row is one fresh subprocess; load = 1-minute "
        "load average before/after the run.\n"
        "Memory, two figures: peak +MB / x frame (the headline, and the target's) is the first "
        "apply in a fresh process, the fixed costs it pays included (modules it imports, the "
        "tokenizer, the client); warm +MB / warm x is the same apply in another fresh process "
        f"after a warm-up apply of {WARM_ROWS:,} other rows (another template, its own cache "
        "folder) and before the baseline: what grows with the rows. fixed MB = what the warm-up "
        "left resident."
    )
    if profiled is not None:
        print(
            f"\nWhere the client's time goes: pandas, {profiled['rows']:,} rows, server in a "
            f"process, under cProfile ({profiled['seconds']:.2f}s with profiling, "
            f"{profiled['rows_per_second']:,.0f} rows/s; server share "
            f"{profiled['server_share']:.0%}):"
        )
        print("\n".join(profile_summary(Path(profiled["profile"]), profiled["seconds"])))
        print(f"  full listing: {Path(profiled['profile']).with_suffix('.txt')}")
    total = time.perf_counter() - wall
    print(f"\nRun took {total:.0f}s.")
    payload = {
        "benchmark": "throughput",
        "command": command_line("benchmarks.throughput", given),
        "started": started,
        "seconds": total,
        "machine": machine(),
        "uptime": {"before": uptime_before, "after": uptime_after},
        "template": TEMPLATE,
        "batch_size": args.batch_size,
        "targets": {
            "rows_per_second": TARGET_ROWS_PER_SECOND,
            "peak_memory_x_frame": TARGET_MEMORY_RATIO,
        },
        "results": results,
        "profiled": profiled,
        "failures": failures,
    }
    path = save_json("throughput", payload, args.out)
    print(f"JSON: {path}")
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    return 0


def _uptime() -> str:
    try:
        out = subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout
        return out.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
