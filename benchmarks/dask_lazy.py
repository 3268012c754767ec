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

from benchmarks._common import MODEL, command_line, format_table, machine, run_header, scaled
from llmframe.testing import FakeServer, expected_answer

TEMPLATE = "Classify the sentiment of this review: {review}"
LATENCY = 0.05


def _warm() -> None:
    from llmframe._tokens import get_tokenizer

    get_tokenizer(MODEL)


def _timed(run: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = run()
    return out, time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rpm", type=float, default=600.0)
    parser.add_argument("--quota-only", action="store_true", help="only the quota table (4 workers, 3 limiters)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    import distributed

    import llmframe.dask  # noqa: F401

    n = scaled(20_000, args.scale, minimum=100)
    print(run_header(command_line("benchmarks.dask_lazy", argv), datetime.now(timezone.utc), machine()))
    reviews = [f"review {i}: the product was {'good' if i % 3 else 'bad'} enough" for i in range(n)]
    expected = [expected_answer(TEMPLATE.format(review=r)) for r in reviews]
    pdf = pd.DataFrame({"review": reviews, "n": range(n)})
    with distributed.LocalCluster(n_workers=4, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
            distributed.Client(cl) as client, tempfile.TemporaryDirectory() as tmp:  # fmt: skip
        client.run(_warm)  # each worker imports llmframe and loads its tokenizer off the clock
        if not args.quota_only:
            _throughput(pdf, n, expected, client, tmp)
        _quota(pdf, args, client)


def _throughput(pdf: pd.DataFrame, n: int, expected: list[str], client: Any, tmp: str) -> None:
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
        rows.append(["dask, 4 processes, 8 partitions", n, server.stats.requests, seconds, base / seconds])
        server.reset_stats()
        again = dd.from_pandas(pdf, npartitions=8).llm.apply(TEMPLATE, cache=f"{tmp}/dask", **common)
        got, seconds = _timed(lambda: again.compute(scheduler=client))
        assert got["answer"].tolist() == expected and again.llm.report.cached_rows == n
        rows.append(["dask, cached re-run", n, server.stats.requests, seconds, base / seconds])
        server.reset_stats()
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
    print(format_table(["run", "rows", "requests", "seconds", "x eager"], rows))


def _quota(pdf: pd.DataFrame, args: argparse.Namespace, client: Any) -> None:
    """4 worker processes against a server that enforces ``rpm``: each with its own limiter,
    sharing one through the machine's file, and through a real redis-server."""
    import dask.dataframe as dd

    from benchmarks._common import achieved_rates
    from benchmarks.processes import redis_server

    quota: list[list[Any]] = []
    part = pdf.head(scaled(4_000, args.scale, minimum=100))
    names = ["pandas eager", "dask, 4 processes", "dask, 4 processes, limiter='machine'",
             "dask, 4 processes, limiter='redis://...'"]  # fmt: skip
    with contextlib.ExitStack() as stack:
        try:
            redis_url: str | None = stack.enter_context(redis_server())
        except FileNotFoundError:
            redis_url = None
            names.pop()
        for name in names:
            with FakeServer(latency=LATENCY, rpm=args.rpm, burst_seconds=1.0) as server:
                common: dict[str, Any] = {"model": MODEL, "base_url": server.base_url, "api_key": server.api_key,
                                          "progress": False, "cache": False, "rpm": args.rpm}  # fmt: skip
                if "machine" in name:
                    common["limiter"] = "machine"
                elif "redis" in name:
                    common["limiter"] = redis_url
                start = time.perf_counter()
                if name == "pandas eager":
                    part.llm.apply(TEMPLATE, **common)
                else:
                    dd.from_pandas(part, npartitions=8).llm.apply(TEMPLATE, **common).compute(scheduler=client)
                seconds = time.perf_counter() - start
                stats = server.stats
                rates = achieved_rates(stats.snapshot()["log"], rpm=args.rpm, tpm=None, burst_seconds=1.0)
                binding = "" if rates.binding_fraction is None else f"{rates.binding_fraction:.0%}"
                quota.append([name, len(part), stats.requests, stats.rate_limited,
                              f"{stats.rate_limited / max(1, stats.requests):.1%}", binding, seconds])  # fmt: skip
    print(f"\nrpm={args.rpm:g} given, the server's limit too (a 1 s burst):")
    print(format_table(["run", "rows", "requests", "429s", "429 share", "binding limit", "seconds"], quota))


if __name__ == "__main__":
    main()
