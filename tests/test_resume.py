"""Resuming: a killed or interrupted run loses only its requests in flight, and the cache
is safe to share.

The crash tests run ``df.llm.apply`` in a real child process (``tests/_resume_child.py``)
that talks over HTTP to a :class:`FakeServer` running in this process, so the server's
request log (``n_items`` and ``time.monotonic()`` start/end per request, the same clock
as this process's) tells exactly how many rows were answered, when, and which were still
in flight at the moment of the kill or the Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest
from _resume_child import INTERRUPTED_EXIT, MODEL, STARTED_SUFFIX, TEMPLATE, review
from conftest import column

import llmframe
from llmframe._cache_admin import compact_cache
from llmframe._cache_log import list_logs, parse_log
from llmframe._cache_temps import TEMP_PREFIX
from llmframe._capabilities import ENDPOINTS_FILE
from llmframe._claims import CLAIMS_FILE
from llmframe._keys import call_prefix, row_keys
from llmframe.testing import FakeServer, Faults, expected_answer
from llmframe.testing._stats import RequestRecord

CHILD = Path(__file__).with_name("_resume_child.py")
PACKAGE_ROOT = Path(llmframe.__file__).absolute().parent.parent
#: How long a child may take to reach a state before the test gives up.
TIMEOUT = 45.0
#: Time for a response the server logged as finished to reach the child's engine (the
#: log entry is made before aiohttp writes the response; the child may be descheduled).
RECEIVE_LAG = 0.25


def answer(n: int) -> str:
    return expected_answer(TEMPLATE.format(review=review(n)))


def keys_of(rows: Iterable[int]) -> list[str]:
    """The cache keys of these rows, as the engine computes them."""
    prefix = call_prefix(model=MODEL, template=TEMPLATE, system=None, params=None)
    keys = row_keys(prefix, [[review(n) for n in rows]])
    assert all(k is not None for k in keys)
    return [str(k) for k in keys]


def opts(server: FakeServer, cache: Path | bool, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": MODEL,
        "base_url": server.base_url,
        "api_key": server.api_key,
        "progress": False,
        "cache": str(cache) if isinstance(cache, Path) else cache,
    }
    base.update(extra)
    return base


def segments(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.glob("seg-*.parquet"))


def read_cache_strict(folder: Path) -> pl.DataFrame:
    """``llmframe.read_cache``, failing on any warning (a corrupt segment warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return llmframe.read_cache(folder)


def ok_keys(folder: Path) -> set[str]:
    records = read_cache_strict(folder)
    return set(records.filter(pl.col("status") == "ok").get_column("key").to_list())


# --------------------------------------------------------------------------- children


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    result: Path
    stderr: Path

    def outcome(self) -> dict[str, Any]:
        assert self.result.exists(), (
            f"the child wrote no result; stderr:\n{self.stderr.read_text()}"
        )
        return dict(json.loads(self.result.read_text()))

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def spawn(tmp_path: Path) -> Any:
    """Start children running ``tests/_resume_child.py``; any still running is killed after."""
    children: list[Child] = []

    def start(
        name: str,
        server: FakeServer,
        *,
        cache: Path,
        rows: Iterable[int],
        backend: str,
        batch_size: int,
        max_concurrency: int,
        go: Path | None = None,
        flush_seconds: float | None = None,
        lease_seconds: float | None = None,
    ) -> Child:
        result = tmp_path / f"{name}.result.json"
        config = {
            "base_url": server.base_url,
            "api_key": server.api_key,
            "cache": str(cache),
            "rows": list(rows),
            "backend": backend,
            "batch_size": batch_size,
            "max_concurrency": max_concurrency,
            "result": str(result),
            "go": str(go) if go else None,
            "flush_seconds": flush_seconds,
            "lease_seconds": lease_seconds,
        }
        config_path = tmp_path / f"{name}.config.json"
        config_path.write_text(json.dumps(config))
        stderr = tmp_path / f"{name}.stderr"
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")]),
        )
        with open(stderr, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(CHILD), str(config_path)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        child = Child(proc, result, stderr)
        children.append(child)
        return child

    yield start
    for child in children:
        child.stop()


def wait_until(
    condition: Callable[[], bool], what: str, child: Child | None = None, timeout: float = TIMEOUT
) -> None:
    """Poll ``condition`` with short waits; fail if it takes too long or ``child`` dies first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if child is not None and child.proc.poll() is not None:
            pytest.fail(
                f"the child exited ({child.proc.returncode}) before {what}; "
                f"stderr:\n{child.stderr.read_text()}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.005)


def settled_log(server: FakeServer) -> list[RequestRecord]:
    """The server's request log once every request it started has ended."""
    wait_until(lambda: server.stats.in_flight == 0, "the server has no request in flight")
    return list(server.stats.snapshot()["log"])


def rows_answered(log: Iterable[RequestRecord]) -> int:
    return sum(r.n_items for r in log if r.status == 200)


# --------------------------------------------------------------------------- crashes


#: Kills in a row in the kill test, each child resuming from what the last one left.
KILLS = 3


def test_kill_9_at_random_instants_loses_only_the_requests_in_flight(
    fake_server_factory: Callable[..., FakeServer], spawn: Any, tmp_path: Path
) -> None:
    """SIGKILL at a random instant, three times over, each child resuming from the cache
    the last one left: every row the server had answered is in the cache (its answer log,
    if not a segment yet), so a row is paid twice only if its request was in flight at the
    kill. Then a rerun answers every row, asking only for what no child had received."""
    n = 800
    server = fake_server_factory(latency=0.15, api_keys=[SECRET_KEY])
    cache = tmp_path / "cache-kill"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    cached: set[str] = set()
    totals = {"answered": 0, "in_flight": 0}
    for attempt in range(KILLS):
        server.reset_stats()
        child = spawn(f"killed-{attempt}", server, cache=cache, rows=range(n), backend="pandas",
                      batch_size=5, max_concurrency=3)  # fmt: skip
        # ~100 rows/s: the kill lands 0.8 to 1.8 s into the answers, when a cache that wrote
        # only every FLUSH_SECONDS (2 s) would have lost far more rows than are in flight.
        wait_until(lambda: server.stats.items > 0, "rows are answered", child)
        kill_at = time.monotonic() + rng.uniform(0.8, 1.8)
        wait_until(lambda at=kill_at: time.monotonic() >= at, "the moment to kill", child)
        t_kill = time.monotonic()
        os.kill(child.proc.pid, signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
        log = settled_log(server)
        assert server.stats.items < n - len(cached), "the child finished before the kill"

        answered = rows_answered(log)  # each row once: no faults, so no resends
        # Started and not received at the kill (the server logs a response as sent a
        # moment before it reaches the child, which may also be descheduled).
        in_flight = sum(r.n_items for r in log if r.t_end > t_kill - RECEIVE_LAG)
        now = ok_keys(cache)
        assert cached <= now <= set(keys_of(range(n)))
        paid_twice = answered - len(now - cached)  # answered, not cached: asked again
        print(f"kill {attempt} (seed {seed}): answered={answered} cached={len(now)} "
              f"paid_twice={paid_twice} in_flight={in_flight} logs={len(list(cache.glob('.log-*')))}")  # fmt: skip
        assert 0 <= paid_twice <= in_flight, f"seed {seed}: {paid_twice} rows would be paid twice"
        cached = now
        totals["answered"] += answered
        totals["in_flight"] += in_flight
    assert totals["answered"] > 2 * totals["in_flight"], f"the kills came too early: {totals}"

    assert list(cache.glob(".log-*")), "the last child left its answer log"
    assert_no_secret_in(cache, MODEL)
    server.configure(latency=0.0)
    server.reset_stats()
    df = pd.DataFrame({"review": [review(i) for i in range(n)]})
    out = df.llm.apply(TEMPLATE, output="sentiment", batch_size=5, **opts(server, cache))
    assert column(out, "sentiment") == [answer(i) for i in range(n)]
    report = llmframe.last_report()
    assert report is not None and report.cached_rows == len(cached) and report.failed_rows == 0
    assert server.stats.items == n - len(cached)  # only rows missing from the cache were asked
    assert not list(cache.glob(".log-*"))  # the orphan was folded, this run's log at close


def test_ctrl_c_in_sync_call_caches_every_answered_row(
    fake_server_factory: Callable[..., FakeServer], spawn: Any, tmp_path: Path
) -> None:
    """SIGINT mid-run: ``apply`` raises KeyboardInterrupt, and the ``finally`` flush stores
    every answered row. The child's periodic flush is pushed out to an hour, so every
    record on disk must come from that last flush."""
    n = 300
    server = fake_server_factory(latency=0.2)
    cache = tmp_path / "cache-sigint"
    child = spawn("interrupted", server, cache=cache, rows=range(n), backend="polars",
                  batch_size=5, max_concurrency=2, flush_seconds=3600.0)  # fmt: skip
    wait_until(lambda: server.stats.items >= 40, "40 rows are answered", child)
    assert segments(cache) == []  # nothing flushed yet: only the finally can write
    t_int = time.monotonic()
    os.kill(child.proc.pid, signal.SIGINT)
    assert child.wait() == INTERRUPTED_EXIT, child.stderr.read_text()
    outcome = child.outcome()
    assert outcome["status"] == "interrupted"
    # The KeyboardInterrupt came out of the accessor's call into llmframe.apply.
    assert "llmframe/_accessor.py:apply" in outcome["frames"]  # df.llm.apply on polars
    assert "llmframe/_api.py:apply" in outcome["frames"]
    log = settled_log(server)
    assert server.stats.items < n, "the child finished before the interrupt: nothing was proven"

    answered = rows_answered(log)
    answered_before = sum(
        r.n_items for r in log if r.status == 200 and r.t_end <= t_int - RECEIVE_LAG
    )
    in_flight = sum(r.n_items for r in log if r.t_end > t_int - RECEIVE_LAG)
    cached = ok_keys(cache)
    assert cached <= set(keys_of(range(n)))
    # Every row the engine finished was stored, and that is every row the server answered
    # before the interrupt (give or take the ones whose response was still on its way).
    assert len(cached) == outcome["report"]["answered_rows"]
    assert answered_before <= len(cached) <= answered

    server.configure(latency=0.0)
    server.reset_stats()
    df = pl.DataFrame({"review": [review(i) for i in range(n)]})
    out = df.llm.apply(TEMPLATE, output="sentiment", batch_size=5, **opts(server, cache))
    assert column(out, "sentiment") == [answer(i) for i in range(n)]
    assert server.stats.items == n - len(cached)
    re_requested = answered - len(cached)
    print(
        f"sigint: answered={answered} before={answered_before} cached={len(cached)} "
        f"re_requested={re_requested} in_flight={in_flight}"
    )
    assert re_requested <= in_flight, f"{re_requested} rows asked again, {in_flight} were in flight"


def test_two_processes_share_one_cache_folder(
    fake_server_factory: Callable[..., FakeServer], spawn: Any, tmp_path: Path
) -> None:
    """Two processes (pandas and polars) enrich overlapping frames into one folder at once,
    flushing every 20 ms so that both write dozens of segments and auto-compact concurrently."""
    server = fake_server_factory(latency=0.05)
    cache = tmp_path / "cache-shared"
    go = tmp_path / "go"
    rows = {"a": range(0, 200), "b": range(100, 300)}
    backends = {"a": "pandas", "b": "polars"}
    children = {
        who: spawn(who, server, cache=cache, rows=rows[who], backend=backends[who],
                   batch_size=2, max_concurrency=4, go=go, flush_seconds=0.02)
        for who in rows
    }  # fmt: skip
    for who, child in children.items():
        wait_until(lambda c=child: Path(str(c.result) + STARTED_SUFFIX).exists(),
                   f"child {who} is ready", child)  # fmt: skip
    go.touch()
    for who, child in children.items():
        assert child.wait() == 0, f"child {who} failed:\n{child.stderr.read_text()}"
        outcome = child.outcome()
        assert outcome["status"] == "ok"
        assert outcome["answers"] == [answer(i) for i in rows[who]], f"child {who}"
        assert outcome["report"]["failed_rows"] == 0
        assert "llmframe cache" not in child.stderr.read_text()

    # No corrupt file, no temp file left behind: every file is a readable segment, the
    # endpoint memory (valid JSON), or the claim store, with no claim left in it.
    for path in cache.iterdir():
        if path.name == ENDPOINTS_FILE:
            json.loads(path.read_text())
            continue
        if path.name == CLAIMS_FILE:
            with contextlib.closing(sqlite3.connect(path)) as db:
                assert db.execute("SELECT count(*) FROM claims").fetchone() == (0,)
            continue
        assert path.name in segments(cache), f"unexpected file {path.name}"
        pq.read_table(path)
    records = read_cache_strict(cache)
    assert set(records.get_column("status").unique().to_list()) == {"ok"}
    per_key = records.group_by("key").agg(
        pl.col("answer").n_unique().alias("answers"),
        pl.col("answer").first(),
        pl.len().alias("records"),
    )
    expected = dict(zip(keys_of(range(300)), (answer(i) for i in range(300)), strict=True))
    assert set(per_key.get_column("key").to_list()) == set(expected)
    assert per_key.get_column("answers").max() == 1
    assert dict(zip(per_key["key"].to_list(), per_key["answer"].to_list(), strict=True)) == expected
    # Compactions racing each other may leave duplicates (never a missing record);
    # compacting folds them.
    print(
        f"shared: segments={len(segments(cache))} records={records.height} "
        f"max per key={per_key.get_column('records').max()} items={server.stats.items}"
    )
    assert server.stats.items == 300  # the 100 shared rows were claimed, and asked once
    compact_cache(cache)
    compacted = read_cache_strict(cache)
    assert compacted.height == 300 and compacted.get_column("key").n_unique() == 300


# --------------------------------------------------------------------------- in process


def shuffled(df: Any, seed: int = 7) -> Any:
    if isinstance(df, pd.DataFrame):
        return df.sample(frac=1.0, random_state=seed)
    return df.sample(fraction=1.0, shuffle=True, seed=seed)


def test_batch_size_order_and_new_rows_reuse_every_answer(
    fake_server: FakeServer, make_frame: Callable[[dict[str, list[Any]]], Any], tmp_path: Path
) -> None:
    cache = tmp_path / "cache-reuse"
    n = 60
    df = make_frame({"review": [review(i) for i in range(n)], "n": list(range(n))})
    out = df.llm.apply(TEMPLATE, output="s", batch_size=7, **opts(fake_server, cache))
    assert column(out, "s") == [answer(i) for i in range(n)]
    assert fake_server.stats.items == n

    def rerun(frame: Any, **extra: Any) -> tuple[Any, int, int]:
        fake_server.reset_stats()
        result = frame.llm.apply(TEMPLATE, output="s", **opts(fake_server, cache, **extra))
        return result, fake_server.stats.requests, fake_server.stats.items

    # Another batch size: every answer from the cache, no request.
    out, requests, _ = rerun(df, batch_size=3)
    assert requests == 0 and column(out, "s") == [answer(i) for i in range(n)]
    out, requests, _ = rerun(df, batch_size=1)
    assert requests == 0 and column(out, "s") == [answer(i) for i in range(n)]

    # Shuffled: no request, and each row still gets its own answer.
    mixed = shuffled(df)
    order = column(mixed, "n")
    assert order != list(range(n))
    out, requests, _ = rerun(mixed, batch_size=None)
    assert requests == 0 and column(out, "s") == [answer(i) for i in order]

    # New rows appended (to the shuffled frame): only the new rows are asked.
    extra = make_frame(
        {"review": [review(i) for i in range(n, n + 15)], "n": list(range(n, n + 15))}
    )
    grown = (
        pd.concat([mixed, extra]) if isinstance(mixed, pd.DataFrame) else pl.concat([mixed, extra])
    )
    out, requests, items = rerun(grown, batch_size=4)
    assert items == 15 and requests == 4
    assert column(out, "s") == [answer(i) for i in [*order, *range(n, n + 15)]]
    report = llmframe.last_report()
    assert report is not None and report.cached_rows == n and report.answered_rows == 15


def test_errors_are_stored_as_errors_and_never_served(
    fake_server_factory: Callable[..., FakeServer],
    make_frame: Callable[[dict[str, list[Any]]], Any],
    tmp_path: Path,
) -> None:
    server = fake_server_factory()
    cache = tmp_path / "cache-errors"
    good, bad = range(0, 6), range(6, 14)
    first = make_frame({"review": [review(i) for i in good]})
    first.llm.apply(TEMPLATE, batch_size=3, **opts(server, cache))

    # Every request fails: the new rows get null answers and error records.
    server.configure(faults=Faults(error_rate=1.0))
    server.reset_stats()
    df = make_frame({"review": [review(i) for i in range(14)]})
    o = opts(server, cache, max_attempts=1, batch_size=1)
    out = df.llm.apply(TEMPLATE, **o)
    assert column(out, "answer") == [answer(i) for i in good] + [None] * len(bad)
    assert server.stats.requests == len(bad) and server.stats.server_errors == len(bad)
    records = read_cache_strict(cache)
    errors = records.filter(pl.col("status") == "error")
    assert set(errors.get_column("key").to_list()) == set(keys_of(bad))
    assert errors.get_column("answer").null_count() == len(bad)
    assert all(e.startswith("server:") for e in errors.get_column("error").to_list())
    assert ok_keys(cache) == set(keys_of(good))

    # Still failing: the error records are not served, the rows are asked again.
    server.reset_stats()
    out = df.llm.apply(TEMPLATE, **o)
    assert column(out, "answer")[len(good) :] == [None] * len(bad)
    assert server.stats.requests == len(bad)

    # Fixed: exactly the failed rows are asked, and they get their real answers.
    server.configure(faults=Faults())
    server.reset_stats()
    out = df.llm.apply(TEMPLATE, **opts(server, cache, max_attempts=1, batch_size=4))
    assert column(out, "answer") == [answer(i) for i in range(14)]
    assert server.stats.items == len(bad) and server.stats.requests == 2
    assert ok_keys(cache) == set(keys_of(range(14)))


SECRET_KEY = "sk-llmframe-test-7f3c9e1d5b2a4680-DO-NOT-STORE"
_NEEDLES = [SECRET_KEY, "7f3c9e1d5b2a4680", "DO-NOT-STORE", "Bearer"]


def assert_no_secret_in(cache: Path, model: str) -> str:
    """Fail if any byte of any file in ``cache`` (segments, answer logs, the endpoint
    memory), or any decoded value or metadata of a segment or log, holds the API key;
    return the decoded text that was searched."""
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert (cache / ENDPOINTS_FILE) in files  # what the endpoint taught is stored too
    logs = set(list_logs(cache))
    # A kill mid-write may leave a segment's temporary file (removed once stale): its bytes are searched too.
    assert all(p.name in segments(cache) or p.name in logs or p.name == ENDPOINTS_FILE
               or p.name.startswith((CLAIMS_FILE, TEMP_PREFIX)) for p in files), [p.name for p in files]  # fmt: skip
    seen = ""
    for path in files:
        raw = path.read_bytes()
        for needle in _NEEDLES:
            assert needle.encode().lower() not in raw.lower(), f"{needle!r} in the bytes of {path.name}"
        if path.name == ENDPOINTS_FILE or path.name.startswith((CLAIMS_FILE, TEMP_PREFIX)):  # bytes searched
            continue  # (a temporary segment cut short cannot be decoded; its whole twin is in a log)
        if path.name in logs:
            table = parse_log(raw).records
            text = json.dumps(table.to_pylist(), default=str) + str(table.schema.metadata)
        else:  # the pages are compressed, so also look at every decoded value and all metadata
            table = pq.read_table(path)
            text = json.dumps(table.to_pylist(), default=str) + str(pq.read_metadata(path).metadata)
            text += str(table.schema.metadata)
        assert model in text  # the search does see the stored values
        seen += text
        for needle in _NEEDLES:
            assert needle.lower() not in text.lower(), f"{needle!r} in the records of {path.name}"
    return seen


def test_no_api_key_is_ever_stored(
    fake_server_factory: Callable[..., FakeServer],
    make_frame: Callable[[dict[str, list[Any]]], Any],
    tmp_path: Path,
) -> None:
    server = fake_server_factory(api_keys=[SECRET_KEY], faults=Faults(error_rate=0.3), seed=5)
    cache = tmp_path / "cache-secret"
    n = 40
    df = make_frame({"review": [review(i) for i in range(n)]})
    o = opts(server, cache, max_attempts=1, batch_size=2)
    assert o["api_key"] == SECRET_KEY
    df.llm.apply(TEMPLATE, **o)
    records = read_cache_strict(cache)
    assert set(records.get_column("status").to_list()) == {"ok", "error"}  # both kinds stored

    seen = assert_no_secret_in(cache, MODEL)
    ok_answers = records.filter(pl.col("status") == "ok").get_column("answer").to_list()
    assert "server:" in seen and all(a in seen for a in ok_answers)
