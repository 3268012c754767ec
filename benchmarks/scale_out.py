"""Scale-out: a short task on ``--workers`` Dask worker processes against one local process.

``--scale`` x 1,000,000 distinct short codes (``Reverse the code <<K0000042>>``),
``--batch-size`` rows per request (100; llmframe's own choice for so short a task at
gpt-4o-mini's prices is one row per request, cheaper than the packing overhead), uncached, against the fake server with no limits and no latency, run in a
process of its own (``benchmarks.throughput``'s ``ServerProcess``) so that its
CPU is not the client's. The baseline is the eager pandas ``df.llm.apply`` in
this process, before any cluster exists; then ``ddf.llm.apply`` over
``--partitions`` partitions on a ``LocalCluster`` of ``--workers`` worker
processes (started, and their imports done, before the clock). Every answer is
checked. The ratio is the baseline's seconds over the cluster's.

Memory: the peak resident size (``VmHWM`` of ``/proc/<pid>/status``) of this
process after the baseline, and of each worker after its partitions (what its
imports alone take is the ``VmRSS`` it had before the run). The server's CPU
seconds during each run show what the machine had left for the client: on a
machine with fewer cores than workers + 1, the workers measure contention, not
scale-out.

Then the quota table of ``benchmarks.dask_lazy`` on the same workers: the
server enforces ``--rpm``, given to each call; every worker its own limiter,
against the machine's and Redis's shared ones (429 share, % of the binding limit).

Usage::

    python -m benchmarks.scale_out                  # 1M rows, 4 workers, then the quota table
    python -m benchmarks.scale_out --scale 0.01     # 10,000 rows
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

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
from benchmarks.cache import current_rss, peak_rss
from benchmarks.dask_lazy import quota_table, warm
from benchmarks.throughput import TEMPLATE, ServerProcess, codes
from llmframe.testing import expected_answer

ROWS = 1_000_000


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f}"


def _memory(client: Any) -> dict[str, int]:
    """Each worker's resident size now, by address."""
    return {address: int(rss) for address, rss in client.run(current_rss).items()}


def main(argv: Sequence[str] | None = None, client: Any = None) -> int:
    """The benchmark; on ``client``'s cluster if given (the smoke test's), else on a new one of ``--workers``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_standard_arguments(parser)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=100,
                        help="rows per request (a short task: llmframe's own choice at gpt-4o-mini's prices is 1)")
    parser.add_argument("--rpm", type=float, default=600.0, help="the quota table's limit")
    parser.add_argument("--quota-rows", type=int, default=4_000, help="rows of each quota run")
    parser.add_argument("--no-quota", action="store_true", help="the scale-out table only")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    import dask.dataframe as dd
    import distributed
    import pandas as pd

    import llmframe.dask  # noqa: F401  (registers ddf.llm)

    n = scaled(ROWS, args.scale, minimum=100)
    command = command_line("benchmarks.scale_out", argv)
    print(run_header(command, datetime.now(timezone.utc), machine()))
    pdf = pd.DataFrame({"code": codes(n)})
    expected = [expected_answer(TEMPLATE.format(code=c)) for c in pdf["code"]]
    runs: list[dict[str, Any]] = []
    with ServerProcess() as server:
        common = {"model": MODEL, "base_url": server.base_url, "api_key": server.api_key, "cache": False,
                  "progress": False, "batch_size": args.batch_size}  # fmt: skip
        warm()
        cpu, requests = server.cpu()
        start = time.perf_counter()
        out = pdf.llm.apply(TEMPLATE, **common)
        seconds = time.perf_counter() - start
        assert out["answer"].tolist() == expected, "a wrong answer in the local run"
        cpu_after, requests_after = server.cpu()
        runs.append({"run": "1 local process (pandas, baseline)", "rows": n, "requests": requests_after - requests,
                     "seconds": seconds, "server_cpu_seconds": cpu_after - cpu, "peak_bytes": [peak_rss()],
                     "before_bytes": []})  # fmt: skip
        print(f"local: {seconds:.1f} s", flush=True)  # a long run shows its progress
        del out
        with contextlib.ExitStack() as stack:
            if client is None:
                cluster = stack.enter_context(distributed.LocalCluster(
                    n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None))  # fmt: skip
                client = stack.enter_context(distributed.Client(cluster))
                client.wait_for_workers(args.workers)  # a loaded machine registers them after the cluster returns
            args.workers = len(client.nthreads())  # asked of the scheduler now, not its last cached identity
            client.run(warm)
            before = _memory(client)
            ddf = dd.from_pandas(pdf, npartitions=args.partitions)
            cpu, requests = server.cpu()
            start = time.perf_counter()
            got = ddf.llm.apply(TEMPLATE, **common).compute(scheduler=client)
            seconds = time.perf_counter() - start
            assert got["answer"].tolist() == expected, "a wrong answer in the Dask run"
            cpu_after, requests_after = server.cpu()
            peaks = client.run(peak_rss)
            print(f"Dask: {seconds:.1f} s", flush=True)
            runs.append({"run": f"Dask, {args.workers} worker processes, {args.partitions} partitions", "rows": n,
                         "requests": requests_after - requests, "seconds": seconds,
                         "server_cpu_seconds": cpu_after - cpu, "peak_bytes": sorted(peaks.values()),
                         "before_bytes": sorted(before.values())})  # fmt: skip
            base = runs[0]["seconds"]
            for run in runs:
                run["rows_per_second"] = run["rows"] / run["seconds"]
                run["x_local"] = base / run["seconds"]
            rows = [[r["run"], r["rows"], r["requests"], f"{r['seconds']:.1f}", f"{r['rows_per_second']:,.0f}",
                     f"{r['x_local']:.2f}", f"{r['server_cpu_seconds']:.1f}",
                     " / ".join(_mb(b) for b in r["peak_bytes"]),
                     " / ".join(_mb(b) for b in r["before_bytes"]) or "-"] for r in runs]  # fmt: skip
            print(f"\n{n:,} rows, batch_size={args.batch_size}, uncached, zero-latency server in its own process, no limits:")
            print(format_table(["run", "rows", "requests", "seconds", "rows/s", "x local", "server CPU s",
                                "peak MB per process", "MB before the run"], rows))  # fmt: skip
            quota = quota_table(client, args.quota_rows, args.rpm) if not args.no_quota else None
    if quota is not None:
        print(quota[1])
    save_json("scale_out", {"command": command, "machine": machine(), "rows": n, "workers": args.workers,
                            "partitions": args.partitions, "batch_size": args.batch_size, "runs": runs, "rpm": args.rpm,
                            "quota": quota[0] if quota is not None else []}, args.out)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
