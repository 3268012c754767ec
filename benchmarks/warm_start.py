"""Warm start: a new process on an endpoint an earlier one used, against a cold first one.

Run ``python -m benchmarks.warm_start [--scale 0.1]``. Each measured run is one
``df.llm.apply`` in a fresh Python process, as a new kernel or script would be,
against one fake server (RPM 1,200, TPM 1M, 0.3 s + 5 ms per output token, the
short workload of ``benchmarks.packing``), 600 rows per run, once for each
``--burst`` (seconds of each limit the server's buckets hold: 60, a whole minute,
lets 600 one-row requests go as fast as the client sends them; 1 is a limit
enforced per second, as OpenAI documents its limits may be, where one row per
request waits for the bucket; default both):

- **batch_size=1**: the baseline, one row per request, first on the endpoint;
- **default, first process**: ``batch_size=None`` with nothing remembered
  (an empty user cache folder: no learned limits, no endpoint lessons, no
  packing verdict), so it probes the limits and checks packing;
- **default, second process**: a new process, other rows, the same folders: it
  starts from the limits in ``limits.json`` and the lessons and packing verdict
  in ``endpoints.json``. No answer comes from the cache (the rows are new).

Two tasks: ``short`` ("Reverse the code <<{code}>>", where a packed row is dearer
than a row alone, so the default sends one row per request) and ``sentiment``
(``benchmarks.packing``'s sentiment instruction on a review sentence, where
packing is cheaper). The table
gives wall seconds, the speed-up over batch_size=1 measured in the same run, the
429 share, requests and correct rows.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
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
from llmframe.testing import FakeServer

SERVER: dict[str, Any] = {"rpm": 1_200, "tpm": 1_000_000, "latency": 0.3, "latency_per_token": 0.005}
TASKS = {
    "short": ("Reverse the code <<{text}>>", "K{i:07d}"),
    "sentiment": ("Classify the sentiment of this customer review as positive, negative, neutral or mixed, "
                  "and give your confidence from 0 to 1. Answer like: positive 0.87\n\nReview: {text}",
                  "Order {i} arrived on time and the staff were friendly, would buy again"),
}  # fmt: skip
ROWS = 600


def child(base_url: str, task: str, first: int, rows: int, batch_size: int | None, cache: str) -> dict[str, Any]:
    """One run, in this (fresh) process; its outcome as JSON."""
    import warnings

    import pandas as pd

    import llmframe
    from llmframe.testing import expected_answer

    warnings.simplefilter("ignore")
    template, text = TASKS[task]
    df = pd.DataFrame({"text": [text.format(i=i) for i in range(first, first + rows)]})
    started = time.perf_counter()
    out = df.llm.apply(template, output="answer", model=MODEL, base_url=base_url, api_key="fake-key",
                       batch_size=batch_size, cache=cache, progress=False)  # fmt: skip
    seconds = time.perf_counter() - started
    report = llmframe.last_report()
    assert report is not None
    prompts = [template.format(text=t) for t in df["text"]]
    correct = sum(a == expected_answer(p) for a, p in zip(out["answer"], prompts, strict=True))
    return {"seconds": seconds, "requests": report.requests, "rate_limited": report.rate_limited,
            "correct": correct, "rows": rows, "packing": report.packing_reason}  # fmt: skip


def _spawn(home: str, *args: Any) -> dict[str, Any]:
    env = {**os.environ, "LLMFRAME_CACHE_DIR": home, "PYTHONWARNINGS": "ignore"}
    code = f"import json, sys; from benchmarks.warm_start import child; print(json.dumps(child(*{args!r})))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"child failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def measure(task: str, rows: int, burst: float = 60.0) -> list[dict[str, Any]]:
    """The three runs of one task, each against a fresh server on the same port whose
    buckets hold ``burst`` seconds of each limit."""
    results = []
    with socket.socket() as probe:  # one port for every server: a new process meets the same URL
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        variants = [("batch_size=1", "one", 1, 0), ("default, first process", "auto", None, 0),
                    ("default, second process", "auto", None, rows)]  # fmt: skip
        for name, folder, batch_size, first in variants:
            home = str(Path(tmp) / folder)  # limits.json, endpoints.json and answers: shared by "auto" runs
            with FakeServer(**SERVER, burst_seconds=burst, port=port) as server:
                r = _spawn(home, server.base_url, task, first, rows, batch_size, home)
                r["server_429"] = server.stats.rate_limited
            results.append({"task": task, "burst_seconds": burst, "variant": name, **r})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_standard_arguments(parser)
    parser.add_argument("--tasks", default="short,sentiment")
    parser.add_argument("--burst", default="60,1", help="the server's burst seconds to measure, comma-separated")
    args = parser.parse_args(argv)
    started = datetime.now(timezone.utc)
    rows = scaled(ROWS, args.scale, minimum=60)
    bursts = [float(b) for b in args.burst.split(",")]
    results = [r for burst in bursts for task in args.tasks.split(",") for r in measure(task, rows, burst)]
    table = []
    for r in results:
        base = next(b for b in results if b["task"] == r["task"] and b["burst_seconds"] == r["burst_seconds"]
                    and b["variant"] == "batch_size=1")  # fmt: skip
        share = r["rate_limited"] / max(1, r["requests"])
        table.append([f"{r['burst_seconds']:g} s", r["task"], r["variant"], f"{r['seconds']:.1f}",
                      f"{base['seconds'] / r['seconds']:.1f}x",
                      f"{share:.1%}", r["requests"], f"{r['correct']}/{r['rows']}"])  # fmt: skip
    print(run_header(command_line("benchmarks.warm_start", argv), started))
    print(format_table(["burst", "task", "variant", "seconds", "vs batch_size=1", "429s", "requests", "correct"], table))
    for r in results:
        if r["variant"] != "batch_size=1":
            print(f"{r['burst_seconds']:g} s burst, {r['task']}, {r['variant']}: {r['packing']}")
    save_json("warm_start", {"machine": machine(), "rows": rows, "results": results}, args.out)
    return 0 if all(r["correct"] == r["rows"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
