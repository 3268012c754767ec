"""Several processes, one cache folder: each shared row is paid once, and nobody waits forever.

Real child processes (``tests/_resume_child.py``) run ``df.llm.apply`` against a
:class:`FakeServer` in this process, through the real ``openai`` client over HTTP.
The server's ``answer_fn`` counts every prompt it answers, so a row asked twice,
by one process or by two, shows.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import test_resume
from _resume_child import STARTED_SUFFIX, TEMPLATE, review
from test_resume import Child, answer, wait_until

from llmframe._claims import CLAIMS_FILE
from llmframe.testing import FakeServer, expected_answer

#: test_resume's fixture ``spawn``, here named ``start_child``: children running
#: tests/_resume_child.py, killed after the test if still running.
start_child = test_resume.spawn

pytestmark = pytest.mark.skipif(os.name != "posix", reason="kill -9 and SIGSTOP are POSIX")


class Prompts:
    """The server's ``answer_fn``: the default answers, with a count of each prompt."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, prompt: str) -> str:
        with self._lock:
            self.seen[prompt] += 1
        return expected_answer(prompt)

    def asked(self, rows: Iterable[int]) -> list[int]:
        with self._lock:
            return [self.seen[TEMPLATE.format(review=review(n))] for n in rows]


def start_both(spawn: Any, server: FakeServer, tmp_path: Path, rows: dict[str, range], **options: Any) -> dict[str, Child]:
    cache, go = tmp_path / "cache-shared", tmp_path / "go"
    children = {
        who: spawn(who, server, cache=cache, rows=rows[who], backend=backend, go=go, **options)
        for who, backend in zip(rows, ("pandas", "polars"), strict=False)
    }  # fmt: skip
    for who, child in children.items():
        wait_until(lambda c=child: Path(str(c.result) + STARTED_SUFFIX).exists(), f"child {who} is ready", child)
    go.touch()
    return children


def holds_claims(cache: Path, *children: Child) -> bool:
    """Whether each child's run holds claims in the folder's store."""
    try:
        with contextlib.closing(sqlite3.connect(cache / CLAIMS_FILE, timeout=10)) as db:
            pids = {p for (p,) in db.execute("SELECT DISTINCT pid FROM claims JOIN runs USING (run)")}
    except sqlite3.Error:  # not created yet
        return False
    return all(c.proc.pid in pids for c in children)


def finished(child: Child, rows: Iterable[int], who: str) -> dict[str, Any]:
    assert child.wait() == 0, f"child {who} failed:\n{child.stderr.read_text()}"
    assert "claim store" not in child.stderr.read_text(), child.stderr.read_text()  # it ran with claims
    outcome = child.outcome()
    assert outcome["status"] == "ok"
    assert outcome["answers"] == [answer(n) for n in rows], f"child {who}"
    assert outcome["report"]["failed_rows"] == 0
    return dict(outcome["report"])


def test_two_processes_pay_for_each_shared_row_once(
    fake_server_factory: Callable[..., FakeServer], start_child: Any, tmp_path: Path
) -> None:
    """1,500 rows shared, 100 of each process's own, started together into one folder."""
    prompts = Prompts()
    server = fake_server_factory(latency=0.02, answer_fn=prompts)
    rows = {"a": range(0, 1600), "b": range(100, 1700)}
    children = start_both(start_child, server, tmp_path, rows, batch_size=10, max_concurrency=4)
    reports = {who: finished(child, rows[who], who) for who, child in children.items()}
    assert prompts.asked(range(1700)) == [1] * 1700  # every row asked once, shared or not
    assert server.stats.items == 1700
    elsewhere = [r["answered_elsewhere_rows"] for r in reports.values()]
    answered = [r["answered_rows"] for r in reports.values()]
    assert sum(answered) == 1700 and sum(elsewhere) == 1500  # each shared row: one paid, one waited
    assert all(r["cached_rows"] == r["answered_elsewhere_rows"] for r in reports.values())
    # They split the shared rows between them, chunk by chunk, rather than one waiting for all.
    assert min(elsewhere) > 0
    print(f"answered {answered}, answered elsewhere {elsewhere}, waited "
          f"{[round(r['waited_seconds'], 1) for r in reports.values()]} s")  # fmt: skip


def test_a_killed_claimer_is_taken_over_and_everything_finishes(
    fake_server_factory: Callable[..., FakeServer], start_child: Any, tmp_path: Path
) -> None:
    """kill -9 of one process mid-run: the other sees its pid gone, takes its keys over,
    and answers every row; rows the dead one had written are not asked again."""
    prompts = Prompts()
    server = fake_server_factory(latency=0.1, answer_fn=prompts)
    rows = {"a": range(0, 800), "b": range(0, 800)}
    children = start_both(start_child, server, tmp_path, rows, batch_size=10, max_concurrency=2, lease_seconds=30.0)
    wait_until(lambda: server.stats.ok >= 30 and holds_claims(tmp_path / "cache-shared", *children.values()),
               "both hold claims and 30 requests were answered", children["a"])  # fmt: skip
    killed_at = time.monotonic()
    children["a"].proc.send_signal(signal.SIGKILL)
    children["a"].proc.wait(timeout=10)
    report = finished(children["b"], rows["b"], "b")
    took = time.monotonic() - killed_at
    assert report["taken_over_rows"] > 0
    assert took < 25  # well within the 30 s lease: the dead pid was seen at once
    asked = prompts.asked(range(800))
    assert min(asked) == 1
    # Asked twice: only rows the killed process answered in its last flush window (2 s),
    # or had in flight, when it died.
    log = server.stats.snapshot()["log"]
    late = sum(r.n_items for r in log if r.status == 200 and r.t_end > killed_at - 2.75 and r.t_start < killed_at)
    assert sum(n - 1 for n in asked) <= late
    print(f"taken over {report['taken_over_rows']}, asked twice {sum(n - 1 for n in asked)}, took {took:.1f} s")


def stop_outside_a_transaction(child: Child, store: Path) -> None:
    """SIGSTOP ``child`` while this test holds the store's write lock: a process stopped inside
    its own write transaction would hold the lock, and every other run would give up on
    claims once SQLite's busy timeout passed, whatever the leases say (seen under load)."""
    db = sqlite3.connect(store, timeout=30, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        child.proc.send_signal(signal.SIGSTOP)
        db.execute("ROLLBACK")
    finally:
        db.close()


@pytest.mark.alone  # a lease running out against the children's pace
def test_a_stopped_claimer_loses_its_keys_when_its_lease_expires(
    fake_server_factory: Callable[..., FakeServer], start_child: Any, tmp_path: Path
) -> None:
    """SIGSTOP: the pid lives, so only the lease (2 s here) frees its keys; the other
    process takes them over and finishes, and so does the stopped one once resumed."""
    # Slow enough that neither child can finish before the other holds claims too (it did at 0.1 s).
    server = fake_server_factory(latency=0.25)
    rows = {"a": range(0, 600), "b": range(0, 600)}
    children = start_both(start_child, server, tmp_path, rows, batch_size=10, max_concurrency=2, lease_seconds=2.0)
    wait_until(lambda: server.stats.ok >= 20 and holds_claims(tmp_path / "cache-shared", *children.values()),
               "both hold claims and 20 requests were answered", children["a"])  # fmt: skip
    stop_outside_a_transaction(children["a"], tmp_path / "cache-shared" / CLAIMS_FILE)
    try:
        stopped_at = time.monotonic()
        report = finished(children["b"], rows["b"], "b")
        assert report["taken_over_rows"] > 0
        assert time.monotonic() - stopped_at < 30
    finally:
        children["a"].proc.send_signal(signal.SIGCONT)
    finished(children["a"], rows["a"], "a")
