"""The claim store: claim, conflict, refresh, expiry, takeover of a dead process, release.

Every store here has an injected wall clock and, where it matters, an injected
``alive``; two stores on one folder stand for two processes.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from llmframe._claims import CLAIMS_FILE, ClaimStore, Owner, process_alive, this_process


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def owner(name: str, *, host: str = "here", pid: int = 1, proc: str | None = "boot:1") -> Owner:
    return Owner(name, host, pid, proc)


def store(folder: Path, name: str, clock: Clock, *, alive: set[int] | None = None, host: str = "here",
          pid: int = 1, lease: float = 60.0) -> ClaimStore:  # fmt: skip
    living = alive if alive is not None else {1, 2, 3}
    return ClaimStore(folder, owner=owner(name, host=host, pid=pid), lease=lease, clock=clock,
                      alive=lambda p, proc: p in living)  # fmt: skip


def test_claim_and_conflict(tmp_path: Path) -> None:
    clock = Clock()
    a, b = store(tmp_path, "a", clock, pid=1), store(tmp_path, "b", clock, pid=2)
    first = a.claim(["k1", "k2"])
    assert first.theirs == set() and first.taken == set()
    second = b.claim(["k2", "k3"])
    assert second.theirs == {"k2"} and second.taken == set()
    assert a.claim(["k2", "k3", "k4"]).theirs == {"k3"}  # a still holds k2; k4 is new
    assert a.held() == 3 and b.held() == 1
    assert (tmp_path / CLAIMS_FILE).exists()


def test_a_claim_of_free_and_held_keys_inserts_the_free_and_checks_the_rest(tmp_path: Path) -> None:
    # Free keys go in at once; a claim where some are held (by this run, a live run or a
    # stale one) must still report those and take the stale ones over, in one transaction.
    clock = Clock()
    alive = {1, 2, 3}
    a, b = store(tmp_path, "a", clock, pid=1, alive=alive), store(tmp_path, "b", clock, pid=2, alive=alive)
    c = store(tmp_path, "c", clock, pid=3, alive=alive)
    assert a.claim(["live"]).theirs == set() and c.claim(["stale"]).theirs == set()
    assert b.claim(["mine", "mine"]).theirs == set() and b.held() == 1  # a repeated key counts once
    alive.discard(3)  # c died
    got = b.claim(["new1", "live", "mine", "stale", "new2", "new1"])
    assert got.theirs == {"live"} and got.taken == {"stale"}
    assert b.held() == 4 and a.held() == 1 and c.held() == 0
    assert a.claim(["new2"]).theirs == {"new2"}


def test_expired_lease_is_taken_over_and_refresh_keeps_it(tmp_path: Path) -> None:
    clock = Clock()
    a = store(tmp_path, "a", clock, pid=1, lease=30)
    b = store(tmp_path, "b", clock, pid=2, lease=30)
    a.claim(["k1"])
    clock.now += 25
    a.refresh()  # expires now + 30
    clock.now += 25  # 50 s after the claim: the refresh kept it
    assert b.claim(["k1"]).theirs == {"k1"}
    clock.now += 5.1  # 30.1 s after the refresh
    got = b.claim(["k1"])
    assert got.theirs == set() and got.taken == {"k1"}
    assert a.held() == 0 and b.held() == 1


def test_dead_process_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    clock = Clock()
    alive = {1, 2}
    a = store(tmp_path, "a", clock, pid=1, alive=alive)
    b = store(tmp_path, "b", clock, pid=2, alive=alive)
    a.claim(["k1", "k2", "k3"])
    assert b.claim(["k1"]).theirs == {"k1"}
    alive.discard(1)  # a was killed; its lease has not expired
    got = b.claim(["k1"])
    assert got.theirs == set() and got.taken == {"k1"}
    assert b.claim(["k2"]).taken == set()  # the dead run's other claims went with it
    assert b.held() == 2


def test_another_host_is_trusted_until_its_lease_expires(tmp_path: Path) -> None:
    clock = Clock()
    a = store(tmp_path, "a", clock, host="there", pid=7, alive=set())  # pid 7 is not alive *here*
    b = store(tmp_path, "b", clock, pid=2, alive={2})
    a.claim(["k1"])
    assert b.claim(["k1"]).theirs == {"k1"}
    clock.now += 61
    assert b.claim(["k1"]).taken == {"k1"}


def test_release_lets_another_claim_and_moves_the_counter(tmp_path: Path) -> None:
    clock = Clock()
    a, b = store(tmp_path, "a", clock, pid=1), store(tmp_path, "b", clock, pid=2)
    start = b.releases_at_open
    a.claim(["k1", "k2"])
    assert b.claim(["k1"]).theirs == {"k1"}
    seen = a.release(["k1"], seen=a.releases_at_open)
    assert seen == a.releases_at_open + 1  # only its own release came between
    got = b.claim(["k1", "k2"])
    assert got.theirs == {"k2"} and got.taken == set()
    assert got.releases > start  # b learns that keys were given back since it looked


def test_force_takes_from_a_live_owner(tmp_path: Path) -> None:
    clock = Clock()
    a, b = store(tmp_path, "a", clock, pid=1), store(tmp_path, "b", clock, pid=2)
    a.claim(["k1", "k2"])
    got = b.claim(["k1"], force=True)
    assert got.theirs == set() and got.taken == {"k1"}
    assert a.held() == 1 and a.claim(["k1"]).theirs == {"k1"}


def test_close_releases_everything_and_is_idempotent(tmp_path: Path) -> None:
    clock = Clock()
    a, b = store(tmp_path, "a", clock, pid=1), store(tmp_path, "b", clock, pid=2)
    a.claim([f"k{i}" for i in range(500)])
    assert b.claim(["k1"]).theirs == {"k1"}
    a.close()
    a.close()
    assert b.claim([f"k{i}" for i in range(500)]).theirs == set()
    with pytest.raises(sqlite3.Error):
        a.claim(["x"])


@pytest.mark.parametrize("others", [0, 1, 2])
def test_close_releases_its_claims_only_and_moves_the_counter(tmp_path: Path, others: int) -> None:
    # Alone in the store, a run's claims go at once (a truncation); beside others
    # (whose run ids sort before and after it), only its own.
    clock = Clock()
    runs = [store(tmp_path, name, clock, pid=i + 1) for i, name in enumerate(["a", "m", "z"][: others + 1])]
    closing = runs[0] if others != 2 else runs[1]
    for i, run in enumerate(runs):
        run.claim([f"{run.owner.run}{j}" for j in range(100 + i)])
    counter = sqlite3.connect(tmp_path / CLAIMS_FILE)
    before = counter.execute("SELECT value FROM meta WHERE name = 'releases'").fetchone()[0]
    closing.close()
    assert counter.execute("SELECT value FROM meta WHERE name = 'releases'").fetchone()[0] == before + 1
    rest = [run for run in runs if run is not closing]
    assert [run.held() for run in rest] == [100 + runs.index(run) for run in rest]
    held = dict(counter.execute("SELECT run, count(*) FROM claims GROUP BY run").fetchall())
    assert held == {run.owner.run: 100 + runs.index(run) for run in rest}
    counter.close()


def test_a_new_store_drops_what_dead_runs_left(tmp_path: Path) -> None:
    clock = Clock()
    alive = {1, 2}
    a = store(tmp_path, "a", clock, pid=1, alive=alive)
    a.claim(["k1", "k2"])
    alive.discard(1)  # killed without closing
    b = store(tmp_path, "b", clock, pid=2, alive=alive)
    assert b.releases_at_open == 1  # the cleanup counts as a release: b looks again
    db = sqlite3.connect(tmp_path / CLAIMS_FILE)
    assert db.execute("SELECT count(*) FROM claims").fetchone() == (0,)
    assert db.execute("SELECT run FROM runs").fetchall() == [("b",)]
    db.close()


def test_process_alive_tells_a_dead_or_reused_pid() -> None:
    me = this_process()
    assert me.pid == os.getpid() and len(me.run) == 32
    assert process_alive(me.pid, me.proc)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not process_alive(child.pid, None)  # reaped: the pid is free
    if me.proc is not None:  # Linux: a live pid with another start time was reused
        assert not process_alive(me.pid, me.proc.split(":")[0] + ":1")


def test_many_keys_in_one_claim(tmp_path: Path) -> None:
    clock = Clock()
    a, b = store(tmp_path, "a", clock, pid=1), store(tmp_path, "b", clock, pid=2)
    keys = [f"{i:032x}" for i in range(5000)]
    assert a.claim(keys[:3000]).theirs == set()
    assert b.claim(keys).theirs == set(keys[:3000])


def indexes(folder: Path) -> list[str]:
    with sqlite3.connect(folder / CLAIMS_FILE) as db:
        return [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")]


def test_a_store_an_older_version_made_loses_its_run_index_and_keeps_its_claims(tmp_path: Path) -> None:
    clock = Clock()
    old = store(tmp_path, "old", clock, pid=1)
    old.claim(["k1", "k2"])
    with sqlite3.connect(tmp_path / CLAIMS_FILE) as db:  # as the version that indexed claims by run made it
        db.execute("CREATE INDEX claims_by_run ON claims (run)")
    assert indexes(tmp_path) == ["claims_by_run"]
    new = store(tmp_path, "new", clock, pid=2)
    assert indexes(tmp_path) == []
    assert new.claim(["k2", "k3"]).theirs == {"k2"}
    assert old.held() == 2 and new.held() == 1
    old.close()  # beside another run: its own claims only
    assert new.held() == 1 and new.claim(["k1"]).theirs == set()
    new.close()
