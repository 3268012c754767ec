"""One quota per machine, and across machines: four processes on one key, with and without a shared limiter.

Run ``python -m benchmarks.processes [--scale 0.1] [--processes 4]``. Each
variant gets a fresh fake server (RPM 1,200 and TPM 300,000 over a 1 s burst
window, answering after 0.2 s + 0.01 s per output token, as in
``benchmarks.rate_limits``) and a fresh llmframe cache folder, then starts
``--processes`` Python processes at once (each waits at a barrier until all
have imported llmframe). Each process runs one ``df.llm.apply`` on every
``n``-th of 600 rows (``batch_size=1``, the rate_limits mix: short rows where
RPM binds, a block of long ones where TPM binds), on the same key and model,
each told the full ``rpm=`` / ``tpm=``:

- **limiter="process"** (the default): each process has its own limiter, so
  together they ask for ``n`` times the quota, and the server answers 429.
- **limiter="machine"**: the processes share one limiter through a state file
  in the cache folder.
- **limiter="redis://..."**: the processes share one limiter through a
  ``redis-server`` this benchmark starts on a free loopback port (as workers on
  several machines would share one Redis); its script calls per request are
  counted from Redis's ``INFO commandstats``.

For each: the server's share of 429s, the fraction of the binding limit it
admitted (``_common.Rates``), and every answer checked against
``expected_answer``. Then the cost of a reservation: reservations (acquire +
settle, nothing waiting) per second of one process against the in-process,
the machine and the Redis limiter, measured one after the other in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

from benchmarks._common import (
    MODEL,
    achieved_rates,
    add_standard_arguments,
    command_line,
    format_table,
    machine,
    run_header,
    save_json,
    scaled,
)
from benchmarks.rate_limits import (
    BURST_SECONDS,
    LATENCY,
    LATENCY_PER_TOKEN,
    RPM,
    TARGET_429_SHARE,
    TARGET_BINDING,
    TEMPLATE,
    TPM,
    Outcome,
    count_correct,
    make_reviews,
    prompts_of,
)

ROWS = 600
PROCESSES = 4
VARIANTS = ("process", "machine", "redis")
LABELS = {"process": 'limiter="process" (default)', "machine": 'limiter="machine"',
          "redis": 'limiter="redis://..."'}  # fmt: skip
ROOT = Path(__file__).resolve().parent.parent
#: How long the children may take, all told, before the run is given up.
CHILD_TIMEOUT = 600.0
#: Reservations timed per limiter in the cost measurement (at --scale 1).
COST_RESERVATIONS = 20_000


def targets(outcome: Outcome) -> dict[str, bool]:
    """What the shared limiters must reach; the default limiter is the baseline."""
    if outcome.name == "process":
        return {}
    return {
        f"binding >= {TARGET_BINDING:.0%}": (outcome.rates.binding_fraction or 0.0) >= TARGET_BINDING,
        "429s <= 1%": outcome.share_429 <= TARGET_429_SHARE,
        "100% correct": outcome.correct == outcome.rows,
    }


# -- a Redis server of its own --------------------------------------------------------


@contextlib.contextmanager
def redis_server(port: int | None = None, password: str | None = None) -> Iterator[str]:
    """A ``redis-server`` on ``port`` (default: a free one) of loopback, without persistence,
    asking for ``password`` if given: its ``redis://`` URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed (Debian: apt-get install redis-server)")
    if port is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    auth = ["--requirepass", password] if password else []
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *auth],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith((b"+PONG", b"-NOAUTH")):  # up (and asking for the password)
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.02)
        yield f"redis://:{password}@127.0.0.1:{port}/0" if password else f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)


# -- one child ------------------------------------------------------------------------


def child(config_path: Path) -> int:
    """One sharer: wait at the barrier, run one apply, write what happened."""
    import pandas as pd

    import llmframe  # noqa: F401  (registers df.llm)

    config = json.loads(config_path.read_text())
    Path(config["ready"]).touch()
    go = Path(config["go"])
    while not go.exists():
        time.sleep(0.01)
    df = pd.DataFrame({"review": config["reviews"]})
    started = time.perf_counter()
    out = df.llm.apply(
        TEMPLATE, output="answer", model=MODEL, base_url=config["base_url"], api_key=config["api_key"],
        rpm=config["rpm"], tpm=config["tpm"], limiter=config["limiter"], batch_size=1, cache=False,
        progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    report = out.llm.report
    assert report is not None
    summary = {k: v for k, v in report.to_dict().items() if not isinstance(v, (list, dict))}
    result = {"answers": out["answer"].tolist(), "seconds": seconds, "report": summary}
    Path(config["result"]).write_text(json.dumps(result))
    return 0


# -- one variant ----------------------------------------------------------------------


def run_variant(
    limiter: str,
    reviews: Sequence[str],
    processes: int,
    *,
    rpm: float = RPM,
    tpm: float = TPM,
    burst_seconds: float = BURST_SECONDS,
    latency: float = LATENCY,
    latency_per_token: float = LATENCY_PER_TOKEN,
    redis_url: str | None = None,
) -> Outcome:
    """``processes`` processes at once, process ``i`` on every ``processes``-th row from ``i``.

    ``limiter`` is a variant's name; ``"redis"`` uses the Redis at ``redis_url``, else
    one started for the run. ``outcome.client`` holds ``processes``, each child's
    report (``children``) and, for Redis, its script calls per request.
    """
    with contextlib.ExitStack() as stack:
        if limiter == "redis" and redis_url is None:
            redis_url = stack.enter_context(redis_server())
        return _run_variant(limiter, reviews, processes, rpm, tpm, burst_seconds, latency,
                            latency_per_token, redis_url)  # fmt: skip


def _script_calls(redis_url: str | None) -> int:
    """How many script calls (EVALSHA, EVAL) the Redis at ``redis_url`` has run."""
    if redis_url is None:
        return 0
    import redis

    client = redis.Redis.from_url(redis_url)
    stats = client.info("commandstats")
    client.close()
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))


def _run_variant(limiter: str, reviews: Sequence[str], processes: int, rpm: float, tpm: float,
                 burst_seconds: float, latency: float, latency_per_token: float,
                 redis_url: str | None) -> Outcome:  # fmt: skip
    from llmframe.testing import FakeServer

    shares = [list(reviews[i::processes]) for i in range(processes)]
    option = redis_url if limiter == "redis" else limiter
    calls_before = _script_calls(redis_url)
    with tempfile.TemporaryDirectory(prefix="llmframe-processes-") as tmp, FakeServer(
        rpm=rpm, tpm=tpm, burst_seconds=burst_seconds, latency=latency,
        latency_per_token=latency_per_token, api_keys=f"bench-{limiter}-{time.monotonic_ns()}",
    ) as server:  # fmt: skip
        folder = Path(tmp)
        env = {**os.environ, "LLMFRAME_CACHE_DIR": str(folder / "cache"),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
        env.pop("LLMFRAME_LIMITER", None)
        children = []
        for i, share in enumerate(shares):
            config = {
                "base_url": server.base_url, "api_key": server.api_key, "rpm": rpm, "tpm": tpm,
                "limiter": option, "reviews": share, "ready": str(folder / f"ready-{i}"),
                "go": str(folder / "go"), "result": str(folder / f"result-{i}.json"),
            }  # fmt: skip
            path = folder / f"config-{i}.json"
            path.write_text(json.dumps(config))
            command = [sys.executable, "-m", "benchmarks.processes", "--child", str(path)]
            children.append(subprocess.Popen(command, cwd=ROOT, env=env))
        deadline = time.monotonic() + CHILD_TIMEOUT
        try:
            while not all((folder / f"ready-{i}").exists() for i in range(processes)):
                if any(c.poll() is not None for c in children) or time.monotonic() > deadline:
                    raise RuntimeError("a child process failed before the start")
                time.sleep(0.02)
            started = time.perf_counter()
            (folder / "go").touch()
            for c in children:
                if c.wait(timeout=max(1.0, deadline - time.monotonic())) != 0:
                    raise RuntimeError(f"a child process exited with {c.returncode}")
            seconds = time.perf_counter() - started
        finally:
            for c in children:
                if c.poll() is None:
                    c.kill()
                    c.wait()
        results = [json.loads((folder / f"result-{i}.json").read_text()) for i in range(processes)]
        log = list(server.stats.log)
    calls = _script_calls(redis_url) - calls_before
    correct = sum(count_correct(r["answers"], prompts_of(s)) for r, s in zip(results, shares, strict=True))
    return Outcome(
        name=limiter, rows=len(reviews), seconds=seconds, correct=correct, requests=len(log),
        rate_limited=sum(1 for r in log if r.status == 429),
        rates=achieved_rates(log, rpm=rpm, tpm=tpm, burst_seconds=burst_seconds),
        client={"processes": processes, "children": [{"seconds": r["seconds"], **r["report"]} for r in results],
                **({"script_calls_per_request": calls / len(log)} if limiter == "redis" and log else {})},
    )  # fmt: skip


# -- the cost of one reservation ------------------------------------------------------


def reservations_per_second(n: int) -> dict[str, float]:
    """Acquire + settle ``n`` times with nothing waiting: the in-process, machine and Redis limiter."""
    from llmframe._limiter import RateLimiter
    from llmframe._machine_limiter import MachineLimiter
    from llmframe._redis_limiter import RedisLimiter

    async def time_it(limiter: RateLimiter) -> float:
        started = time.perf_counter()
        for _ in range(n):
            reservation = await limiter.acquire(100)
            limiter.settle(reservation, 90)
        return n / (time.perf_counter() - started)

    rpm, tpm = 1e12, 1e15  # never binds: the cost of the bookkeeping alone
    with tempfile.TemporaryDirectory(prefix="llmframe-cost-") as tmp, redis_server() as url:
        machine_limiter = MachineLimiter(Path(tmp) / "cost.state", rpm, tpm)
        redis_limiter = RedisLimiter(url, "cost", rpm, tpm)
        rates = {
            "process": asyncio.run(time_it(RateLimiter(rpm, tpm))),
            "machine": asyncio.run(time_it(machine_limiter)),
            "redis": asyncio.run(time_it(redis_limiter)),
        }
        machine_limiter.close()
        redis_limiter.close()
    return rates


# -- the table ------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def table(outcomes: Sequence[Outcome]) -> str:
    header = ["limiter", "processes", "rows", "seconds", "req/s %RPM", "tok/s %TPM", "binding %",
              "requests", "429s", "429 %", "correct", "targets"]  # fmt: skip
    rows = []
    for o in outcomes:
        checks = targets(o)
        missed = [name for name, ok in checks.items() if not ok]
        verdict = "-" if not checks else ("met" if not missed else "MISSED " + "; ".join(missed))
        rows.append([
            LABELS[o.name], o.client["processes"], o.rows, o.seconds, _pct(o.rates.rpm_fraction),
            _pct(o.rates.tpm_fraction), _pct(o.rates.binding_fraction), o.requests, o.rate_limited,
            f"{100 * o.share_429:.1f}%", f"{100 * o.correct / o.rows:.1f}%" if o.rows else "-", verdict,
        ])  # fmt: skip
    return format_table(header, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.processes", description=__doc__.split("\n\n")[0]
    )
    add_standard_arguments(parser)
    parser.add_argument("--processes", type=int, default=PROCESSES, help="sharers of the key (default 4)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of "
                        f"{','.join(VARIANTS)}")  # fmt: skip
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return child(args.child)
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or set(variants) - set(VARIANTS):
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}")
    started = datetime.now(timezone.utc)
    reviews = make_reviews(scaled(ROWS, args.scale, minimum=args.processes))
    log: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    outcomes = []
    for name in variants:
        log(f"running: {LABELS[name]}, {args.processes} processes ...")
        outcome = run_variant(name, reviews, args.processes)
        log(f"         {outcome.seconds:.1f} s, {outcome.correct}/{outcome.rows} correct, "
            f"{outcome.rate_limited} 429s")  # fmt: skip
        outcomes.append(outcome)
    cost = reservations_per_second(scaled(COST_RESERVATIONS, args.scale, minimum=200))
    info = machine()
    print(run_header(command_line("benchmarks.processes", argv), started, info))
    print(f"server:  fake OpenAI server, RPM {RPM:,}, TPM {TPM:,}, burst_seconds={BURST_SECONDS:g}, "
          f"latency {LATENCY:g} s + {LATENCY_PER_TOKEN:g} s per output token; a fresh one per variant")  # fmt: skip
    print(f"load:    {args.processes} processes at once on one key, each df.llm.apply(batch_size=1, "
          f"rpm={RPM}, tpm={TPM}) on every {args.processes}th of {len(reviews):,} rows")  # fmt: skip
    print()
    print(table(outcomes))
    print()
    print(f"cost of one reservation (acquire + settle, nothing waiting), one process: in-process "
          f"{cost['process']:,.0f}/s, machine {cost['machine']:,.0f}/s "
          f"({cost['process'] / cost['machine']:.1f}x the time), redis {cost['redis']:,.0f}/s "
          f"(2 round trips; {1e3 / cost['redis']:.2f} ms)")  # fmt: skip
    for o in outcomes:
        if "script_calls_per_request" in o.client:
            print(f"redis: {o.client['script_calls_per_request']:.2f} script calls (round trips) per request "
                  f"sent, heartbeats included (INFO commandstats)")  # fmt: skip
    save_json("processes", {
        "machine": info, "command": command_line("benchmarks.processes", argv),
        "settings": {"rows": len(reviews), "processes": args.processes, "rpm": RPM, "tpm": TPM,
                     "burst_seconds": BURST_SECONDS},
        "variants": [{**o.__dict__, "share_429": o.share_429, "targets": targets(o)} for o in outcomes],
        "reservations_per_second": cost,
    }, args.out)  # fmt: skip
    return 0 if all(all(targets(o).values()) for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
