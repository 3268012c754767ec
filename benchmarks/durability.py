"""Durability benchmark: kill -9 a packed run at random instants, count the rows paid twice.

An answer that arrived is never paid for again: every reply's rows are in the cache's
answer log before the next reply is taken, so a process killed at any instant loses
only the requests it had in flight. This measures it. Each trial:

1. runs ``df.llm.apply`` on 3,000 distinct rows (``batch_size=10``, 4 requests at once)
   in a child process, against a :class:`~llmframe.testing.FakeServer` in this process
   (0.2 s latency), with a fresh cache folder;
2. kills the child with SIGKILL at an instant drawn uniformly over the run's expected
   length (``--seed`` fixes the draws);
3. re-runs the same frame to the end (in this process, which opens the folder afresh
   and folds the killed child's log), which must answer every row correctly, and
   counts the rows it asked for.

The kill instants are drawn over the length of one run that is not killed, measured
first (from its first request to its end).

The server's request log says which rows were answered before the kill (status 200,
``n_items`` rows each) and which were in flight at it (started, not finished), and the
re-run's requests say how many were asked again: ``paid twice = answered in the first
run + asked in the re-run - rows``. A trial passes when every row is correct and no
more rows were paid twice than were in flight, give or take the replies the server
had sent in the last 0.1 s (still on their way to the child, or not yet read by it).

The baseline, measured in the same run, is the cache without its log
(``AnswerCache(log_answers=False)``, the behaviour before the log: answers in memory
until the flush every 2 s), killed the same way.

Usage::

    python -m benchmarks.durability                    # 20 kills + 5 baseline kills, ~6 min
    python -m benchmarks.durability --rows 200 --kills 2 --baseline-kills 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks._common import MODEL, OUT_DIR, format_table, machine, run_header, save_json
from llmframe.testing import FakeServer, expected_answer

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = "Classify the sentiment of: {review}"
#: 4 requests of 10 rows at once, 0.2 s each: ~200 rows/s, so that the server, not the
#: child's CPU, sets the pace. A child short of CPU leaves replies unread in its socket
#: for a while: in flight for the child, answered for the server's log.
LATENCY = 0.2
BATCH_SIZE = 10
CONCURRENCY = 4
#: Replies the server sent this long before the kill may not have been read by the child yet.
RECEIVE_LAG = 0.1


def review(n: int) -> str:
    return f"review {n}"


# --------------------------------------------------------------------------- the child


def child(config_path: str) -> int:
    """One ``apply`` of the config's rows; writes the answers to ``result``."""
    config = json.loads(Path(config_path).read_text())
    import functools

    import pandas as pd

    import llmframe  # noqa: F401  (registers df.llm)
    from llmframe import _prepare
    from llmframe._cache import AnswerCache

    warnings.simplefilter("ignore")  # the offline-tokenizer notice; a torn log's note
    if not config["log_answers"]:  # the baseline: answers in memory until the flush
        _prepare.AnswerCache = functools.partial(AnswerCache, log_answers=False)  # type: ignore[misc]
    df = pd.DataFrame({"review": [review(n) for n in range(config["rows"])]})
    Path(config["result"] + ".started").touch()
    out = df.llm.apply(
        TEMPLATE, output="sentiment", model=MODEL, base_url=config["base_url"],
        api_key=config["api_key"], cache=config["cache"], batch_size=BATCH_SIZE,
        max_concurrency=CONCURRENCY, progress=False,
    )  # fmt: skip
    Path(config["result"]).write_text(json.dumps(out["sentiment"].tolist()))
    return 0


def spawn(workdir: Path, name: str, server: FakeServer, cache: Path, rows: int, log_answers: bool) -> tuple[subprocess.Popen[bytes], Path]:  # fmt: skip
    result = workdir / f"{name}.json"
    config = workdir / f"{name}.config.json"
    config.write_text(json.dumps({
        "base_url": server.base_url, "api_key": server.api_key, "cache": str(cache),
        "rows": rows, "log_answers": log_answers, "result": str(result),
    }))  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with open(workdir / f"{name}.stderr", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.durability", "--child", str(config)],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    return proc, result


# --------------------------------------------------------------------------- one trial


def settled(server: FakeServer, timeout: float = 30.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while server.stats.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    return list(server.stats.snapshot()["log"])


def wait_for_requests(server: FakeServer, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while not server.stats.requests and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)


def reference_seconds(workdir: Path, server: FakeServer, rows: int) -> float:
    """How long a run takes from its first request to its end, not killed: the window
    the kill instants are drawn from."""
    server.reset_stats()
    proc, _result = spawn(workdir, "reference", server, workdir / "reference-cache", rows, True)
    wait_for_requests(server, proc)
    start = time.monotonic()
    if proc.wait(timeout=300) != 0:
        raise SystemExit(f"the reference run failed: {(workdir / 'reference.stderr').read_text()}")
    return time.monotonic() - start


def rerun(server: FakeServer, cache: Path, rows: int) -> tuple[int, bool]:
    """The same frame again, in this process, to the end: rows asked, and all correct?"""
    import pandas as pd

    import llmframe  # noqa: F401  (registers df.llm)

    server.reset_stats()
    df = pd.DataFrame({"review": [review(n) for n in range(rows)]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the offline-tokenizer notice; a torn log's note
        out = df.llm.apply(
            TEMPLATE, output="sentiment", model=MODEL, base_url=server.base_url, api_key=server.api_key,
            cache=str(cache), batch_size=BATCH_SIZE, max_concurrency=CONCURRENCY, progress=False,
        )  # fmt: skip
    expected = [expected_answer(TEMPLATE.format(review=review(n))) for n in range(rows)]
    return server.stats.items, out["sentiment"].tolist() == expected


def trial(workdir: Path, name: str, server: FakeServer, rows: int, log_answers: bool, kill_after: float) -> dict[str, Any]:  # fmt: skip
    """One kill at ``kill_after`` seconds after the first request, then a re-run to the end."""
    cache = workdir / f"{name}-cache"
    server.reset_stats()
    proc, _result = spawn(workdir, name, server, cache, rows, log_answers)
    wait_for_requests(server, proc)
    t_kill = time.monotonic() + kill_after
    while time.monotonic() < t_kill and proc.poll() is None:
        time.sleep(0.001)
    killed = proc.poll() is None
    t_kill = time.monotonic()
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    log = settled(server)
    answered = sum(r.n_items for r in log if r.status == 200)
    in_flight = sum(r.n_items for r in log if r.t_start <= t_kill < r.t_end)
    on_the_way = sum(r.n_items for r in log if r.status == 200 and t_kill - RECEIVE_LAG < r.t_end <= t_kill)
    asked, correct = rerun(server, cache, rows)
    paid_twice = answered + asked - rows
    return {
        "name": name, "log": log_answers, "killed": killed, "kill_after_s": round(kill_after, 3),
        "answered": answered, "in_flight": in_flight, "on_the_way": on_the_way,
        "paid_twice": paid_twice, "rerun_asked": asked, "rerun_correct": correct,
        "ok": bool(correct and 0 <= paid_twice <= in_flight + on_the_way),
    }  # fmt: skip


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.durability", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=3000, help="rows per run (default 3,000)")
    parser.add_argument("--kills", type=int, default=20, help="kills with the answer log (default 20)")
    parser.add_argument("--baseline-kills", type=int, default=5, help="kills without it (default 5)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill instants")
    parser.add_argument("--window", type=float, default=None,
                        help="seconds to draw kill instants from (default: measured on a run not killed)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder for the JSON results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    given = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(given)
    if args.child:
        return child(args.child)
    seed = random.randrange(1 << 30) if args.seed is None else args.seed
    rng = random.Random(seed)
    started = datetime.now(timezone.utc)
    command = " ".join(["python -m benchmarks.durability", *given])
    print(run_header(command, started), flush=True)
    trials: list[dict[str, Any]] = []
    with FakeServer(latency=LATENCY) as server, tempfile.TemporaryDirectory() as tmp:
        window = reference_seconds(Path(tmp), server, args.rows) if args.window is None else args.window
        how = "given" if args.window is not None else "measured on a run not killed"
        print(f"seed:    {seed}; {args.rows:,} rows, batch_size={BATCH_SIZE}, {CONCURRENCY} requests at "
              f"once, {LATENCY} s latency: a run takes {window:.1f} s from its first request to its "
              f"end ({how}); each kill lands uniformly within that", flush=True)  # fmt: skip
        plan = [(True, i) for i in range(args.kills)] + [(False, i) for i in range(args.baseline_kills)]
        for log_answers, i in plan:
            name = f"{'log' if log_answers else 'baseline'}-{i + 1}"
            t = trial(Path(tmp), name, server, args.rows, log_answers, rng.uniform(0.0, window))
            trials.append(t)
            print(f"  {name}: killed after {t['kill_after_s']:.2f} s, answered {t['answered']}, in flight "
                  f"{t['in_flight']}, paid twice {t['paid_twice']}, {'ok' if t['ok'] else 'FAIL'}", flush=True)  # fmt: skip

    header = ["kill", "log", "after s", "answered", "in flight", f"sent <{RECEIVE_LAG} s", "paid twice", "re-run", "pass"]
    table = [[t["name"], "on" if t["log"] else "off", t["kill_after_s"], t["answered"], t["in_flight"],
              t["on_the_way"], t["paid_twice"], "all correct" if t["rerun_correct"] else "WRONG",
              ("ok" if t["ok"] else "FAIL") if t["killed"] else "finished first"] for t in trials]  # fmt: skip
    print()
    print(format_table(header, table))
    with_log = [t for t in trials if t["log"]]
    baseline = [t for t in trials if not t["log"]]
    summary = {
        "kills": len(with_log), "passed": sum(t["ok"] for t in with_log),
        "paid_twice": sum(t["paid_twice"] for t in with_log),
        "in_flight": sum(t["in_flight"] for t in with_log),
        "baseline_paid_twice": sum(t["paid_twice"] for t in baseline),
        "baseline_kills": len(baseline), "all_reruns_correct": all(t["rerun_correct"] for t in trials),
        "run_seconds": window,
    }  # fmt: skip
    print(f"\nwith the log: {summary['passed']}/{summary['kills']} kills passed; {summary['paid_twice']} rows "
          f"paid twice in all, {summary['in_flight']} were in flight at the kills")  # fmt: skip
    if baseline:
        per = summary["baseline_paid_twice"] / len(baseline)
        mine = summary["paid_twice"] / max(1, len(with_log))
        print(f"baseline (no log, a segment every 2 s): {per:.0f} rows paid twice per kill, "
              f"against {mine:.1f} with the log")  # fmt: skip
    print(f"every re-run answered every row correctly: {summary['all_reruns_correct']}")
    path = save_json("durability", {"command": command, "seed": seed, "rows": args.rows, "summary": summary,
                                    "trials": trials, "machine": machine()}, args.out)  # fmt: skip
    print(f"saved {path}")
    return 0 if summary["passed"] == summary["kills"] and summary["all_reruns_correct"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
