"""Claims benchmark: two processes enrich overlapping frames into one cache folder at once.

Baseline: the same two processes with the claim store turned off (each pays for
every row it misses in the cache). With claims, each shared row must be asked
of the server once. Also measured: what a claim costs, per chunk of
:data:`~llmframe._claims_run.CLAIM_CHUNK` keys and per row.

How it runs: a :class:`FakeServer` in this process counts every prompt it
answers; two fresh child processes (pandas and polars) wait for a go file, then
run ``df.llm.apply`` on rows ``0..shared+own`` and ``own..shared+2*own`` with
``batch_size=10`` into one new cache folder.

Usage::

    python -m benchmarks.claims                 # 1,500 shared rows, 100 of each process's own
    python -m benchmarks.claims --shared 300    # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import OUT_DIR, command_line, format_table, machine, save_json
from llmframe._claims import ClaimStore
from llmframe._claims_run import CLAIM_CHUNK
from llmframe.testing import FakeServer, expected_answer

TEMPLATE = "Classify the sentiment of: {review}"
ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
from pathlib import Path
config = json.loads(Path(sys.argv[1]).read_text())
import pandas as pd, polars as pl
import llmframe
from llmframe import _engine
if not config["claims"]:
    _engine.open_store = lambda folder, **kwargs: None
data = {"review": [f"review {n}" for n in config["rows"]]}
df = pd.DataFrame(data) if config["backend"] == "pandas" else pl.DataFrame(data)
Path(config["result"] + ".started").touch()
while not Path(config["go"]).exists():
    time.sleep(0.005)
start = time.monotonic()
out = df.llm.apply(config["template"], output="s", model="gpt-4o-mini", base_url=config["base_url"],
                   api_key="fake-key", cache=config["cache"], batch_size=10, max_concurrency=4, progress=False)
seconds = time.monotonic() - start
r = llmframe.last_report()
answers = out["s"].tolist() if config["backend"] == "pandas" else out["s"].to_list()
Path(config["result"]).write_text(json.dumps({"seconds": seconds, "answers": answers,
    "answered": r.answered_rows, "elsewhere": r.answered_elsewhere_rows, "waited": r.waited_seconds}))
"""


def two_processes(server: FakeServer, seen: Counter[str], claims: bool, shared: int, own: int, work: Path) -> dict[str, Any]:
    cache, go = work / f"cache-{claims}", work / f"go-{claims}"
    frames = {"a": range(0, own + shared), "b": range(own, shared + 2 * own)}
    children = []
    for who, backend in (("a", "pandas"), ("b", "polars")):
        result = work / f"{who}-{claims}.json"
        config = {"rows": list(frames[who]), "backend": backend, "cache": str(cache), "go": str(go),
                  "result": str(result), "base_url": server.base_url, "template": TEMPLATE, "claims": claims}  # fmt: skip
        path = work / f"{who}-{claims}.config.json"
        path.write_text(json.dumps(config))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        children.append((who, result, subprocess.Popen([sys.executable, "-c", CHILD, str(path)], env=env)))
    for _, result, _ in children:
        while not Path(str(result) + ".started").exists():
            time.sleep(0.01)
    seen.clear()
    go.touch()
    outcomes = {}
    for who, result, proc in children:
        if proc.wait(timeout=600) != 0:
            raise SystemExit(f"child {who} failed")
        outcomes[who] = json.loads(result.read_text())
        wanted = [expected_answer(TEMPLATE.format(review=f"review {n}")) for n in frames[who]]
        if outcomes[who]["answers"] != wanted:
            raise SystemExit(f"child {who}: wrong answers")
    prompt = [TEMPLATE.format(review=f"review {n}") for n in range(own, own + shared)]
    return {
        "claims": claims,
        "asked": sum(seen.values()),
        "shared_asked_twice": sum(1 for p in prompt if seen[p] > 1),
        "seconds": max(o["seconds"] for o in outcomes.values()),
        "answered": [o["answered"] for o in outcomes.values()],
        "elsewhere": [o["elsewhere"] for o in outcomes.values()],
        "waited": [round(o["waited"], 1) for o in outcomes.values()],
    }


def claim_cost(work: Path, rounds: int = 200) -> dict[str, float]:
    """Milliseconds per claim of a new chunk (another run holding half the folder's claims),
    per refresh and per release of a chunk."""
    (work / "micro").mkdir()
    other = ClaimStore(work / "micro")
    other.claim(f"{i:032x}" for i in range(0, 10 * CLAIM_CHUNK))
    store = ClaimStore(work / "micro")
    claims, releases, refreshes = [], [], []
    for r in range(rounds):
        keys = [f"{r * CLAIM_CHUNK + i + 10**6:032x}" for i in range(CLAIM_CHUNK)]
        t = time.perf_counter()
        store.claim(keys)
        claims.append(time.perf_counter() - t)
        t = time.perf_counter()
        store.refresh()
        refreshes.append(time.perf_counter() - t)
        t = time.perf_counter()
        store.release(keys)
        releases.append(time.perf_counter() - t)
    store.close()
    other.close()
    claim_ms = statistics.median(claims) * 1000
    return {"claim_ms": claim_ms, "per_row_us": claim_ms * 1000 / CLAIM_CHUNK,
            "refresh_ms": statistics.median(refreshes) * 1000, "release_ms": statistics.median(releases) * 1000}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=int, default=1500)
    parser.add_argument("--own", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder for the JSON results")
    args = parser.parse_args(argv)
    command = command_line("benchmarks.claims", argv)
    print(f"command: {command}")
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def counting(prompt: str) -> str:
        with lock:
            seen[prompt] += 1
        return expected_answer(prompt)

    with tempfile.TemporaryDirectory() as tmp, FakeServer(latency=args.latency, answer_fn=counting) as server:
        work = Path(tmp)
        results = [two_processes(server, seen, claims, args.shared, args.own, work) for claims in (False, True)]
        cost = claim_cost(work)
    rows = [["claims " + ("on" if r["claims"] else "off (baseline)"), r["asked"], r["shared_asked_twice"],
             f"{r['seconds']:.1f}", r["answered"], r["elsewhere"], r["waited"]] for r in results]  # fmt: skip
    print(format_table(["", "rows asked", "shared rows asked twice", "s (slower process)", "answered",
                        "answered elsewhere", "waited s"], rows))  # fmt: skip
    print(f"a claim of {CLAIM_CHUNK} keys: {cost['claim_ms']:.2f} ms ({cost['per_row_us']:.1f} µs per row); "
          f"refresh {cost['refresh_ms']:.2f} ms; release of {CLAIM_CHUNK} keys {cost['release_ms']:.2f} ms")  # fmt: skip
    save_json("claims", {"command": command, "machine": machine(), "shared": args.shared, "own": args.own,
                         "results": results, "cost": cost}, args.out)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
