"""A run's claims: chunks claimed as the planner takes rows, waiting rows answered from
the cache or taken back, releases, the longest wait, and the pool that waits for them.

Two :class:`RunClaims` on one folder stand for two processes; the clock is injected
and ``landed`` is a dict standing for the cache folder.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from llmframe._claims import ClaimStore, Owner
from llmframe._claims_run import RunClaims
from llmframe._jobs import Job
from llmframe._outcomes import NoProgress
from llmframe._report import RunReport
from llmframe._todo import JobQueue
from llmframe._workers import drain


class Side:
    """One process's run: its jobs, claims, answers and what it flushed."""

    def __init__(self, folder: Path, name: str, pid: int, cache: dict[str, str], now: list[float], n: int = 12,
                 **kwargs: Any) -> None:  # fmt: skip
        self.jobs = [Job(f"{i:032x}", {"x": str(i)}, [i]) for i in range(n)]
        self.pending = JobQueue(self.jobs)
        self.report = RunReport()
        self.answers: list[str | None] = [None] * n
        self.flushes = 0
        self.cache = cache
        store = ClaimStore(folder, owner=Owner(name, "here", pid, None), clock=lambda: now[0],
                           alive=lambda p, proc: True)  # fmt: skip

        async def no_sleep(dt: float) -> None:
            pass

        self.claims = RunClaims(store, self.pending, report=self.report, answers=self.answers, progress=NoProgress(),
                                landed=self.landed, forget=lambda: None, flush=self.flush, sleep=no_sleep,
                                stopped=lambda: False, clock=lambda: now[0], chunk=4, refresh=10,
                                **{"max_chunk": 4, **kwargs})  # fmt: skip

    def landed(self, keys: Sequence[str]) -> list[str | None]:
        return [self.cache.get(k) for k in keys]

    def flush(self) -> None:
        self.flushes += 1

    def take(self, n: int) -> list[Job]:
        self.claims.top_up(n)
        return [self.pending.popleft() for _ in range(min(n, len(self.pending)))]

    def answer(self, jobs: list[Job]) -> None:
        for job in jobs:
            job.done = True
            self.cache[job.key] = f"answer {job.values['x']}"


@pytest.fixture
def world(tmp_path: Path) -> Any:
    cache: dict[str, str] = {}
    now = [1_000_000.0]

    def side(name: str, pid: int, **kwargs: Any) -> Side:
        return Side(tmp_path, name, pid, cache, now, **kwargs)

    return side, cache, now


def test_two_runs_split_a_frame_chunk_by_chunk(world: Any) -> None:
    side, _cache, _now = world
    a, b = side("a", 1), side("b", 2)
    assert [j.values["x"] for j in a.take(4)] == ["0", "1", "2", "3"]
    # b's first chunk is a's: it waits, and b claims the next chunk to have rows to send.
    assert [j.values["x"] for j in b.take(4)] == ["4", "5", "6", "7"]
    assert sorted(b.claims.waits) == [j.key for j in a.jobs[:4]] and b.claims.waiting()
    # a's next chunk is b's: a waits for it, and claims the last.
    assert [j.values["x"] for j in a.take(4)] == ["8", "9", "10", "11"]
    assert sorted(a.claims.waits) == [j.key for j in a.jobs[4:8]]
    assert not a.claims.unclaimed and len(b.claims.unclaimed) == 4  # claimed when b needs them


def test_a_fast_run_claims_more_at_a_time_and_a_slow_one_less(world: Any) -> None:
    side, _cache, now = world
    a = side("a", 1, n=200, max_chunk=32)
    sizes = []
    for step in (0.1, 0.1, 0.1, 0.1, 1.0, 3.0, 3.0, 3.0):  # seconds between top-ups
        before = len(a.claims.unclaimed)
        a.take(len(a.pending) + 1)  # the planner ran out: a claim
        sizes.append(before - len(a.claims.unclaimed))
        now[0] += step
    # 4 at first; doubled while each claim's rows went in under 0.5 s, up to 32; kept at
    # 1 s; halved while they took over 2 s, down to the first size.
    assert sizes == [4, 8, 16, 32, 32, 32, 16, 8]
    assert a.claims.store is not None and a.claims.store.held() == sum(sizes)


def test_a_waiting_row_is_answered_from_the_cache(world: Any) -> None:
    side, _cache, now = world
    a, b = side("a", 1), side("b", 2)
    sent = a.take(4)
    b.take(4)
    now[0] += 0.5
    assert not b.claims.tick()  # nothing landed yet
    a.answer(sent[:3])
    now[0] += 0.5
    assert b.claims.tick()
    assert b.answers[:4] == ["answer 0", "answer 1", "answer 2", None]
    assert b.report.answered_elsewhere_rows == 3 and b.report.cached_rows == 3
    assert b.report.waited_seconds == pytest.approx(1.0)
    assert list(b.claims.waits) == [a.jobs[3].key] and all(j.done for j in b.jobs[:3])


def test_released_rows_go_to_the_planner_or_come_from_the_cache(world: Any) -> None:
    side, _cache, now = world
    a, b = side("a", 1), side("b", 2)
    sent = a.take(4)
    b.take(4)
    a.answer(sent[:2])  # written, but b has not looked yet
    sent[2].done = True  # failed: no answer in the cache
    now[0] += 10
    a.claims.tick()  # refresh: flush, then release the three a is done with
    assert a.flushes == 1
    b.pending.clear()
    assert b.claims.tick()
    # Two were answered (seen in the look before the claim), the failed one is b's to send,
    # and the fourth is still a's.
    assert [j.values["x"] for j in b.pending] == ["2"]
    assert b.answers[:2] == ["answer 0", "answer 1"] and list(b.claims.waits) == [a.jobs[3].key]


def test_a_row_released_after_the_last_look_is_looked_up_again(world: Any) -> None:
    side, cache, _now = world
    a, b = side("a", 1), side("b", 2)
    sent = a.take(4)
    a.answer(sent)
    a.claims.close()  # the end of a's run: everything released
    got = b.take(4)  # claimed now: a released since b opened, so b looks the four up first
    assert [j.values["x"] for j in got] == ["4", "5", "6", "7"]
    assert b.report.answered_elsewhere_rows == 4 and not b.claims.waits
    assert set(cache) == {j.key for j in sent}


def test_a_dead_owner_is_taken_over(world: Any, tmp_path: Path) -> None:
    side, _cache, now = world
    a, b = side("a", 1), side("b", 2)
    a.take(4)
    now[0] += 61  # a's lease expired (it was never refreshed: a died)
    got = b.take(4)
    assert [j.values["x"] for j in got] == ["0", "1", "2", "3"]
    assert b.report.taken_over_rows == 4


def test_the_longest_wait_ends_in_sending(world: Any) -> None:
    side, _cache, now = world
    a, b = side("a", 1, max_wait=30), side("b", 2, max_wait=30)
    a.take(4)
    b.take(4)
    b.pending.clear()
    for _ in range(5):
        now[0] += 5
        a.claims.tick()  # a lives and refreshes, but never answers
        assert not b.claims.tick()
    now[0] += 5.5
    assert b.claims.tick()
    assert [j.values["x"] for j in b.pending] == ["0", "1", "2", "3"] and not b.claims.waits


def test_a_broken_store_sends_everything(world: Any) -> None:
    side, _cache, _now = world
    a, b = side("a", 1), side("b", 2)
    a.take(4)
    sent = b.take(2)
    assert b.claims.waits
    b.claims.store._db.close()  # type: ignore[union-attr]
    with pytest.warns(UserWarning, match="claim store"):
        b.claims.top_up(100)
    assert sorted(int(j.values["x"]) for j in [*sent, *b.pending]) == list(range(12))
    assert not b.claims.waiting()


def test_the_pool_does_not_end_while_rows_wait() -> None:
    """drain with an ``outside`` holding rows: the workers wait for it, take what it
    hands back, and end only once nothing waits."""

    class Held:
        def __init__(self) -> None:
            self.items: deque[int] = deque()
            self.held = [10, 11]
            self.polls = 0

        def waiting(self) -> bool:
            return bool(self.held)

        async def watch(self, wake: Any) -> None:
            while True:
                await asyncio.sleep(0)
                self.polls += 1
                if self.polls % 5 == 0 and self.held:
                    self.items.append(self.held.pop())
                    await wake()

    held = Held()
    held.items.extend([1, 2, 3])
    done: list[int] = []

    async def process(item: int) -> None:
        done.append(item)

    asyncio.run(drain(lambda: held.items.popleft() if held.items else None, process, 3, held))
    assert sorted(done) == [1, 2, 3, 10, 11] and not held.held


def test_the_report_shows_what_other_processes_did_only_when_they_did() -> None:
    report = RunReport(rows=10, cached_rows=4)
    assert "another process" not in report.summary() and "other processes" not in report._repr_html_()
    report.answered_elsewhere_rows, report.waited_seconds, report.taken_over_rows = 4, 2.25, 3
    assert "4 answered by another process sharing the cache folder (waited 2.2 s)" in report.summary()
    assert "3 taken over from a dead or expired claim" in report.summary()
    assert "<td>other processes</td>" in report._repr_html_()
    assert report.to_dict()["answered_elsewhere_rows"] == 4


def test_a_cache_that_cannot_be_read_sends_the_rows(world: Any) -> None:
    side, _cache, _now = world
    a, b = side("a", 1), side("b", 2)
    a.take(4)
    a.claims.close()  # released: b looks its claims up again, and that read fails

    def unreadable(keys: Sequence[str]) -> list[str | None]:
        raise OSError("disk gone")

    b.claims.landed = unreadable
    assert [j.values["x"] for j in b.take(4)] == ["0", "1", "2", "3"]
