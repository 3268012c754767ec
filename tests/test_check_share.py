"""One packing check per task across runs at once: the claim and verdict files, and 8 Dask partitions."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from llmframe._check_share import CLAIM_SECONDS, POLL_SECONDS, SharedCheck
from llmframe.testing import FakeServer, expected_answer

KEY = "0123456789abcdef" * 4


class Clock:
    """A wall clock and a sleep that moves it: nothing sleeps for real."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.slept = 0.0
        self.on_sleep: list[Any] = []  # called once each, in order, at each sleep

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds
        if self.on_sleep:
            self.on_sleep.pop(0)()


def test_the_first_run_claims_and_the_others_do_not(tmp_path: Path) -> None:
    first, second = SharedCheck(tmp_path, KEY), SharedCheck(tmp_path, KEY)
    assert first.claim() and first.claim()  # holding it already
    assert not second.claim()
    owner = json.loads(first.claim_path.read_text())
    assert owner["pid"] == os.getpid() and set(owner) == {"pid", "host", "at"}  # nothing else kept
    first.release()
    assert not first.claim_path.exists() and second.claim()


def test_another_task_has_its_own_claim(tmp_path: Path) -> None:
    assert SharedCheck(tmp_path, KEY).claim()
    assert SharedCheck(tmp_path, "f" * 64).claim()


def test_the_verdict_is_stored_for_the_others_and_the_claim_let_go(tmp_path: Path) -> None:
    first = SharedCheck(tmp_path, KEY)
    assert first.claim() and SharedCheck(tmp_path, KEY).stored() is None
    first.store({"batch_size": 20, "reason": "agreed", "style": "json"})
    assert not first.claim_path.exists()
    assert SharedCheck(tmp_path, KEY).stored() == {"batch_size": 20, "reason": "agreed", "style": "json"}


def test_a_claim_whose_process_is_gone_is_taken_over(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)  # fmt: skip
    dead = int(done.stdout)
    clock = Clock()
    SharedCheck(tmp_path, KEY).claim_path.write_text(json.dumps({"pid": dead, "host": socket.gethostname(),
                                                                 "at": clock.now}))  # fmt: skip
    assert SharedCheck(tmp_path, KEY, clock).claim()


def test_a_claim_of_another_host_is_taken_over_only_when_old(tmp_path: Path) -> None:
    clock = Clock()
    path = SharedCheck(tmp_path, KEY).claim_path
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "at": clock.now}))
    assert not SharedCheck(tmp_path, KEY, clock).claim()
    clock.now += CLAIM_SECONDS + 1
    assert SharedCheck(tmp_path, KEY, clock).claim()


def test_a_waiting_run_gets_the_verdict_once_it_is_stored(tmp_path: Path) -> None:
    clock = Clock()
    holder, waiter = SharedCheck(tmp_path, KEY, clock), SharedCheck(tmp_path, KEY, clock)
    assert holder.claim()
    clock.on_sleep = [lambda: None, lambda: holder.store({"batch_size": 5})]
    assert asyncio.run(waiter.wait(clock.sleep)) == {"batch_size": 5}
    assert clock.slept == pytest.approx(2 * POLL_SECONDS)
    assert not waiter.claim_path.exists()  # the waiter did not claim: it has the verdict


def test_a_waiting_run_checks_itself_when_the_claim_goes_without_a_verdict(tmp_path: Path) -> None:
    clock = Clock()
    holder, waiter = SharedCheck(tmp_path, KEY, clock), SharedCheck(tmp_path, KEY, clock)
    assert holder.claim()
    clock.on_sleep = [holder.release]
    assert asyncio.run(waiter.wait(clock.sleep)) is None
    assert not holder.claim()  # the waiter holds the claim now: it checks


def test_a_waiting_run_checks_itself_after_the_timeout(tmp_path: Path) -> None:
    clock = Clock()
    assert SharedCheck(tmp_path, KEY, clock).claim()  # a holder that never answers
    assert asyncio.run(SharedCheck(tmp_path, KEY, clock).wait(clock.sleep, timeout=3.0)) is None
    assert clock.slept == pytest.approx(3.0)


# -- 8 Dask partitions ------------------------------------------------------------------------

# Worth packing (instructions longer than the packed format's overhead), as in test_packing_check_e2e.
TEMPLATE = (
    "You answer geography questions for a school quiz. Give the capital city of the country "
    "named below: the seat of its government, as an atlas in English would spell it. If the "
    "country has more than one capital, give the one its constitution names first. Answer with "
    "the city's name alone, with no other words, no punctuation and no explanation.\n\nCountry: {country}"
)
PARTITIONS, PER_PARTITION = 8, 60  # more than 40 rows each: every partition would check


def test_eight_partitions_at_once_share_one_packing_check(fake_server_factory: Any, tmp_path: Path) -> None:
    dd = pytest.importorskip("dask.dataframe")
    import llmframe.dask  # noqa: F401

    server: FakeServer = fake_server_factory(latency=0.05)
    names = [f"country-{i}" for i in range(PARTITIONS * PER_PARTITION)]
    ddf = dd.from_pandas(pd.DataFrame({"country": names}), npartitions=PARTITIONS)
    out = ddf.llm.apply(TEMPLATE, model="gpt-4o-mini", base_url=server.base_url, api_key=server.api_key,
                        cache=str(tmp_path / "answers"))  # fmt: skip
    got = out.compute(scheduler="threads", num_workers=PARTITIONS)  # all 8 start together
    assert got["answer"].tolist() == [expected_answer(TEMPLATE.format(country=c)) for c in names]
    report = out.llm.report
    assert report.check_requests == 1  # the trial of one check (at 20 rows), not one per partition
    alone = sum(1 for r in server.stats.snapshot()["log"] if r.n_items == 1)
    # the check's 10 sampled rows; the other partitions only warm their canaries up (4 rows each)
    assert alone == 10 + (PARTITIONS - 1) * 4, alone
    assert list((tmp_path / "answers").glob(".packing-*.claim")) == []  # let go at the end


def test_a_later_run_in_another_process_reuses_the_stored_verdict(fake_server_factory: Any, tmp_path: Path) -> None:
    server: FakeServer = fake_server_factory()
    cache = str(tmp_path / "answers")
    options = {"model": "gpt-4o-mini", "base_url": server.base_url, "api_key": server.api_key, "cache": cache,
               "progress": False}  # fmt: skip
    first = pd.DataFrame({"country": [f"a-{i}" for i in range(60)]}).llm.apply(TEMPLATE, **options)
    assert first.llm.report.check_requests == 1
    _memory_cleared()  # as a new process would start: nothing in this process's memory
    again = pd.DataFrame({"country": [f"b-{i}" for i in range(60)]}).llm.apply(TEMPLATE, **options)
    assert again.llm.report.check_requests == 0 and "earlier run" in again.llm.report.packing_reason


def _memory_cleared() -> None:
    from llmframe._capabilities import ENDPOINTS_FILE, MEMORY

    MEMORY.clear()
    # endpoints.json holds the verdict too: remove it, so only the shared verdict file can tell
    for path in Path(os.environ["LLMFRAME_CACHE_DIR"]).parent.rglob(ENDPOINTS_FILE):
        path.unlink()
