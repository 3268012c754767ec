"""An embed run that is killed, cancelled or stopped by its budget keeps every vector that
arrived, and a re-run asks only for the rest.

The kill test runs ``df.llm.embed`` in a real child process (``tests/_embed_child.py``)
against a :class:`FakeServer` in this process, whose request log (``n_items`` and
``time.monotonic()`` start and end per request) tells how many texts were answered and
which requests were in flight at the kill.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from _embed_child import DIMENSIONS, MODEL, text

import llmframe
from llmframe._embed_segments import FOLDER
from llmframe._pricing import price_for
from llmframe.testing import FakeServer
from llmframe.testing._embeddings import vectors

CHILD = Path(__file__).with_name("_embed_child.py")
PACKAGE_ROOT = Path(llmframe.__file__).absolute().parent.parent
TIMEOUT = 30.0
#: Time for a reply the server logged as sent to reach the child (it may be descheduled).
RECEIVE_LAG = 0.25


def wait_until(condition: Callable[[], bool], what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the child exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.005)


def cached_keys(cache: Path) -> int:
    table = llmframe.read_embeddings(cache)
    keys = table.column("key").to_pylist()
    assert len(set(keys)) == len(keys)  # no vector stored twice
    return len(keys)


def frame(n: int) -> pl.DataFrame:
    return pl.DataFrame({"t": [text(i) for i in range(n)]})


def embed_options(server: FakeServer, cache: Path, **extra: Any) -> dict[str, Any]:
    return {"output": "vec", "model": MODEL, "dimensions": DIMENSIONS, "base_url": server.base_url,
            "api_key": server.api_key, "cache": str(cache), "progress": False, **extra}  # fmt: skip


def test_kill_9_mid_run_loses_only_the_requests_in_flight(fake_server_factory: Any, tmp_path: Path) -> None:
    n = 1_200
    server = fake_server_factory(latency=0.1)
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(CHILD), server.base_url, server.api_key, str(cache), str(n)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        stats = server.embedding_stats
        wait_until(lambda: stats.items > 0, "texts are embedded", proc)
        # ~200 texts/s: the kill comes about a second in, before the first 2-second flush
        # would have written them anywhere but the log.
        wait_until(lambda: stats.items >= 150, "150 texts are embedded", proc)
        t_kill = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_until(lambda: server.embedding_stats.in_flight == 0, "the server has no request in flight")
    log = list(server.embedding_stats.snapshot()["log"])
    answered = sum(r.n_items for r in log if r.status == 200)
    in_flight = sum(r.n_items for r in log if r.status == 200 and r.t_end > t_kill - RECEIVE_LAG)
    assert answered < n, "the child finished before the kill"
    assert list((cache / FOLDER).glob(".log-*.arrows")), "the child left its log"
    cached = cached_keys(cache)
    print(f"kill -9: answered={answered} cached={cached} paid_twice={answered - cached} in_flight={in_flight}")
    assert 0 <= answered - cached <= in_flight, (answered, cached, in_flight)
    assert cached >= 100

    server.configure(latency=0.0)
    server.reset_stats()
    out = frame(n).llm.embed("t", **embed_options(server, cache))
    assert np.array_equal(llmframe.embedding_matrix(out["vec"]), vectors([text(i) for i in range(n)], DIMENSIONS))
    assert out.llm.report.cached_rows == cached
    assert server.embedding_stats.items == n - cached  # only the texts no one had received
    assert not list((cache / FOLDER).glob(".log-*"))  # the orphan folded, this run's log at close


def test_a_cancelled_run_reports_unfinished_rows_as_cancelled_and_keeps_what_arrived(
    fake_server_factory: Any, tmp_path: Path
) -> None:
    n = 400
    server = fake_server_factory(latency=0.2)
    cache = tmp_path / "cache"

    async def cancel_mid_run() -> None:
        task = asyncio.ensure_future(llmframe.aembed(frame(n), "t", max_batch_items=10, max_concurrency=2,
                                                     **embed_options(server, cache)))  # fmt: skip
        while server.embedding_stats.items < 40:  # some replies in, most still to come
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_mid_run())
    report = llmframe.last_report()
    assert report is not None
    cancelled = report.failures.get("cancelled", 0)
    assert cancelled > 0 and report.answered_rows + cancelled == n
    assert {e.kind for e in report.errors} == {"cancelled"} and len(report.errors) == cancelled
    assert cached_keys(cache) == report.answered_rows >= 40  # every vector received, in a segment
    assert not list((cache / FOLDER).glob(".log-*"))
    server.configure(latency=0.0)
    server.reset_stats()
    out = frame(n).llm.embed("t", **embed_options(server, cache))
    assert server.embedding_stats.items == cancelled
    assert np.array_equal(llmframe.embedding_matrix(out["vec"]), vectors([text(i) for i in range(n)], DIMENSIONS))


def test_max_cost_usd_stops_before_the_budget_is_exceeded(fake_server: FakeServer, tmp_path: Path) -> None:
    price = price_for(MODEL, None)
    assert price is not None and price.output_per_1m == 0.0
    per_token = price.cost(1, 0)
    n = 300
    tokens_per_request = sum(len(text(i).split()) + 1 for i in range(10))  # about: "text", " n"
    limit = 5.5 * tokens_per_request * per_token  # a few requests' worth
    out = frame(n).llm.embed("t", max_batch_items=10, max_concurrency=2, max_cost_usd=limit,
                             **embed_options(fake_server, tmp_path / "cache"))  # fmt: skip
    report = out.llm.report
    spent_on_server = sum(r.prompt_tokens for r in fake_server.embedding_stats.snapshot()["log"]) * per_token
    assert 0 < report.cost_usd <= limit and spent_on_server <= limit * (1 + 1e-9)
    assert report.answered_rows > 0 and report.failures.get("budget", 0) == n - report.answered_rows > 0
    assert fake_server.embedding_stats.items == report.answered_rows
    assert out["vec"].null_count() == n - report.answered_rows
