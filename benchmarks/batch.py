"""Batch API mode against the live path: the same 10,000 rows, requests and cost side by side.

Run ``python -m benchmarks.batch [--scale 0.1]``. The rows are ``benchmarks.packing``'s
sentiment workload (a ~40-token instruction, one short review per row), sent twice
against one fake server, each time into an empty cache folder:

- **live, packed (default)**: ``df.llm.apply`` with ``batch_size=None``: the packing
  check, then packed requests with canaries, at gpt-4o-mini's live price;
- **batch mode**: ``df.llm.apply(..., mode="batch")``: the same packing without a live
  check (four rows alone as canaries), through the fake Batch API (``batch_seconds=1``),
  at the Batch API's price, half the live one.

The table gives rows, requests, rows per request, tokens, cost, cost per 1,000 rows,
the ratio of batch to live cost (measured in the same run) and the correct rows. The
JSON (``benchmarks/out/batch-*.json``) holds the tokens per row that
``benchmarks.cost_table`` prices at 1K, 10K and 100K rows a day.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from datetime import datetime, timezone
from typing import Any

from benchmarks._common import (
    MODEL,
    add_standard_arguments,
    command_line,
    format_table,
    run_header,
    save_json,
    scaled,
)
from benchmarks.packing import SENTIMENT, reviews
from llmframe.testing import FakeServer, expected_answer

ROWS = 10_000
SERVER: dict[str, Any] = {"latency": 0.0, "batch_seconds": 1.0, "batch_validate_seconds": 0.05}


def measure(rows: list[str], mode: str) -> dict[str, Any]:
    """One ``apply`` of every row in ``mode``, on a fresh server and cache folder."""
    import pandas as pd

    import llmframe  # noqa: F401  (registers df.llm)

    df = pd.DataFrame({"review": rows})
    with FakeServer(**SERVER) as server, tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        out = df.llm.apply(SENTIMENT, output="answer", model=MODEL, base_url=server.base_url,
                           api_key=server.api_key, cache=cache, progress=False, mode=mode)  # fmt: skip
        seconds = time.perf_counter() - started
        stats = server.stats.snapshot()
    report = out.llm.report
    assert report is not None
    correct = sum(a == expected_answer(SENTIMENT.format(review=r)) for a, r in zip(out["answer"], rows, strict=True))
    return {
        "mode": mode, "rows": len(rows), "requests": report.requests, "prompt_tokens": report.prompt_tokens,
        "completion_tokens": report.completion_tokens, "cost_usd": report.cost_usd, "seconds": seconds,
        "correct": correct, "batches": stats["batches_created"], "live_requests": stats["requests"],
        "prompt_tokens_per_row": report.prompt_tokens / len(rows),
        "completion_tokens_per_row": report.completion_tokens / len(rows),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_standard_arguments(parser)
    args = parser.parse_args(argv)
    command = command_line("benchmarks.batch", argv)
    started = datetime.now(timezone.utc)
    print(run_header(command, started), flush=True)
    warnings.simplefilter("ignore")  # the offline tokenizer's notice
    rows = reviews(scaled(ROWS, args.scale, minimum=100))
    live, batch = measure(rows, "live"), measure(rows, "batch")
    header = ["variant", "rows", "requests", "rows/request", "input tokens", "output tokens", "cost",
              "$ per 1k rows", "vs live", "correct"]  # fmt: skip
    table = []
    for name, r in (("live, packed (default)", live), ("batch mode", batch)):
        table.append([
            name, f"{r['rows']:,}", f"{r['requests']:,}", f"{r['rows'] / max(1, r['requests']):.1f}",
            f"{r['prompt_tokens']:,}", f"{r['completion_tokens']:,}", f"${r['cost_usd']:.4f}",
            f"${1000 * r['cost_usd'] / r['rows']:.4f}", f"{r['cost_usd'] / live['cost_usd']:.2f}x",
            f"{r['correct']:,}/{r['rows']:,}",
        ])  # fmt: skip
    print()
    print(format_table(header, table))
    path = save_json("batch", {"command": command, "started": started, "model": MODEL, "server": SERVER,
                               "results": [live, batch]}, args.out)  # fmt: skip
    print(f"\nsaved {path}")
    return 0 if live["correct"] == batch["correct"] == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
