"""Embeddings benchmark: packed requests against one text per request, and a cached re-run.

Two measurements, each against a baseline in the same run:

1. **Packing.** ``df.llm.embed`` over ``--scale`` x 5,000 distinct short reviews
   against the fake server (``latency`` 50 ms a request, no limits), once as it
   packs (up to 2,048 texts and 300,000 tokens a request) and once at one text per
   request (``max_batch_items=1``, the same client, limiter and concurrency).
   Requests and wall time, and the ratio. Every vector is checked against the
   server's own function.
2. **Cached re-run.** ``--scale`` x 1,000,000 reviews, every vector (256
   dimensions) in the cache and every answer in the text cache, both keyed as
   the runs key them (vectors written straight into the cache: embedding a
   million texts through the fake server would take minutes and prove nothing
   more). Then a fully cached ``df.llm.embed`` against a fully cached
   ``df.llm.apply`` over the same polars frame, each the median of ``--repeat``
   calls, in rows/s; the server must see zero requests. Target: embed at least
   as fast as apply. A third line re-runs embed over the frame's rows shuffled:
   its vectors no longer come out of the segments in runs, so they are copied
   row by row (the slow path, shown for what it costs). A fourth re-runs embed
   after ``llmframe.compact_cache`` merged the ten segments into one: compaction
   keeps the rows in order, so the re-run still slices the mapped file.

Usage::

    python -m benchmarks.embeddings                 # 5,000 texts; 1,000,000 cached rows
    python -m benchmarks.embeddings --scale 0.01    # the smoke test's size
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
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
from benchmarks.cache import TEMPLATE, fill_directly, reviews

EMBED_MODEL = "text-embedding-3-small"
DIMENSIONS = 256
LATENCY = 0.05
PACKED_ROWS = 5_000
CACHED_ROWS = 1_000_000


def _embed(server: Any, df: Any, cache: Any, **options: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = df.llm.embed("review", output="vec", model=EMBED_MODEL, dimensions=DIMENSIONS, base_url=server.base_url,
                       api_key=server.api_key, progress=False, cache=cache, **options)  # fmt: skip
    return out, time.perf_counter() - start


def packing(rows: int) -> dict[str, Any]:
    import numpy as np
    import polars as pl

    import llmframe
    from llmframe.testing import FakeServer
    from llmframe.testing._embeddings import vectors

    texts = reviews(rows)
    expected = vectors(texts, DIMENSIONS)
    df = pl.DataFrame({"review": texts})
    results: dict[str, Any] = {}
    with FakeServer(latency=LATENCY) as server:
        for name, options in (("packed", {}), ("one text per request", {"max_batch_items": 1})):
            server.reset_stats()
            out, seconds = _embed(server, df, False, **options)
            results[name] = {
                "requests": server.embedding_stats.requests,
                "seconds": seconds,
                "rows_per_second": rows / seconds,
                "correct": bool(np.array_equal(llmframe.embedding_matrix(out["vec"]), expected)),
            }
    packed, single = results["packed"], results["one text per request"]
    results["request_ratio"] = single["requests"] / packed["requests"]
    results["speedup"] = single["seconds"] / packed["seconds"]
    return results


def _fill_vectors(cache_dir: Path, texts: Sequence[str]) -> None:
    """Write a vector for each text, keyed exactly as ``embed`` keys ``"review"`` at DIMENSIONS."""
    import numpy as np

    from llmframe._embed_cache import EmbeddingCache
    from llmframe._embed_texts import embed_prefix
    from llmframe._keys import row_digests

    prefix = embed_prefix(EMBED_MODEL, DIMENSIONS)
    cache = EmbeddingCache(cache_dir)
    rng = np.random.default_rng(0)
    chunk = 100_000  # one segment each, as a long run writes many
    for lo in range(0, len(texts), chunk):
        part = list(texts[lo : lo + chunk])
        digests, _ = row_digests(prefix, [part])
        cache.add(digests, EMBED_MODEL, rng.standard_normal((len(part), DIMENSIONS), dtype=np.float32))
        cache.flush()


def cached_rerun(rows: int, repeat: int) -> dict[str, Any]:
    import polars as pl

    from llmframe import compact_cache
    from llmframe.testing import FakeServer

    texts = reviews(rows)
    df = pl.DataFrame({"review": texts})
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=0)
    with tempfile.TemporaryDirectory(prefix="llmframe-embed-bench-") as tmp:
        cache_dir = Path(tmp)
        start = time.perf_counter()
        fill_directly(cache_dir, texts)
        _fill_vectors(cache_dir, texts)
        fill_seconds = time.perf_counter() - start
        times: dict[str, list[float]] = {"embed": [], "apply": [], "embed, rows shuffled": []}
        with FakeServer() as server:
            for _ in range(repeat):
                for name in ("apply", "embed", "embed, rows shuffled"):
                    begin = time.perf_counter()
                    if name.startswith("embed"):
                        out, _ = _embed(server, shuffled if "shuffled" in name else df, cache_dir)
                    else:
                        out = df.llm.apply(TEMPLATE, output="answer", model=MODEL, base_url=server.base_url,
                                           api_key=server.api_key, progress=False, cache=cache_dir)  # fmt: skip
                    times[name].append(time.perf_counter() - begin)
                    report = out.llm.report
                    assert report.cached_rows == rows and report.requests == 0, report
                    del out
            compact_cache(cache_dir)
            for _ in range(repeat):
                out, seconds = _embed(server, df, cache_dir)
                assert out.llm.report.cached_rows == rows and out.llm.report.requests == 0
                times.setdefault("embed, compacted", []).append(seconds)
                del out
            requests = server.stats.requests + server.embedding_stats.requests
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        "rows": rows,
        "dimensions": DIMENSIONS,
        "fill_seconds": fill_seconds,
        "seconds": medians,
        "rows_per_second": {name: rows / s for name, s in medians.items()},
        "embed_vs_apply": medians["apply"] / medians["embed"],
        "compacted_embed_vs_apply": medians["apply"] / medians["embed, compacted"],
        "server_requests": requests,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_standard_arguments(parser)
    parser.add_argument("--repeat", type=int, default=3, help="cached re-runs of each kind (median shown)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*tiktoken encoding.*")
    started = datetime.now(timezone.utc)
    packed = packing(scaled(PACKED_ROWS, args.scale, minimum=50))
    cached = cached_rerun(scaled(CACHED_ROWS, args.scale, minimum=1_000), max(1, args.repeat))
    print(run_header(command_line("benchmarks.embeddings", argv), started))
    rows = scaled(PACKED_ROWS, args.scale, minimum=50)
    print(f"\nPacking: {rows:,} short texts, {DIMENSIONS} dimensions, server latency {LATENCY * 1000:.0f} ms")
    print(format_table(
        ["variant", "requests", "seconds", "rows/s", "vectors exact"],
        [[name, packed[name]["requests"], f"{packed[name]['seconds']:.2f}", f"{packed[name]['rows_per_second']:,.0f}",
          packed[name]["correct"]] for name in ("packed", "one text per request")],
    ))  # fmt: skip
    print(f"{packed['request_ratio']:,.0f}x fewer requests, {packed['speedup']:.1f}x faster")
    print(f"\nCached re-run: {cached['rows']:,} rows, polars, median of {max(1, args.repeat)}; "
          f"server requests: {cached['server_requests']}")  # fmt: skip
    print(format_table(
        ["call", "seconds", "rows/s"],
        [[name, f"{cached['seconds'][name]:.2f}", f"{cached['rows_per_second'][name]:,.0f}"]
         for name in ("embed", "apply", "embed, rows shuffled", "embed, compacted")],
    ))  # fmt: skip
    ok = cached["embed_vs_apply"] >= 1.0
    ok = ok and cached["compacted_embed_vs_apply"] >= 1.0
    print(f"embed / apply speed: {cached['embed_vs_apply']:.2f}x, compacted {cached['compacted_embed_vs_apply']:.2f}x "
          f"(target >= 1: {'ok' if ok else 'MISSED'})")
    save_json("embeddings", {"machine": machine(), "command": command_line("benchmarks.embeddings", argv),
                             "packing": packed, "cached": cached}, args.out)  # fmt: skip
    correct = all(packed[name]["correct"] for name in ("packed", "one text per request"))
    return 0 if correct and cached["server_requests"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
