"""Dask and lazy polars against the eager call: the same rows, the same fake server.

``--scale`` x 20,000 distinct reviews, the fake server in this process with 50 ms
a request and no limits. The baseline is the eager pandas ``df.llm.apply``; then
``ddf.llm.apply`` over 8 partitions on a ``LocalCluster`` of 4 worker processes
(the cluster started before the clock), its cached re-run, and a polars
``LazyFrame`` collected by the streaming engine. Every answer is checked. Then
the quota: ``rpm=--rpm`` given to the call and enforced by the server (a 1 s
burst), eager and on the cluster, with the share of requests answered 429: each
worker process has its own limiter, so 4 of them together ask for up to 4 times
the quota, unless ``limiter="machine"`` makes them share it (the third line).

Usage::

    python -m benchmarks.dask_lazy                # 20,000 rows
    python -m benchmarks.dask_lazy --scale 0.05   # 1,000 rows

The quota table is :func:`quota_table`, which ``benchmarks.scale_out`` prints too.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import pandas as pd
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
from llmframe.testing import FakeServer, expected_answer

TEMPLATE = "Classify the sentiment of this review: {review}"
LATENCY = 0.05


def warm() -> None:
    """In each worker, before the clock: llmframe imported, the tokenizer loaded."""
    from llmframe._tokens import get_tokenizer

    get_tokenizer(MODEL)


def _leave_redis() -> None:
    from llmframe._redis_lease import close_all

    close_all()


def reviews(n: int) -> pd.DataFrame:
    """``n`` distinct short reviews, the same on every call."""
    return pd.DataFrame({"review": [f"review {i}: the product was {'good' if i % 3 else 'bad'} enough"
                                    for i in range(n)], "n": range(n)})  # fmt: skip


def _timed(run: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = run()
    return out, time.perf_counter() - start


def main(argv: Sequence[str] | None = None, client: Any = None) -> int:
    """The benchmark; on ``client``'s cluster if given (the smoke test's), else on a new one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_standard_arguments(parser)
    parser.add_argument("--rpm", type=float, default=600.0)
    parser.add_argument("--quota-only", action="store_true", help="only the quota table (4 workers, 3 limiters)")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    import distributed

    import llmframe.dask  # noqa: F401

    n = scaled(20_000, args.scale, minimum=100)
    command = command_line("benchmarks.dask_lazy", argv)
    print(run_header(command, datetime.now(timezone.utc), machine()))
    pdf = reviews(n)
    expected = [expected_answer(TEMPLATE.format(review=r)) for r in pdf["review"]]
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        if client is None:
            cluster = stack.enter_context(distributed.LocalCluster(
                n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None))  # fmt: skip
            client = stack.enter_context(distributed.Client(cluster))
            client.wait_for_workers(args.workers)  # a loaded machine registers them after the cluster returns
        client.run(warm)  # each worker imports llmframe and loads its tokenizer off the clock
        workers = len(client.nthreads())  # asked of the scheduler now, not its last cached identity
        throughput = [] if args.quota_only else _throughput(pdf, n, expected, client, tmp, workers)
        quota, table = quota_table(client, scaled(4_000, args.scale, minimum=100), args.rpm)
        print(table)
    save_json("dask_lazy", {"command": command, "machine": machine(), "rows": n, "rpm": args.rpm,
                            "throughput": throughput, "quota": quota}, args.out)  # fmt: skip
    return 0


def _throughput(pdf: pd.DataFrame, n: int, expected: list[str], client: Any, tmp: str,
                workers: int) -> list[dict[str, Any]]:  # fmt: skip
    import dask.dataframe as dd

    rows: list[list[Any]] = []
    with FakeServer(latency=LATENCY) as server:
        common = {"model": MODEL, "base_url": server.base_url, "api_key": server.api_key, "progress": False}
        eager, base = _timed(lambda: pdf.llm.apply(TEMPLATE, cache=f"{tmp}/eager", **common))
        assert eager["answer"].tolist() == expected
        rows.append(["pandas eager (baseline)", n, server.stats.requests, base, 1.0])
        server.reset_stats()
        lazy = dd.from_pandas(pdf, npartitions=8).llm.apply(TEMPLATE, cache=f"{tmp}/dask", **common)
        got, seconds = _timed(lambda: lazy.compute(scheduler=client))
        assert got["answer"].tolist() == expected
        rows.append([f"dask, {workers} processes, 8 partitions", n, server.stats.requests, seconds, base / seconds])
        server.reset_stats()
        again = dd.from_pandas(pdf, npartitions=8).llm.apply(TEMPLATE, cache=f"{tmp}/dask", **common)
        got, seconds = _timed(lambda: again.compute(scheduler=client))
        assert got["answer"].tolist() == expected and again.llm.report.cached_rows == n
        rows.append(["dask, cached re-run", n, server.stats.requests, seconds, base / seconds])
        server.reset_stats()
        frame = pl.from_pandas(pdf)
        polars_eager, polars_base = _timed(
            lambda: frame.llm.apply(TEMPLATE, cache=f"{tmp}/polars-eager", **common))
        assert polars_eager["answer"].to_list() == expected
        rows.append(["polars eager", n, server.stats.requests, polars_base, base / polars_base])
        server.reset_stats()
        plan = frame.lazy().llm.apply(TEMPLATE, cache=f"{tmp}/polars", **common)
        got, seconds = _timed(lambda: plan.collect(engine="streaming"))
        assert got["answer"].to_list() == expected
        rows.append(["polars LazyFrame, streaming", n, server.stats.requests, seconds, base / seconds])
    header = ["run", "rows", "requests", "seconds", "x eager"]
    print(format_table(header, rows))
    return [dict(zip(header, row, strict=True)) for row in rows]


def quota_table(client: Any, rows: int, rpm: float) -> tuple[list[dict[str, Any]], str]:
    """The cluster's worker processes against a server that enforces ``rpm``: each with its own
    limiter, sharing one through the machine's file, and through a real redis-server; eager
    pandas first. The results, and the table as printed."""
    import dask.dataframe as dd

    from benchmarks._common import achieved_rates
    from benchmarks.processes import redis_server

    quota: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    part = reviews(rows)
    workers = len(client.nthreads())
    names = ["pandas eager", f"dask, {workers} processes", f"dask, {workers} processes, limiter='machine'",
             f"dask, {workers} processes, limiter='redis://...'"]  # fmt: skip
    with contextlib.ExitStack() as stack:
        try:
            redis_url: str | None = stack.enter_context(redis_server())
        except FileNotFoundError:
            redis_url = None
            names.pop()
        for name in names:
            with FakeServer(latency=LATENCY, rpm=rpm, burst_seconds=1.0) as server:
                common: dict[str, Any] = {"model": MODEL, "base_url": server.base_url, "api_key": server.api_key,
                                          "progress": False, "cache": False, "rpm": rpm}  # fmt: skip
                if "machine" in name:
                    common["limiter"] = "machine"
                elif "redis" in name:
                    common["limiter"] = redis_url
                start = time.perf_counter()
                if name == "pandas eager":
                    out = part.llm.apply(TEMPLATE, **common)
                else:
                    out = dd.from_pandas(part, npartitions=2 * workers).llm.apply(TEMPLATE, **common)
                    out = out.compute(scheduler=client)
                seconds = time.perf_counter() - start
                if "redis" in name:  # the workers' limiters leave before their Redis stops
                    client.run(_leave_redis)
                # Rows can fail here: a limiter per worker runs into 429s until the retries run out.
                correct = sum(a == expected_answer(TEMPLATE.format(review=r))
                              for a, r in zip(out["answer"], part["review"], strict=True))  # fmt: skip
                stats = server.stats
                rates = achieved_rates(stats.snapshot()["log"], rpm=rpm, tpm=None, burst_seconds=1.0)
                binding = "" if rates.binding_fraction is None else f"{rates.binding_fraction:.0%}"
                share = stats.rate_limited / max(1, stats.requests)
                quota.append([name, len(part), stats.requests, stats.rate_limited, f"{share:.1%}", binding,
                              f"{correct / len(part):.1%}", seconds])  # fmt: skip
                results.append({"run": name, "rows": len(part), "requests": stats.requests, "seconds": seconds,
                                "correct": correct,
                                "rate_limited": stats.rate_limited, "share_429": share,
                                "binding_fraction": rates.binding_fraction})  # fmt: skip
    table = format_table(["run", "rows", "requests", "429s", "429 share", "binding limit", "correct", "seconds"],
                         quota)  # fmt: skip
    return results, f"\nrpm={rpm:g} given, the server's limit too (a 1 s burst):\n{table}"


if __name__ == "__main__":
    raise SystemExit(main())
