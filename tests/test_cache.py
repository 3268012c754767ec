"""AnswerCache, what a run uses: buffered writes, timed flushes, lookups without writes."""

from __future__ import annotations

import itertools
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pytest
from _cache_helpers import (
    BASE,
    folder_state,
    key,
    reads_from_disk,
    record,
    segments,
    write_segment,
)

from llmframe import _cache_segments
from llmframe._cache import AnswerCache
from llmframe._cache_admin import read_cache
from llmframe._cache_reader import CacheReader
from llmframe._cache_schema import CacheRecord, records_to_table
from llmframe._cache_segments import AUTO_COMPACT_SEGMENTS
from llmframe._errors import CacheError

# --------------------------------------------------------------------------- writing and reading back


def test_round_trip(tmp_path: Path) -> None:
    paris = timezone(timedelta(hours=2))
    full = CacheRecord(
        key=key(1),
        model="gpt-4o-mini",
        template_hash="a" * 32,
        answer="positive",
        status="ok",
        error=None,
        prompt_tokens=41,
        completion_tokens=2,
        cost_usd=8.25e-06,
        created=datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=paris),
        request_id="req_abc",
    )
    sparse = record(2, "négatif, 🙂\n", seconds=1)
    with AnswerCache(tmp_path) as cache:
        cache.add([full, sparse])
        cache.flush()
        assert cache.lookup([key(1), key(2)]) == ["positive", "négatif, 🙂\n"]

    assert len(segments(tmp_path)) == 1
    rows = read_cache(tmp_path).sort("key").to_dicts()
    assert rows[0] == {
        "key": key(1),
        "model": "gpt-4o-mini",
        "template_hash": "a" * 32,
        "answer": "positive",
        "status": "ok",
        "error": None,
        "prompt_tokens": 41,
        "completion_tokens": 2,
        "cost_usd": 8.25e-06,
        "created": datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc),
        "request_id": "req_abc",
    }
    assert rows[1]["answer"] == "négatif, 🙂\n"
    # A new process (a new AnswerCache) sees the same answers.
    assert AnswerCache(tmp_path).lookup([key(2), key(1)]) == ["négatif, 🙂\n", "positive"]


def test_add_columns(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path)
    cache.add_columns(
        {
            "key": [key(1), key(2), key(3)],
            "model": pl.Series(["m"] * 3),
            "template_hash": ["t"] * 3,
            "status": pd.Series(["ok", "error", "ok"]),
            "answer": ["one", None, "three"],
            "prompt_tokens": [1, 2, 3],
        }
    )
    cache.flush()
    assert cache.lookup([key(3), key(2), key(1)]) == ["three", None, "one"]
    stored = read_cache(tmp_path).sort("key")
    assert stored["prompt_tokens"].to_list() == [1, 2, 3]
    assert stored["completion_tokens"].to_list() == [0, 0, 0]
    assert stored["request_id"].to_list() == [None, None, None]
    created = stored["created"].to_list()
    assert all(abs(c - datetime.now(timezone.utc)) < timedelta(minutes=1) for c in created)
    with pytest.raises(ValueError, match="unknown columns"):  # the schema's guard, see its tests
        cache.add_columns({"key": [key(4)], "api_key": ["sk-secret"]})


def test_a_record_that_does_not_fit_is_dropped_not_the_others(tmp_path: Path) -> None:
    bad = CacheRecord(key(2), "m", "t", 123, "ok", None, 1, 1, None, BASE, None)  # type: ignore[arg-type]
    cache = AnswerCache(tmp_path)
    with pytest.warns(RuntimeWarning, match=key(2)):  # when added: it is logged as it comes
        cache.add([record(1, "fine"), bad, record(3, "fine too")])
    cache.flush()
    assert cache.lookup([key(1), key(2), key(3)]) == ["fine", None, "fine too"]


def test_cache_folder_is_created_and_must_be_a_folder(tmp_path: Path) -> None:
    AnswerCache(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(CacheError, match="file"):
        AnswerCache(tmp_path / "file")


# --------------------------------------------------------------------------- lookups write nothing and keep nothing


def test_lookup_sees_what_this_cache_added(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path, flush_seconds=3600)
    write_segment(tmp_path, [record(1, "stored"), record(2, "stored")])
    cache.add([record(1, "buffered", seconds=1), record(3, status="error")])
    cache.add_columns(
        {"key": [key(4)], "model": ["m"], "template_hash": ["t"], "status": ["ok"],
         "answer": ["columns"]}
    )  # fmt: skip
    want = ["buffered", "stored", None, "columns"]
    assert cache.lookup([key(n) for n in (1, 2, 3, 4)]) == want
    assert cache.lookup_binary(bytes.fromhex(key(1) + key(4))).to_pylist() == [
        "buffered",
        "columns",
    ]
    assert len(segments(tmp_path)) == 1  # found in the buffer, not written by the lookup
    cache.close()
    assert AnswerCache(tmp_path).lookup([key(n) for n in (1, 2, 3, 4)]) == want


def test_records_a_flush_is_writing_are_found_by_a_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = AnswerCache(tmp_path, flush_seconds=3600)
    cache.add([record(1, "in flight")])
    found: list[list[str | None]] = []
    real = _cache_segments.write_segment

    def look_then_write(folder: Path, table: Any, **kwargs: Any) -> str:
        # Out of the buffer, not on disk yet: what another thread's lookup sees right now.
        found.append(cache.lookup([key(1)]))
        return real(folder, table, **kwargs)

    monkeypatch.setattr(_cache_segments, "write_segment", look_then_write)
    cache.flush()
    assert found == [["in flight"]]
    assert cache.lookup([key(1)]) == ["in flight"]  # and from the folder afterwards


def test_lookup_changes_nothing_on_disk(tmp_path: Path) -> None:
    # More segments than trigger a compaction, and records still buffered: before the
    # split, a lookup would have flushed the buffer and compacted the folder.
    for n in range(AUTO_COMPACT_SEGMENTS + 2):
        _cache_segments.write_segment(tmp_path, records_to_table([record(n, f"a{n}")]))
    cache = AnswerCache(tmp_path, flush_seconds=3600)
    cache.add([record(1000, "buffered")])
    before = folder_state(tmp_path)
    keys = [key(0), key(AUTO_COMPACT_SEGMENTS + 1), key(1000), key(5000)]
    want = ["a0", f"a{AUTO_COMPACT_SEGMENTS + 1}", "buffered", None]
    assert cache.lookup(keys) == want
    assert cache.lookup_binary(bytes.fromhex("".join(keys))).to_pylist() == want
    assert CacheReader(tmp_path).lookup(keys[:2]) == want[:2]
    assert CacheReader(tmp_path / "missing").lookup(keys) == [None] * 4
    assert folder_state(tmp_path) == before
    assert not (tmp_path / "missing").exists()
    cache.close()  # the explicit step: the flush writes, and compacts what a lookup left alone
    assert len(segments(tmp_path)) == 1
    assert CacheReader(tmp_path).lookup(keys) == want


def test_answer_cache_keeps_no_index_between_lookups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = write_segment(tmp_path, [record(1, "one")])
    reads = reads_from_disk(monkeypatch)
    cache = AnswerCache(tmp_path)
    assert cache.lookup([key(1)]) == ["one"]
    assert cache.lookup_binary(bytes.fromhex(key(1))).to_pylist() == ["one"]
    # Each lookup read the folder afresh: nothing was kept in between (a run's memory).
    assert reads == [[first.name], [first.name]]
    once = CacheReader(tmp_path, keep_index=False)
    assert once.lookup([key(1)]) == once.lookup([key(1)]) == ["one"]
    assert len(reads) == 4


# --------------------------------------------------------------------------- flushing


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_flush_timing_follows_the_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    cache = AnswerCache(tmp_path, flush_seconds=2.0, clock=clock)
    cache.add([record(1)])
    clock.now += 1.9
    cache.add([record(2)])
    cache.flush_if_due()
    assert segments(tmp_path) == []
    clock.now += 0.1  # 2 s since the cache was made
    cache.add([record(3)])
    assert len(segments(tmp_path)) == 1
    assert read_cache(tmp_path).height == 3

    cache.add([record(4)])
    clock.now += 1.0
    cache.flush_if_due()
    assert len(segments(tmp_path)) == 1
    clock.now += 1.0
    cache.flush_if_due()
    assert len(segments(tmp_path)) == 2

    clock.now += 10.0
    cache.flush_if_due()  # due, but nothing buffered
    cache.add([])
    assert len(segments(tmp_path)) == 2


def test_bulk_buffers_are_bounded(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path, flush_seconds=3600, flush_rows=100)
    cache.add([record(n) for n in range(99)])
    assert segments(tmp_path) == []
    cache.add([record(99)])
    assert len(segments(tmp_path)) == 1


def test_empty_flush_writes_nothing_and_close_is_idempotent(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path)
    cache.flush()
    cache.close()
    cache.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CacheError, match="closed"):
        cache.add([record(1)])


def test_close_after_an_exception_still_flushes(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), AnswerCache(tmp_path, flush_seconds=3600) as cache:
        cache.add([record(1, "kept")])
        raise KeyboardInterrupt
    assert AnswerCache(tmp_path).lookup([key(1)]) == ["kept"]


def test_adds_flushes_and_lookups_from_several_threads(tmp_path: Path) -> None:
    ticks = itertools.count()
    # Every add and flush reads this clock, so the writers also flush every few adds.
    cache = AnswerCache(tmp_path, flush_seconds=20, clock=lambda: float(next(ticks)))
    added: list[int] = []
    missed: list[int] = []
    stop = threading.Event()

    def writer(base: int) -> None:
        for n in range(base, base + 500, 5):
            cache.add([record(m, f"a{m}", request_id=f"r{m}") for m in range(n, n + 5)])
            added.extend(range(n, n + 5))

    def flusher() -> None:
        while not stop.is_set():
            cache.flush()
            done = added[:]  # added before this lookup began, so it must find every one
            answers = cache.lookup([key(m) for m in done])
            missed.extend(m for m, a in zip(done, answers, strict=True) if a != f"a{m}")

    timer = threading.Thread(target=flusher)
    timer.start()
    writers = [threading.Thread(target=writer, args=(i * 1000,)) for i in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    timer.join()
    cache.close()
    assert missed == []
    stored = read_cache(tmp_path)
    assert stored.height == 2000
    assert stored["request_id"].n_unique() == 2000


def test_each_segment_written_gives_arrow_memory_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parquet writer leaves ~17-30 MB in Arrow's allocator per segment, freed but held:
    # the cache hands it back once the segment (and any merge) is done, not at the end.
    from llmframe import _cache

    released: list[int] = []
    monkeypatch.setattr(_cache, "release_memory", lambda: released.append(len(segments(tmp_path))))
    cache = AnswerCache(tmp_path)
    cache.flush()  # nothing buffered: no segment, nothing to give back
    cache.add([record(1, "a")])
    cache.flush()
    cache.add([record(2, "b")])
    cache.close()
    assert released == [1, 2]  # after each segment is on disk
    assert CacheReader(tmp_path).lookup([key(1), key(2)]) == ["a", "b"]
