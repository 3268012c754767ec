"""Cache benchmark: a fully cached re-run of a million rows through ``df.llm.apply``.

A re-run of a finished job must cost no requests and little time: every row is
keyed, looked up and written back. Targets, per backend (pandas and polars):
>= 200,000 rows/s, and a peak memory increase of at most 3x the frame's own
size. The baseline is the process before the call: the frame loaded, nothing else.

How it runs:

1. Build a frame of ``--rows`` distinct reviews and save it as parquet, so every
   measurement reads the very same rows.
2. Fill the cache. The first rows go through the real path: ``apply`` against
   the fake server at full speed (latency 0, no limits, ``batch_size=50``). That
   rate, projected to all rows, decides the rest: if the projection is over two
   minutes, the remaining rows are written straight into the cache with
   :meth:`AnswerCache.add_columns`, keyed exactly as the engine keys them
   (``call_prefix`` / ``row_keys``), and a sample of those rows is re-run
   against the server to prove that their keys match (zero requests).
3. Measure each backend in a fresh subprocess against a live fake server (in
   this process, so its memory is not counted): read the frame, hand back the
   memory pyarrow's allocator kept from reading it (``release_unused``: freed
   memory is neither the frame's nor the call's, and a call that releases it
   would otherwise look smaller than it is), take the baseline RSS, reset the
   peak (``/proc/self/clear_refs``), run ``apply``, read the peak (``VmHWM``).
   The first call in the process is the headline (cold: the cache folder is
   read for the first time); a second call in the same process is shown too (warm). Every call must make zero requests, and every
   thousandth row's answer is checked. With ``--repeat`` processes per backend
   (default 3) the table shows the median time and the largest peak.
4. Profile the cold re-run of each backend with cProfile, in another fresh
   subprocess, and print where the time goes; the same run samples RSS every
   millisecond around the library's phases (render, keys, lookup, ...) to show
   where the memory peak comes from.

Usage::

    python -m benchmarks.cache                  # 1,000,000 rows
    python -m benchmarks.cache --rows 100000    # quicker (targets enforced at 1M rows only)
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

# _common imports nothing but the standard library until a helper is called, so the
# measuring child processes can import it before their memory baseline.
from benchmarks._common import MODEL, apply_on_server, git_commit, machine, phrase_rows

TEMPLATE = "Classify the sentiment of this customer review as positive, negative, neutral or mixed.\n\nReview: {review}"
OUT_DIR = Path(__file__).resolve().parent / "out"
REPO = Path(__file__).resolve().parents[1]

TARGET_ROWS_PER_SECOND = 200_000
TARGET_MEMORY_RATIO = 3.0
#: Above this projected time for a fill through the fake server, fill the rest directly.
MAX_SERVER_FILL_SECONDS = 120.0
SERVER_FILL_SAMPLE = 50_000
FILL_BATCH_SIZE = 50
VERIFY_SAMPLE = 2_000
PROFILE_TOP = 12

_OPENINGS = ("Honestly", "Well", "So far", "After a month", "For the price", "Overall", "Sadly")
_PRODUCTS = ("blender", "desk lamp", "kettle", "backpack", "air fryer", "yoga mat", "headphones")
_VERDICTS = ("works great", "stopped working", "is fine", "feels cheap", "exceeded my hopes")


def reviews(n: int) -> list[str]:
    """``n`` distinct short reviews (~20 tokens), the same on every call."""
    return [
        f"{opening}, the {product} {verdict}. Order {1_000_000 + i}, {i % 5 + 1}/5."
        for i, (opening, product, verdict) in enumerate(
            phrase_rows(n, (_OPENINGS, _PRODUCTS, _VERDICTS))
        )
    ]


# --------------------------------------------------------------------------- memory


def _proc_status_kb(name: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss() -> int:
    """Resident memory now, in bytes (falls back to the peak where /proc is missing)."""
    kb = _proc_status_kb("VmRSS")
    return kb * 1024 if kb is not None else peak_rss()


def peak_rss() -> int:
    """The peak resident memory since start or since :func:`reset_peak`, in bytes."""
    kb = _proc_status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- the child: one measurement


def _read_frame(backend: str, path: Path) -> tuple[Any, int]:
    if backend == "pandas":
        import pandas as pd

        frame = pd.read_parquet(path)
        return frame, int(frame.memory_usage(deep=True).sum())
    import polars as pl

    polars_frame = pl.read_parquet(path)
    return polars_frame, int(polars_frame.estimated_size())


def _value(df: Any, column: str, row: int, backend: str) -> Any:
    return df[column].iat[row] if backend == "pandas" else df.get_column(column)[row]


class PhaseMemory:
    """Resident memory through the phases of one call, for telling where the peak comes from.

    A thread samples RSS every millisecond while chosen library functions are
    wrapped to note when they start and end; each call's peak is the highest
    sample in between. Only for the profiled run: it costs a little time.
    """

    #: (module, attribute) of the phases of a cached re-run; missing ones are skipped.
    PHASES = (
        ("llmframe._api", "rendered_columns"),
        ("llmframe._engine", "prepare"),
        ("llmframe._engine", "row_digests"),
        ("llmframe._cache", "AnswerCache.lookup_binary"),
        ("llmframe._engine", "new_run"),
        ("llmframe._api", "with_answers"),
    )

    def __init__(self, baseline: int) -> None:
        import threading

        self.baseline = baseline
        self.samples: list[tuple[float, int]] = []
        self.calls: list[tuple[str, float, float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._undo: list[Callable[[], None]] = []

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/statm") as statm:
            while not self._stop.is_set():
                statm.seek(0)
                self.samples.append((time.perf_counter(), int(statm.read().split()[1]) * page))
                time.sleep(0.001)

    def __enter__(self) -> PhaseMemory:
        import functools
        import importlib

        for module_name, attribute in self.PHASES:
            owner: Any = importlib.import_module(module_name)
            *path, name = attribute.split(".")
            for part in path:
                owner = getattr(owner, part, None)
            original = getattr(owner, name, None) if owner is not None else None
            if original is None:
                continue

            @functools.wraps(original)
            def wrapper(*a: Any, __f: Any = original, __name: str = attribute, **k: Any) -> Any:
                start, before = time.perf_counter(), current_rss()
                try:
                    return __f(*a, **k)
                finally:
                    self.calls.append((__name, start, time.perf_counter(), before, current_rss()))

            setattr(owner, name, wrapper)
            self._undo.append(functools.partial(setattr, owner, name, original))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for undo in self._undo:
            undo()

    def report(self) -> list[dict[str, Any]]:
        calls = sorted(self.calls, key=lambda c: c[1])
        out: list[dict[str, Any]] = []
        for name, start, end, before, after in calls:
            during = [rss for t, rss in self.samples if start <= t <= end] + [before, after]
            depth = sum(1 for c in calls if c[1] < start and end < c[2])  # phases it runs inside
            last = out[-1] if out else None
            if last is not None and last["phase"] == name and last["depth"] == depth:
                # Back-to-back calls of one phase (a slice at a time): one line.
                last["calls"] += 1
                last["seconds"] += end - start
                last["peak_during"] = max(last["peak_during"], max(during) - self.baseline)
                last["rss_at_end"] = after - self.baseline
                continue
            out.append(
                {
                    "phase": name,
                    "depth": depth,
                    "calls": 1,
                    "seconds": end - start,
                    "rss_at_start": before - self.baseline,
                    "peak_during": max(during) - self.baseline,
                    "rss_at_end": after - self.baseline,
                }
            )
        return out


def child_measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run in a fresh process: the cold and warm re-runs of one backend, or a profile."""
    import pyarrow as pa

    import llmframe
    from llmframe.testing import expected_answer

    warnings.simplefilter("ignore", RuntimeWarning)  # the once-only offline-tokenizer notice
    df, frame_bytes = _read_frame(args.backend, args.workdir / "frame.parquet")
    n = len(df)
    options = {
        "output": "answer",
        "model": MODEL,
        "base_url": args.base_url,
        "api_key": args.api_key,
        "cache": str(args.workdir / "cache"),
        "progress": False,
        "batch_size": FILL_BATCH_SIZE,
    }
    calls = []
    for label in ("cold", "warm") if not args.profile else ("cold",):
        gc.collect()
        pa.default_memory_pool().release_unused()
        baseline = current_rss()
        exact_peak = reset_peak()
        profiler = cProfile.Profile() if args.profile else None
        phases = PhaseMemory(baseline) if args.profile else contextlib.nullcontext()
        with phases:
            start = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            out = df.llm.apply(TEMPLATE, **options)
            if profiler is not None:
                profiler.disable()
            seconds = time.perf_counter() - start
        peak = peak_rss()
        report = llmframe.last_report()
        assert report is not None
        step = max(1, n // 1000)
        wrong = sum(
            _value(out, "answer", i, args.backend)
            != expected_answer(TEMPLATE.format(review=_value(df, "review", i, args.backend)))
            for i in range(0, n, step)
        )
        calls.append(
            {
                "call": label,
                "seconds": seconds,
                "rows_per_second": n / seconds,
                "baseline_rss": baseline,
                "peak_rss": peak,
                "peak_increase": peak - baseline,
                "peak_exact": exact_peak,
                "requests": report.requests,
                "cached_rows": report.cached_rows,
                "checked_rows": len(range(0, n, step)),
                "wrong_answers": wrong,
            }
        )
        if profiler is not None:
            path = args.out / f"cache_profile_{args.backend}.prof"
            profiler.dump_stats(path)
            calls[-1]["profile"] = str(path)
            path.with_suffix(".txt").write_text(_profile_text(profiler))
        if isinstance(phases, PhaseMemory):
            calls[-1]["memory_phases"] = phases.report()
        del out
    return {"backend": args.backend, "rows": n, "frame_bytes": frame_bytes, "calls": calls}


def _profile_text(profiler: cProfile.Profile) -> str:
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats("tottime").print_stats(PROFILE_TOP)
    stats.sort_stats("cumulative").print_stats(PROFILE_TOP * 2)
    return stream.getvalue()


def profile_summary(path: Path, total: float) -> list[str]:
    """The profile in a few lines: the phases of the call (cumulative) and the hot spots (own time)."""
    stats = pstats.Stats(str(path))
    entries = stats.stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, name), (_cc, _nc, tottime, cumtime, _callers) in entries.items():
        rows.append((filename, line, name, tottime, cumtime))

    def where(filename: str, line: int, name: str) -> str:
        if filename == "~":
            return name
        short = (
            filename.split("site-packages/")[-1]
            if "site-packages/" in filename
            else os.path.relpath(filename, REPO)
        )
        return f"{short}:{line}({name})"

    lines = ["  own time (tottime), top:"]
    for filename, line, name, tottime, _cum in sorted(rows, key=lambda r: -r[3])[:PROFILE_TOP]:
        lines.append(
            f"    {tottime:6.2f}s {100 * tottime / total:5.1f}%  {where(filename, line, name)}"
        )
    lines.append("  llmframe functions by cumulative time:")
    ours = [r for r in rows if "/llmframe/" in r[0] and "/testing/" not in r[0]]
    for filename, line, name, _tot, cumtime in sorted(ours, key=lambda r: -r[4])[:PROFILE_TOP]:
        lines.append(
            f"    {cumtime:6.2f}s {100 * cumtime / total:5.1f}%  {where(filename, line, name)}"
        )
    return lines


# --------------------------------------------------------------------------- the parent


def _run_child(
    args: argparse.Namespace, backend: str, base_url: str, api_key: str, *, profile: bool
) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.cache",
        "--child",
        "--backend",
        backend,
        "--workdir",
        str(args.workdir),
        "--out",
        str(args.out),
        "--base-url",
        base_url,
        "--api-key",
        api_key,
    ]
    if profile:
        command.append("--profile")
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measurement of {backend} failed:\n{done.stdout}\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _cache_bytes(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.glob("seg-*.parquet")]
    return sum(p.stat().st_size for p in files), len(files)


def _fill_through_server(cache_dir: Path, values: Sequence[str]) -> tuple[float, int]:
    """``apply`` on the fake server at full speed; returns the seconds and the requests."""
    from llmframe.testing import FakeServer

    with FakeServer() as server:
        run = apply_on_server(
            server,
            TEMPLATE,
            "review",
            values,
            cache=str(cache_dir),
            batch_size=FILL_BATCH_SIZE,
            max_concurrency=64,
        )
    assert run.report.failed_rows == 0, run.report
    return run.seconds, run.report.requests


def fill_cache(
    workdir: Path, values: Sequence[str], mode: str, sample: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Fill ``workdir/cache`` with an answer for every row; return how, how long, how big.

    The first ``sample`` rows always go through the fake server, to measure that
    path; the rest follow ``mode``: ``server``, ``direct``, or ``auto`` (the
    server unless its rate projects the whole fill past two minutes).
    """
    cache_dir = workdir / "cache"
    n = len(values)
    sample = n if mode == "server" else min(n, sample)
    seconds, requests = _fill_through_server(cache_dir, values[:sample])
    rate = sample / seconds
    info: dict[str, Any] = {
        "rows": n,
        "server_rows": sample,
        "server_seconds": seconds,
        "server_requests": requests,
        "server_rows_per_second": rate,
        "projected_server_seconds": n / rate,
        "server_bytes_per_row": _cache_bytes(cache_dir)[0] / sample,
        "direct_rows": 0,
    }
    log(
        f"  filled {sample:,} rows through the fake server in {seconds:.1f}s "
        f"({rate:,.0f} rows/s; all {n:,} rows would take {n / rate:.0f}s)"
    )
    if sample < n:
        if mode == "auto" and n / rate <= MAX_SERVER_FILL_SECONDS:
            more, more_requests = _fill_through_server(cache_dir, values[sample:])
            info.update(
                server_rows=n,
                server_seconds=seconds + more,
                server_requests=requests + more_requests,
            )
            log(f"  filled the other {n - sample:,} rows through the fake server in {more:.1f}s")
        else:
            start = time.perf_counter()
            fill_directly(cache_dir, values[sample:], start_index=sample)
            info.update(direct_rows=n - sample, direct_seconds=time.perf_counter() - start)
            log(
                f"  wrote the other {n - sample:,} rows straight into the cache in {info['direct_seconds']:.1f}s"
            )
            info["verify"] = verify_keys(cache_dir, values, sample, log)
    total, segments = _cache_bytes(cache_dir)
    info.update(cache_bytes=total, segments=segments, bytes_per_million_rows=total / n * 1e6)
    return info


def fill_directly(cache_dir: Path, values: Sequence[str], *, start_index: int = 0) -> None:
    """Write an answer for each value, keyed exactly as the engine keys a run of ``TEMPLATE``.

    The other columns look like the engine's records: token shares of a 50-row
    batch, a cost, a request id per batch, and creation times a few ms apart.
    """
    import numpy as np

    from llmframe._cache import AnswerCache
    from llmframe._keys import call_prefix, row_keys
    from llmframe._pricing import PRICES
    from llmframe._template import parse_template
    from llmframe.testing import expected_answer

    template = parse_template(TEMPLATE, ["review"])
    prefix = call_prefix(model=MODEL, template=template.text, system=None, params=None)
    price = PRICES[MODEL]
    chunk = 250_000
    now = datetime.now(timezone.utc)
    with AnswerCache(cache_dir, flush_rows=chunk) as cache:
        for lo in range(0, len(values), chunk):
            part = values[lo : lo + chunk]
            rendered = [v if isinstance(v, str) else str(v) for v in part]  # as the run renders
            keys = row_keys(prefix, [rendered])
            m = len(part)
            index = np.arange(start_index + lo, start_index + lo + m)
            prompt = 30 + index % 7
            completion = 6 + index % 2
            created = np.datetime64(now.replace(tzinfo=None) - timedelta(hours=1), "us") + index * 3
            cache.add_columns(
                {
                    "key": keys,
                    "model": [MODEL] * m,
                    "template_hash": [template.hash] * m,
                    "answer": [expected_answer(template.render({"review": v})) for v in rendered],
                    "status": ["ok"] * m,
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "cost_usd": (prompt * price.input_per_1m + completion * price.output_per_1m)
                    / 1e6,
                    "created": pa_timestamps(created),
                    "request_id": [f"req_{i // FILL_BATCH_SIZE:032x}" for i in index],
                }
            )


def pa_timestamps(values: Any) -> Any:
    import pyarrow as pa

    return pa.array(values, type=pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))


def verify_keys(
    cache_dir: Path, values: Sequence[str], start: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Re-run a sample of the directly written rows against a live server: zero requests."""
    from llmframe.testing import FakeServer, expected_answer

    step = max(1, (len(values) - start) // VERIFY_SAMPLE)
    picked = [values[i] for i in range(start, len(values), step)][:VERIFY_SAMPLE]
    with FakeServer() as server:
        run = apply_on_server(
            server, TEMPLATE, "review", picked, cache=str(cache_dir), batch_size=FILL_BATCH_SIZE
        )
        requests = server.stats.requests
    report = run.report
    wrong = sum(
        a != expected_answer(TEMPLATE.format(review=v))
        for a, v in zip(run.answers, picked, strict=True)
    )
    ok = requests == 0 and report.cached_rows == len(picked) and wrong == 0
    log(
        f"  keys verified on {len(picked):,} directly written rows: {requests} requests, "
        f"{report.cached_rows:,} cached, {wrong} wrong answers -> {'match' if ok else 'MISMATCH'}"
    )
    if not ok:
        raise SystemExit("directly written cache keys do not match the engine's keys")
    return {
        "rows": len(picked),
        "requests": requests,
        "cached_rows": report.cached_rows,
        "wrong": wrong,
    }


def _mb(n: float) -> str:
    mb = n / 2**20
    return f"{mb:,.0f} MB" if abs(mb) >= 10 else f"{mb:.1f} MB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cache", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="rows in the frame (default 1,000,000)"
    )
    parser.add_argument(
        "--fill",
        choices=("auto", "server", "direct"),
        default="auto",
        help="how to fill the rows after the server sample: auto (the server, unless "
        "that projects over 2 min), server, or direct",
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=SERVER_FILL_SAMPLE,
        help=f"rows filled through the fake server first (default {SERVER_FILL_SAMPLE:,})",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="fresh processes per backend; the table shows the median (default 3)",
    )
    parser.add_argument(
        "--backends",
        default="pandas,polars",
        help="comma-separated frame libraries to measure (default pandas,polars)",
    )
    parser.add_argument(
        "--out", type=Path, default=OUT_DIR, help="folder for the JSON and the profiles"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the frame and the cache go (default: a temporary folder, removed after)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="print only the results, not the progress"
    )
    # Internal: one measurement in a fresh process.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=("pandas", "polars"), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--api-key", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    given = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(given)
    args.command = " ".join(["python -m benchmarks.cache", *given])
    if args.child:
        print(json.dumps(child_measure(args)))
        return 0
    if args.rows < 1 or args.sample < 1 or args.repeat < 1:
        parser.error("--rows, --sample and --repeat must be >= 1")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not args.backends or not set(args.backends) <= {"pandas", "polars"}:
        parser.error("--backends takes pandas, polars or both")
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # interleave with the log
    args.out.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    own_workdir = args.workdir is None
    args.workdir = (
        Path(tempfile.mkdtemp(prefix="llmframe-bench-cache-")) if own_workdir else args.workdir
    )
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        return _main(args, log)
    finally:
        if own_workdir:
            shutil.rmtree(args.workdir, ignore_errors=True)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _main(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmframe.testing import FakeServer

    warnings.simplefilter("ignore", RuntimeWarning)  # the once-only offline-tokenizer notice
    command = args.command
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()
    wall = time.perf_counter()
    if (args.workdir / "cache").exists() and any((args.workdir / "cache").iterdir()):
        raise SystemExit(f"{args.workdir / 'cache'} is not empty; give an empty --workdir")
    log(f"building a frame of {args.rows:,} rows in {args.workdir}")
    values = reviews(args.rows)
    pq.write_table(
        pa.table({"review_id": pa.array(range(args.rows), pa.int64()), "review": values}),
        args.workdir / "frame.parquet",
    )
    log("filling the cache")
    fill = fill_cache(args.workdir, values, args.fill, args.sample, log)
    del values

    runs: dict[str, list[dict[str, Any]]] = {backend: [] for backend in args.backends}
    profiled: dict[str, dict[str, Any]] = {}
    with FakeServer() as server:
        for i in range(args.repeat):
            for backend in runs:
                log(f"re-run on {backend} in a fresh process ({i + 1}/{args.repeat})")
                runs[backend].append(
                    _run_child(args, backend, server.base_url, server.api_key, profile=False)
                )
        for backend in runs:
            log(f"profiling the re-run on {backend} in a fresh process")
            profiled[backend] = _run_child(
                args, backend, server.base_url, server.api_key, profile=True
            )["calls"][0]
        server_requests = server.stats.requests
    load_after = os.getloadavg()

    host = machine()
    print(f"$ {command}")
    print(
        f"{started:%Y-%m-%d %H:%M} UTC; {host['cores']} CPUs, {host['ram_gb']} GB RAM, "
        f"{host['platform']}, Python {host['python']}; llmframe {git_commit() or '?'}; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
    )
    print()
    how = f"{fill['server_rows']:,} rows through the fake server in {fill['server_seconds']:.1f}s ({fill['server_rows_per_second']:,.0f} rows/s"
    how += f"; all {fill['rows']:,} that way: ~{fill['projected_server_seconds']:.0f}s)"
    if fill["direct_rows"]:
        how += (
            f" + {fill['direct_rows']:,} written directly in {fill['direct_seconds']:.1f}s, keys verified "
            f"by re-running {fill['verify']['rows']:,} of them ({fill['verify']['requests']} requests)"
        )
    print(f"Cache fill: {how}.")
    print(
        f"Cache on disk: {_mb(fill['cache_bytes'])} in {fill['segments']} segments = "
        f"{_mb(fill['bytes_per_million_rows'])} per million rows "
        f"(the server-written part alone: {_mb(fill['server_bytes_per_row'] * 1e6)} per million)"
    )
    print()
    header = (
        f"{'backend':<8} {'call':<5} {'rows':>9} {'seconds':>8} {'rows/s':>9} {'target':>6} "
        f"{'frame':>7} {'peak +':>8} {'x frame':>7} {'target':>6} {'requests':>8} {'checked':>9}"
    )
    print(header)
    print("-" * len(header))
    failures = []
    enforce = args.rows >= 1_000_000
    summary: dict[str, Any] = {}
    for backend, children in runs.items():
        frame_bytes = children[0]["frame_bytes"]
        for label in ("cold", "warm"):
            calls = [c for child in children for c in child["calls"] if c["call"] == label]
            seconds = _median([c["seconds"] for c in calls])
            rate = args.rows / seconds
            peak = max(c["peak_increase"] for c in calls)
            ratio = peak / frame_bytes
            speed_ok = rate >= TARGET_ROWS_PER_SECOND
            memory_ok = ratio <= TARGET_MEMORY_RATIO
            requests = sum(c["requests"] for c in calls)
            checked = sum(c["checked_rows"] for c in calls)
            wrong = sum(c["wrong_answers"] for c in calls) + sum(
                c["cached_rows"] != args.rows for c in calls
            )
            summary[f"{backend}_{label}"] = {
                "seconds_median": seconds,
                "seconds_all": [c["seconds"] for c in calls],
                "rows_per_second": rate,
                "frame_bytes": frame_bytes,
                "peak_increase_max": peak,
                "peak_x_frame": ratio,
                "requests": requests,
                "speed_ok": speed_ok,
                "memory_ok": memory_ok,
            }
            if requests or wrong:
                failures.append(
                    f"{backend} {label}: {requests} requests, {wrong} wrong or uncached"
                )
            if label == "cold" and enforce and not (speed_ok and memory_ok):
                missed = " and ".join(
                    name for name, ok in (("speed", speed_ok), ("memory", memory_ok)) if not ok
                )
                failures.append(
                    f"{backend}: {missed} target missed ({rate:,.0f} rows/s, "
                    f"peak +{_mb(peak)} = {ratio:.1f}x the frame)"
                )
            print(
                f"{backend:<8} {label:<5} {args.rows:>9,} {seconds:>8.2f} {rate:>9,.0f} "
                f"{'PASS' if speed_ok else 'FAIL':>6} {_mb(frame_bytes):>7} {_mb(peak):>8} {ratio:>6.1f}x "
                f"{'PASS' if memory_ok else 'FAIL':>6} {requests:>8} {checked - wrong:>4}/{checked}"
            )
    print(
        f"\nTargets: >= {TARGET_ROWS_PER_SECOND:,} rows/s and a peak RSS increase <= "
        f"{TARGET_MEMORY_RATIO:g}x the frame's own size (pandas memory_usage(deep=True), polars "
        "estimated_size()), for the cold call (the first apply in a fresh process; warm = the "
        f"second). Median seconds and largest peak over {args.repeat} fresh process(es) per backend; "
        "baseline = the process with the frame loaded. The live fake server saw "
        f"{server_requests} requests during all re-runs."
    )
    for backend, call in profiled.items():
        print(
            f"\nWhere the time goes: {backend}, cold re-run under cProfile ({call['seconds']:.2f}s with profiling):"
        )
        print("\n".join(profile_summary(Path(call["profile"]), call["seconds"])))
        print(
            "  memory by phase (RSS above the baseline: at the start, the peak during, at the end):"
        )
        for phase in call.get("memory_phases", []):
            calls = phase.get("calls", 1)
            name = "  " * phase["depth"] + phase["phase"] + (f" x{calls}" if calls > 1 else "")
            print(
                f"    {name:<28} {_mb(phase['rss_at_start']):>9} {_mb(phase['peak_during']):>9} "
                f"{_mb(phase['rss_at_end']):>9}   ({phase['seconds']:.2f}s)"
            )
    total = time.perf_counter() - wall
    print(f"\nRun took {total:.0f}s.")

    payload = {
        "benchmark": "cache",
        "command": command,
        "started": started.isoformat(),
        "seconds": total,
        "machine": host,
        "load_average": {"before": load_before, "after": load_after},
        "llmframe": git_commit(),
        "template": TEMPLATE,
        "targets": {
            "rows_per_second": TARGET_ROWS_PER_SECOND,
            "peak_memory_x_frame": TARGET_MEMORY_RATIO,
        },
        "fill": fill,
        "summary": summary,
        "runs": runs,
        "profiled": profiled,
        "server_requests_during_reruns": server_requests,
    }
    if server_requests:
        failures.append(f"the fake server saw {server_requests} requests during re-runs")
    payload["failures"] = failures
    path = args.out / "cache.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    print(f"JSON: {path}; profiles: {', '.join(c['profile'] for c in profiled.values())} (+ .txt)")
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
