"""llmframe._gc.fewer_collections: what exists is frozen and young collections are rarer
while a run sends, and the collector is as it was once the last run at once ends."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from llmframe._gc import YOUNG_THRESHOLD, fewer_collections
from llmframe.testing import FakeServer, expected_answer


@pytest.fixture(autouse=True)
def collector_as_found() -> Iterator[None]:
    before = gc.get_threshold(), gc.isenabled(), gc.get_freeze_count()
    yield
    assert (gc.get_threshold(), gc.isenabled(), gc.get_freeze_count()) == before


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    saved = gc.get_threshold()
    yield saved
    gc.set_threshold(*saved)


def test_frozen_and_rarer_inside_then_put_back(thresholds: tuple[int, int, int]) -> None:
    gc.set_threshold(700, 11, 12)
    kept = [[] for _ in range(10)]  # containers that exist before: frozen inside
    with fewer_collections():
        assert gc.get_freeze_count() >= len(kept)
        assert gc.get_threshold() == (YOUNG_THRESHOLD, 11, 12)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == (700, 11, 12)


def test_a_higher_threshold_of_the_process_is_kept(thresholds: tuple[int, int, int]) -> None:
    gc.set_threshold(50_000, 10, 10)
    with fewer_collections():
        assert gc.get_threshold() == (50_000, 10, 10)


class Node:
    other: Node


def nodes() -> int:
    return sum(isinstance(o, Node) for o in gc.get_objects())


def test_garbage_from_before_waits_for_the_end_and_is_collected_then() -> None:
    gc.collect()
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only a collection frees it
    del a, b
    with fewer_collections():
        gc.collect()
        assert nodes() == 0  # frozen: not among the objects collections walk
    assert nodes() == 2  # back in the oldest generation
    gc.collect()
    assert nodes() == 0


def test_runs_at_once_share_one_freeze_undone_by_the_last() -> None:
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def first() -> None:
        with fewer_collections():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with fewer_collections():
            second_in.set()
            first_out.wait(5)
            seen["frozen after the first ended"] = gc.get_freeze_count() > 0
            seen["threshold after the first ended"] = gc.get_threshold()[0]

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {
        "frozen after the first ended": True,
        "threshold after the first ended": YOUNG_THRESHOLD,
    }


def test_collection_turned_off_stays_off() -> None:
    gc.disable()
    try:
        with fewer_collections():
            assert not gc.isenabled()
            assert gc.get_freeze_count() == 0
    finally:
        gc.enable()


def test_objects_the_process_froze_itself_stay_frozen() -> None:
    gc.freeze()  # a server that froze its objects before forking
    frozen = gc.get_freeze_count()
    try:
        with fewer_collections():
            assert gc.get_threshold()[0] >= YOUNG_THRESHOLD
        assert gc.get_freeze_count() > frozen // 2  # not unfrozen (a few may have been freed since)
    finally:
        gc.unfreeze()


def test_a_run_sends_frozen_and_puts_the_collector_back(fake_server_factory: Any) -> None:
    during: list[tuple[int, int]] = []

    def answer(prompt: str) -> str:  # in the server's thread, while the run sends
        during.append((gc.get_freeze_count(), gc.get_threshold()[0]))
        return expected_answer(prompt)

    server: FakeServer = fake_server_factory(answer_fn=answer)
    df = pd.DataFrame({"review": [f"r{i}" for i in range(30)]})
    out = df.llm.apply("Sentiment of: {review}", output="s", model="gpt-4o-mini", base_url=server.base_url,
                       api_key=server.api_key, progress=False, cache=False, batch_size=1)  # fmt: skip
    assert out["s"].tolist() == [expected_answer(f"Sentiment of: r{i}") for i in range(30)]
    assert len(during) == 30
    assert all(frozen > 0 and threshold == YOUNG_THRESHOLD for frozen, threshold in during)


def test_a_finished_run_is_freed_when_the_call_returns_not_at_a_later_collection(
    fake_server_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weakref

    from llmframe import _engine

    runs: list[Any] = []
    made = _engine.new_run
    monkeypatch.setattr(_engine, "new_run", lambda *a, **k: runs.append(weakref.ref(r := made(*a, **k))) or r)
    server = fake_server_factory()
    template = "Classify the sentiment of this customer review as positive or negative, one word: {t}"
    options = {"model": "gpt-4o-mini", "base_url": server.base_url, "api_key": "k", "progress": False, "cache": False}
    pd.DataFrame({"t": ["warm-up"]}).llm.apply(template, **options)  # the process's first run builds its TLS context
    runs.clear()
    gc.collect()
    gc.disable()
    try:
        out = pd.DataFrame({"t": [f"row {i}" for i in range(300)]}).llm.apply(template, **options)
        assert runs and all(r() is None for r in runs)  # its jobs, queue and answers went with it
    finally:
        gc.enable()
    assert out["answer"].tolist() == [expected_answer(template.format(t=f"row {i}")) for i in range(300)]
