"""The answer cache: a folder of parquet segments shared by threads and processes."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest

from llmframe import _cache, _cache_admin, _cache_index, _cache_reader, _cache_segments
from llmframe._cache import AnswerCache
from llmframe._cache_admin import (
    cache_info,
    clear_cache,
    compact_cache,
    default_cache_dir,
    read_cache,
    resolve_cache_dir,
)
from llmframe._cache_reader import CacheReader
from llmframe._cache_schema import SCHEMA, CacheRecord, records_to_table
from llmframe._cache_segments import AUTO_COMPACT_SEGMENTS
from llmframe._errors import CacheError, ConfigError

BASE = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def key(n: int) -> str:
    return f"{n:032x}"


def record(
    n: int,
    answer: str | None = "yes",
    *,
    status: str = "ok",
    seconds: float = 0.0,
    request_id: str | None = None,
) -> CacheRecord:
    return CacheRecord(
        key=key(n),
        model="gpt-4o-mini",
        template_hash="t" * 32,
        answer=answer if status == "ok" else None,
        status=status,
        error=None if status == "ok" else "server: 503 after 5 attempts",
        prompt_tokens=40,
        completion_tokens=3,
        cost_usd=1.5e-05,
        created=BASE + timedelta(seconds=seconds),
        request_id=request_id,
    )


def segments(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("seg-*.parquet"))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


# --------------------------------------------------------------------------- basics


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


def test_segment_names_and_schema_on_disk(tmp_path: Path) -> None:
    with AnswerCache(tmp_path) as cache:
        cache.add([record(1)])
    (name,) = segments(tmp_path)
    assert _cache_segments.SEGMENT_NAME.fullmatch(name)
    _, time_ns, pid, _uuid8 = name.removesuffix(".parquet").split("-")
    assert int(pid) == os.getpid() and abs(int(time_ns) - time.time_ns()) < 60e9
    assert pq.read_schema(tmp_path / name).names == SCHEMA.names
    assert pq.read_table(tmp_path / name).schema.equals(SCHEMA)
    column = pq.ParquetFile(tmp_path / name).metadata.row_group(0).column(0)
    assert column.compression == "ZSTD"


def test_newest_ok_wins(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path)
    # The newer answer is added first: "newest" means created, not arrival order.
    cache.add([record(1, "new", seconds=10), record(1, "old", seconds=1)])
    cache.flush()
    assert cache.lookup([key(1)]) == ["new"]
    cache.add([record(1, "newer", seconds=20)])
    cache.flush()
    assert cache.lookup([key(1)]) == ["newer"]
    cache.add([record(1, "stale", seconds=5)])  # a slow process finishing late
    cache.flush()
    assert cache.lookup([key(1)]) == ["newer"]
    assert AnswerCache(tmp_path).lookup([key(1)]) == ["newer"]


def test_errors_are_stored_but_never_served(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path)
    cache.add([record(1, status="error"), record(2, "ok-then-error", seconds=1)])
    cache.add([record(2, status="error", seconds=2)])  # a later error does not hide the ok
    cache.add([record(3, status="error"), record(3, "fixed", seconds=3)])  # a later ok wins
    cache.flush()
    assert cache.lookup([key(1), key(2), key(3)]) == [None, "ok-then-error", "fixed"]
    assert AnswerCache(tmp_path).lookup([key(1), key(2), key(3)]) == [
        None,
        "ok-then-error",
        "fixed",
    ]
    stored = read_cache(tmp_path)
    assert stored.filter(pl.col("status") == "error").height == 3
    assert (
        stored.filter(pl.col("status") == "error")["error"].to_list()
        == ["server: 503 after 5 attempts"] * 3
    )


def test_lookup_keeps_order_and_duplicates(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path)
    assert cache.lookup([]) == []
    assert cache.lookup([key(1), key(1)]) == [None, None]
    cache.add([record(n, f"a{n}") for n in range(5)])
    keys = [key(3), key(9), key(0), key(3), key(3), key(4), key(9)]
    assert cache.lookup(keys) == ["a3", None, "a0", "a3", "a3", "a4", None]
    assert cache.lookup(pl.Series(keys)) == ["a3", None, "a0", "a3", "a3", "a4", None]
    assert cache.lookup(tuple(keys[:1])) == ["a3"]


def test_lookup_is_exact_when_keys_share_their_first_half(tmp_path: Path) -> None:
    # The index finds keys by their first 64 bits; keys that share them must not mix.
    one, two, three = ("0" * 16 + d * 16 for d in "123")
    cache = AnswerCache(tmp_path)
    cache.add_columns(
        {"key": [one, two], "model": ["m"] * 2, "template_hash": ["t"] * 2,
         "status": ["ok"] * 2, "answer": ["one", "two"]}
    )  # fmt: skip
    assert cache.lookup([two, three, one]) == ["two", None, "one"]
    assert cache.lookup_binary(bytes.fromhex(two + three + one)).to_pylist() == ["two", None, "one"]
    # A key missing from the cache whose first half equals a cached key's gets no answer.
    lonely = AnswerCache(tmp_path / "lonely")
    lonely.add([record(0, "zero")])
    assert lonely.lookup([key(0)[:16] + "f" * 16]) == [None]


def test_lookup_binary_agrees_with_lookup(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path)
    cache.add([record(n, f"a{n}") for n in range(5)])
    cache.add([record(2, status="error", seconds=5)])
    keys = [key(3), key(9), key(0), key(3), key(2)]
    binary = bytes.fromhex("".join(keys))
    assert (
        cache.lookup_binary(binary).to_pylist()
        == cache.lookup(keys)
        == ["a3", None, "a0", "a3", "a2"]
    )
    assert cache.lookup_binary(b"").to_pylist() == []
    with pytest.raises(ValueError, match="16 bytes"):
        cache.lookup_binary(b"x" * 17)


def test_keys_in_any_form_are_looked_up_as_text(tmp_path: Path) -> None:
    # llmframe's keys are 32 lowercase hex digits; a hand-filled cache may hold others.
    odd = ["short", key(0xABC).upper(), "g" * 32, "é" * 32]
    cache = AnswerCache(tmp_path)
    cache.add_columns(
        {"key": [key(1), *odd, key(2)], "model": ["m"] * 6, "template_hash": ["t"] * 6,
         "status": ["ok"] * 6, "answer": ["one", "s", "upper", "g", "e", "two"]}
    )  # fmt: skip
    cache.add_columns(
        {"key": ["short"], "model": ["m"], "template_hash": ["t"], "status": ["ok"],
         "answer": ["newer"]}
    )  # fmt: skip
    wanted = [key(2), "short", key(0xABC), key(0xABC).upper(), "g" * 32, "é" * 32, key(1), "nope"]
    assert cache.lookup(wanted) == ["two", "newer", None, "upper", "g", "e", "one", None]
    unwritten = cache.lookup(wanted)  # found in the buffer, not in the folder
    cache.flush()
    assert AnswerCache(tmp_path).lookup(wanted) == cache.lookup(wanted) == unwritten
    assert cache.lookup_binary(bytes.fromhex(key(0xABC))).to_pylist() == [None]


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
    assert cache.lookup_binary(bytes.fromhex(key(1) + key(4))).to_pylist() == ["buffered", "columns"]
    assert len(segments(tmp_path)) == 1  # found in the buffer, not written by the lookup
    cache.close()
    assert AnswerCache(tmp_path).lookup([key(n) for n in (1, 2, 3, 4)]) == want


def folder_state(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file in ``folder``: size, modification time and contents."""
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.iterdir())
    }


def test_records_a_flush_is_writing_are_found_by_a_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = AnswerCache(tmp_path, flush_seconds=3600)
    cache.add([record(1, "in flight")])
    found: list[list[str | None]] = []
    real = _cache.write_segment

    def look_then_write(folder: Path, table: Any, **kwargs: Any) -> str:
        # Out of the buffer, not on disk yet: what another thread's lookup sees right now.
        found.append(cache.lookup([key(1)]))
        return real(folder, table, **kwargs)

    monkeypatch.setattr(_cache, "write_segment", look_then_write)
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
    reads: list[list[str]] = []
    real = _cache_reader.read_ok_rows

    def spy(folder: Path, names: Any) -> Any:
        reads.append(list(names))
        return real(folder, names)

    monkeypatch.setattr(_cache_reader, "read_ok_rows", spy)
    cache = AnswerCache(tmp_path)
    assert cache.lookup([key(1)]) == ["one"]
    assert cache.lookup_binary(bytes.fromhex(key(1))).to_pylist() == ["one"]
    # Each lookup read the folder afresh: nothing was kept in between (a run's memory).
    assert reads == [[first.name], [first.name]]
    once = CacheReader(tmp_path, keep_index=False)
    assert once.lookup([key(1)]) == once.lookup([key(1)]) == ["one"]
    assert len(reads) == 4


def test_records_are_validated_where_they_are_made() -> None:
    with pytest.raises(ValueError, match="status"):
        record(1, status="maybe")
    with pytest.raises(ValueError, match="timezone-aware"):
        CacheRecord(key(1), "m", "t", "a", "ok", None, 1, 1, None, datetime(2024, 1, 1), None)


def test_a_record_that_does_not_fit_is_dropped_not_the_others(tmp_path: Path) -> None:
    bad = CacheRecord(key(2), "m", "t", 123, "ok", None, 1, 1, None, BASE, None)  # type: ignore[arg-type]
    cache = AnswerCache(tmp_path)
    cache.add([record(1, "fine"), bad, record(3, "fine too")])
    with pytest.warns(RuntimeWarning, match=key(2)):
        cache.flush()
    assert cache.lookup([key(1), key(2), key(3)]) == ["fine", None, "fine too"]


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


def test_adds_and_flushes_from_several_threads(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path, flush_seconds=3600)
    stop = threading.Event()

    def writer(base: int) -> None:
        for n in range(base, base + 500, 5):
            cache.add([record(m, f"a{m}", request_id=f"r{m}") for m in range(n, n + 5)])

    def flusher() -> None:
        while not stop.is_set():
            cache.flush()
            time.sleep(0.001)

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
    stored = read_cache(tmp_path)
    assert stored.height == 2000
    assert stored["request_id"].n_unique() == 2000


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


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"api_key": ["sk-secret"]}, "unknown columns"),
        ({"headers": ["Authorization: Bearer x"]}, "unknown columns"),
        ({}, "missing required columns"),
        ({"status": ["done"]}, "'ok' or 'error'"),
        ({"status": [None]}, "null"),
        ({"answer": ["a", "b"]}, "has 2 values"),
        ({"created": [datetime(2024, 1, 1)]}, "timezone-aware"),
        ({"prompt_tokens": ["many"]}, "prompt_tokens"),
    ],
)
def test_add_columns_refuses_bad_input(
    tmp_path: Path, columns: dict[str, Any], message: str
) -> None:
    base: dict[str, Any] = {
        "key": [key(1)],
        "model": ["m"],
        "template_hash": ["t"],
        "status": ["ok"],
    }
    if columns:
        base.update(columns)
    else:
        del base["model"]
    with pytest.raises(ValueError, match=message):
        AnswerCache(tmp_path).add_columns(base)


def test_no_place_for_secrets() -> None:
    fields = set(CacheRecord.__dataclass_fields__)
    assert fields == set(SCHEMA.names)
    assert not {"api_key", "authorization", "headers", "base_url"} & fields


# --------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize(
    ("failure", "raised"),
    [
        (OSError(28, "No space left on device"), CacheError),
        (KeyboardInterrupt(), KeyboardInterrupt),
    ],
)
def test_failed_rename_leaves_no_segment_and_keeps_the_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException, raised: type
) -> None:
    cache = AnswerCache(tmp_path)
    cache.add([record(1, "survives")])

    def refuse(src: Any, dst: Any) -> None:
        raise failure

    monkeypatch.setattr(_cache_segments.os, "replace", refuse)
    with pytest.raises(raised):
        cache.flush()
    assert list(tmp_path.iterdir()) == []  # no segment, no temp file
    monkeypatch.undo()
    cache.close()  # the records were kept for the next attempt
    assert AnswerCache(tmp_path).lookup([key(1)]) == ["survives"]


def run_child(code: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports this same llmframe."""
    package_root = str(Path(_cache.__file__).absolute().parent.parent)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_crash_between_write_and_rename_leaves_no_visible_segment(tmp_path: Path) -> None:
    crash = """
        import os, sys
        from datetime import datetime, timezone
        from llmframe._cache import AnswerCache, CacheRecord

        def die(src, dst):
            os._exit(17)  # the process dies between writing the temp file and renaming it

        cache = AnswerCache(sys.argv[1])
        cache.add([CacheRecord("0" * 32, "m", "t", "lost", "ok", None, 1, 1, None,
                               datetime.now(timezone.utc), None)])
        os.replace = die
        cache.flush()
    """
    done = run_child(crash, str(tmp_path), check=False)
    assert done.returncode == 17, done.stderr
    assert segments(tmp_path) == []
    assert len(leftovers(tmp_path)) == 1  # what a real crash leaves: invisible to readers
    assert read_cache(tmp_path).height == 0
    assert AnswerCache(tmp_path).lookup(["0" * 32]) == [None]

    with AnswerCache(tmp_path) as cache:
        cache.add([record(1, "after the crash")])
    assert pd.read_parquet(tmp_path)["answer"].tolist() == ["after the crash"]
    assert pl.read_parquet(tmp_path / "*.parquet")["answer"].to_list() == ["after the crash"]


# --------------------------------------------------------------------------- processes

WRITER = """
    import os, sys, time
    from datetime import datetime, timedelta, timezone
    from pathlib import Path
    from llmframe._cache import AnswerCache, CacheRecord

    folder, who, go, keys, per_flush = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    Path(f"{go}.{who}").touch()
    while not go.exists():
        time.sleep(0.001)
    base = datetime(2024, 5, 1, tzinfo=timezone.utc)
    # Both writers write every key. Odd keys are newer from "a", even keys from "b".
    newer = (lambda k: k % 2) if who == "a" else (lambda k: 1 - k % 2)
    order = list(range(keys)) if who == "a" else list(reversed(range(keys)))
    with AnswerCache(folder, flush_seconds=0) as cache:  # every add writes a segment
        for start in range(0, keys, per_flush):
            cache.add([
                CacheRecord(f"{k:032x}", "m", "t", f"{who}{k}", "ok", None, 1, 1, None,
                            base + timedelta(seconds=2 * k + newer(k)), f"{who}-{k}")
                for k in order[start:start + per_flush]
            ])
            if start % (10 * per_flush) == 0:
                cache.lookup([f"{k:032x}" for k in range(keys)])
"""


def run_two_writers(folder: Path, keys: int, per_flush: int) -> None:
    package_root = str(Path(_cache.__file__).absolute().parent.parent)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])
    )
    go = folder.parent / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-W", "error::RuntimeWarning", "-c", textwrap.dedent(WRITER),
             str(folder), who, str(go), str(keys), str(per_flush)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in ("a", "b")
    ]  # fmt: skip
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.{who}").exists() for who in "ab"):
        assert time.monotonic() < deadline, "writers did not start"
        time.sleep(0.01)
    go.touch()  # both start writing at the same moment
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err


def expected_answers(keys: int) -> list[str]:
    return [f"a{k}" if k % 2 else f"b{k}" for k in range(keys)]


def test_two_processes_write_one_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    keys, per_flush = 600, 20  # 30 segments each: below the auto-compaction threshold
    run_two_writers(folder, keys, per_flush)
    assert leftovers(folder) == []
    for name in segments(folder):
        pq.read_table(folder / name)  # not one corrupt file
    stored = read_cache(folder)
    assert stored.height == 2 * keys  # every record of both writers, once
    assert sorted(stored["request_id"].to_list()) == sorted(
        f"{who}-{k}" for who in "ab" for k in range(keys)
    )
    assert AnswerCache(folder).lookup([key(k) for k in range(keys)]) == expected_answers(keys)


def test_two_processes_writing_and_compacting_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    keys, per_flush = 1500, 10  # 150 segments each: both processes keep compacting
    run_two_writers(folder, keys, per_flush)
    assert leftovers(folder) == []
    assert len(segments(folder)) <= AUTO_COMPACT_SEGMENTS + 1
    for name in segments(folder):
        pq.read_table(folder / name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert AnswerCache(folder).lookup([key(k) for k in range(keys)]) == expected_answers(keys)
    stored = read_cache(folder)
    assert stored["key"].n_unique() == keys


# --------------------------------------------------------------------------- damage


def write_segment(folder: Path, records: list[CacheRecord]) -> Path:
    with AnswerCache(folder) as cache:
        cache.add(records)
    return folder / segments(folder)[-1]


def test_corrupt_segments_are_skipped_with_a_warning(tmp_path: Path) -> None:
    write_segment(tmp_path, [record(1, "one")])
    truncated = write_segment(tmp_path, [record(n, f"lost{n}") for n in range(2, 50)])
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    garbage = tmp_path / f"seg-{time.time_ns()}-{os.getpid()}-0badf00d.parquet"
    garbage.write_bytes(b"not parquet at all " * 100)
    write_segment(tmp_path, [record(50, "fifty")])

    cache = AnswerCache(tmp_path)
    with pytest.warns(RuntimeWarning) as caught:
        answers = cache.lookup([key(1), key(2), key(50)])
    assert answers == ["one", None, "fifty"]
    messages = " ".join(str(w.message) for w in caught)
    assert truncated.name in messages and garbage.name in messages
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per cache, not on every lookup
        assert cache.lookup([key(50)]) == ["fifty"]

    with pytest.warns(RuntimeWarning) as caught:
        assert sorted(read_cache(tmp_path)["key"].to_list()) == [key(1), key(50)]
    assert len(caught) == 2
    with pytest.warns(RuntimeWarning):
        info = cache_info(tmp_path)
    assert info["segments"] == 4 and info["records"] == 2
    assert sorted(info["corrupt"]) == sorted([truncated.name, garbage.name])
    with pytest.warns(RuntimeWarning):
        compact_cache(tmp_path)
    assert truncated.exists() and garbage.exists()  # never deleted: the user may want them


def test_a_segment_deleted_after_listing_is_skipped_silently(tmp_path: Path) -> None:
    kept = write_segment(tmp_path, [record(1, "one")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows, read, corrupt = _cache_segments.read_segments(
            tmp_path, ["seg-1-1-deadbeef.parquet", kept.name], _cache_index.LOOKUP_COLUMNS
        )
    assert rows["answer"].to_list() == ["one"]
    assert read == [kept.name] and corrupt == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parts, read, corrupt = _cache_index.read_ok_rows(
            tmp_path, ["seg-1-1-deadbeef.parquet", kept.name]
        )
    assert [answers.to_pylist() for answers in parts.answers] == [["one"]]
    assert read == [kept.name] and corrupt == []


# --------------------------------------------------------------------------- compaction


def test_lookups_read_only_new_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_segment(tmp_path, [record(1, "one")])
    reads: list[list[str]] = []
    real = _cache_reader.read_ok_rows

    def spy(folder: Path, names: Any) -> Any:
        reads.append(list(names))
        return real(folder, names)

    monkeypatch.setattr(_cache_reader, "read_ok_rows", spy)
    cache = CacheReader(tmp_path)
    assert cache.lookup([key(1), key(2)]) == ["one", None]
    assert cache.lookup([key(1)]) == ["one"]
    newer = write_segment(tmp_path, [record(2, "two")])  # another process's segment
    assert cache.lookup([key(1), key(2)]) == ["one", "two"]
    assert len(reads) == 2 and reads[1] == [newer.name]


def test_auto_compaction_keeps_lookups_identical(tmp_path: Path) -> None:
    rng = random.Random(7)
    expected: dict[str, tuple[float, str]] = {}
    reader = CacheReader(tmp_path)  # holds an index across the compactions
    writer = AnswerCache(tmp_path, flush_seconds=0)
    counts = []
    for flush in range(3 * AUTO_COMPACT_SEGMENTS):
        batch = []
        for _ in range(5):
            n, seconds = rng.randrange(200), rng.uniform(0, 1000)
            status = "ok" if rng.random() < 0.7 else "error"
            batch.append(record(n, f"{n}@{seconds:.6f}", status=status, seconds=seconds))
            if status == "ok" and seconds > expected.get(key(n), (-1.0, ""))[0]:
                expected[key(n)] = (seconds, f"{n}@{seconds:.6f}")
        writer.add(batch)
        counts.append(len(segments(tmp_path)))
        if flush % 20 == 0:
            reader.lookup([key(0)])
    assert max(counts) <= AUTO_COMPACT_SEGMENTS + 1
    assert min(counts[AUTO_COMPACT_SEGMENTS:]) < 10
    keys = [key(n) for n in range(200)]
    want = [expected[k][1] if k in expected else None for k in keys]
    assert reader.lookup(keys) == want
    assert writer.lookup(keys) == want
    assert AnswerCache(tmp_path).lookup(keys) == want
    assert leftovers(tmp_path) == []


def test_auto_compaction_plan_spares_the_big_segment() -> None:
    small = {f"seg-{i}": 10 for i in range(AUTO_COMPACT_SEGMENTS)}
    assert _cache_segments.auto_compact_plan(small) == []
    big = {"seg-0": 10_000, **{f"seg-{i}": 10 for i in range(1, AUTO_COMPACT_SEGMENTS + 1)}}
    assert sorted(_cache_segments.auto_compact_plan(big)) == sorted(set(big) - {"seg-0"})
    even = {f"seg-{i}": 10 for i in range(AUTO_COMPACT_SEGMENTS + 1)}
    assert sorted(_cache_segments.auto_compact_plan(even)) == sorted(even)


def test_compact_cache_semantics(tmp_path: Path) -> None:
    write_segment(tmp_path, [record(1, "old", seconds=1), record(2, status="error", seconds=1)])
    write_segment(tmp_path, [record(1, "new", seconds=5), record(2, status="error", seconds=9)])
    write_segment(
        tmp_path,
        [
            record(1, status="error", seconds=9),  # superseded by the ok: dropped
            record(3, status="error", seconds=1),
            record(3, "fixed", seconds=2),
        ],
    )
    (tmp_path / "notes.txt").write_text("mine")
    before = AnswerCache(tmp_path).lookup([key(1), key(2), key(3)])

    result = compact_cache(tmp_path)
    assert result["segments_before"] == 3 and result["records_before"] == 7
    assert result["segments_after"] == 1 and result["records_after"] == 3
    assert result["bytes_after"] == (tmp_path / segments(tmp_path)[0]).stat().st_size
    stored = read_cache(tmp_path).sort("key")
    assert stored.select("key", "status", "answer").rows() == [
        (key(1), "ok", "new"),
        (key(2), "error", None),
        (key(3), "ok", "fixed"),
    ]
    assert stored["created"].to_list()[1] == BASE + timedelta(seconds=9)  # the newest error
    assert (
        AnswerCache(tmp_path).lookup([key(1), key(2), key(3)]) == before == ["new", None, "fixed"]
    )
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert leftovers(tmp_path) == []

    again = compact_cache(tmp_path)  # already compact: nothing rewritten
    assert again["segments_after"] == 1 and again["records_after"] == 3
    empty = compact_cache(tmp_path / "missing")
    assert empty["segments_before"] == empty["records_after"] == 0


def test_clear_removes_only_segments(tmp_path: Path) -> None:
    write_segment(tmp_path, [record(1)])
    write_segment(tmp_path, [record(2)])
    mine = ["notes.txt", "seg-mine.parquet", "answers.csv", ".tmp-other.part"]
    for name in mine:
        (tmp_path / name).write_text("keep")
    assert clear_cache(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(mine)
    assert clear_cache(tmp_path / "missing") == 0


def test_a_cleared_cache_is_forgotten_by_open_caches(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path)
    reader = CacheReader(tmp_path)  # keeps its index
    cache.add([record(1, "one")])
    cache.flush()
    assert cache.lookup([key(1)]) == reader.lookup([key(1)]) == ["one"]
    assert clear_cache(tmp_path) == 1
    assert cache.lookup([key(1)]) == reader.lookup([key(1)]) == [None]
    cache.add([record(1, "again")])
    cache.flush()
    assert cache.lookup([key(1)]) == reader.lookup([key(1)]) == ["again"]


def test_cache_info(tmp_path: Path) -> None:
    write_segment(tmp_path, [record(1), record(2, status="error")])
    write_segment(tmp_path, [record(2, "now ok", seconds=1)])
    info = cache_info(tmp_path)
    assert info == {
        "folder": str(tmp_path),
        "segments": 2,
        "records": 3,
        "keys": 2,
        "ok": 2,
        "error": 1,
        "bytes": sum(p.stat().st_size for p in tmp_path.glob("seg-*.parquet")),
        "models": ["gpt-4o-mini"],
        "corrupt": [],
    }
    assert cache_info(tmp_path / "missing")["records"] == 0


def test_admin_functions_are_public_api_and_default_to_the_cache_folder(tmp_path: Path) -> None:
    import llmframe

    folder = tmp_path / "cache"  # LLMFRAME_CACHE_DIR, set for every test by conftest
    write_segment(folder, [record(1, "one")])
    write_segment(folder, [record(1, "newer", seconds=1), record(2, status="error")])
    assert llmframe.cache_info() == cache_info(folder)
    assert llmframe.cache_info()["records"] == 3
    compacted = llmframe.compact_cache()
    assert (compacted["records_before"], compacted["segments_after"]) == (3, 1)
    stored = llmframe.read_cache().sort("key").select("key", "status", "answer").rows()
    assert stored == [(key(1), "ok", "newer"), (key(2), "error", None)]
    assert llmframe.clear_cache() == 1
    assert llmframe.read_cache().height == 0 and llmframe.cache_info()["segments"] == 0


# --------------------------------------------------------------------------- readers


EXPECTED_SCHEMA = {
    "key": pl.String,
    "model": pl.String,
    "template_hash": pl.String,
    "answer": pl.String,
    "status": pl.String,
    "error": pl.String,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "cost_usd": pl.Float64,
    "created": pl.Datetime("us", "UTC"),
    "request_id": pl.String,
}


def test_read_cache_schema_is_stable_when_empty(tmp_path: Path) -> None:
    for folder in (tmp_path, tmp_path / "missing"):
        frame = read_cache(folder)
        assert frame.height == 0
        assert dict(frame.schema) == EXPECTED_SCHEMA
    write_segment(tmp_path, [record(1)])
    assert dict(read_cache(tmp_path).schema) == EXPECTED_SCHEMA


def test_read_cache_defaults_to_the_default_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMFRAME_CACHE_DIR", str(tmp_path))
    write_segment(tmp_path, [record(1, "here")])
    assert read_cache()["answer"].to_list() == ["here"]


def test_pandas_polars_and_duckdb_read_the_folder(tmp_path: Path) -> None:
    write_segment(tmp_path, [record(1, "one"), record(2, status="error")])
    write_segment(tmp_path, [record(3, "three")])
    (tmp_path / ".tmp-seg-1-1-00000000.parquet.part").write_bytes(b"half written")

    frame = pd.read_parquet(tmp_path)
    assert sorted(frame["key"]) == [key(1), key(2), key(3)]
    assert list(frame.columns) == SCHEMA.names
    assert str(frame["created"].dtype) == "datetime64[us, UTC]"
    assert frame["prompt_tokens"].dtype == "int64"

    polars_frame = pl.read_parquet(tmp_path / "*.parquet")
    assert polars_frame.height == 3 and dict(polars_frame.schema) == EXPECTED_SCHEMA

    duckdb = pytest.importorskip("duckdb")
    answers = duckdb.sql(
        f"select answer from read_parquet('{tmp_path.as_posix()}/*.parquet') "
        "where status = 'ok' order by key"
    ).fetchall()
    assert answers == [("one",), ("three",)]


# --------------------------------------------------------------------------- folders


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMFRAME_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.setenv("LLMFRAME_CACHE_DIR", "~/llm-cache")
    assert default_cache_dir() == Path.home() / "llm-cache"
    monkeypatch.delenv("LLMFRAME_CACHE_DIR")
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert default_cache_dir() == tmp_path / "xdg" / "llmframe"
        monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
        assert default_cache_dir() == Path.home() / ".cache" / "llmframe"
        monkeypatch.delenv("XDG_CACHE_HOME")
        assert default_cache_dir() == Path.home() / ".cache" / "llmframe"


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("darwin", Path.home() / "Library" / "Caches" / "llmframe"),
        ("win32", Path("C:/Users/me/AppData/Local") / "llmframe" / "Cache"),
    ],
)
def test_default_cache_dir_per_platform(
    monkeypatch: pytest.MonkeyPatch, platform: str, expected: Path
) -> None:
    monkeypatch.delenv("LLMFRAME_CACHE_DIR", raising=False)
    monkeypatch.setenv("LOCALAPPDATA", "C:/Users/me/AppData/Local")
    monkeypatch.setattr(_cache_admin.sys, "platform", platform)
    assert default_cache_dir() == expected


def test_resolve_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMFRAME_CACHE_DIR", str(tmp_path))
    assert resolve_cache_dir(True) == tmp_path
    assert resolve_cache_dir(False) is None
    assert resolve_cache_dir(str(tmp_path / "a")) == tmp_path / "a"
    assert resolve_cache_dir(tmp_path / "b") == tmp_path / "b"
    with pytest.raises(ConfigError):
        resolve_cache_dir("")
    with pytest.raises(ConfigError):
        resolve_cache_dir(3)  # type: ignore[arg-type]


def test_cache_folder_is_created_and_must_be_a_folder(tmp_path: Path) -> None:
    AnswerCache(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(CacheError, match="file"):
        AnswerCache(tmp_path / "file")


# --------------------------------------------------------------------------- speed


def test_lookup_speed_smoke(tmp_path: Path) -> None:
    n = 200_000
    keys = [f"{random.getrandbits(128):032x}" for _ in range(n)]
    with AnswerCache(tmp_path) as cache:
        cache.add_columns(
            {
                "key": keys,
                "model": ["gpt-4o-mini"] * n,
                "template_hash": ["t" * 32] * n,
                "status": ["ok"] * n,
                "answer": [f"answer{i % 1000:04d}" for i in range(n)],
            }
        )
    wanted = keys[::-1]
    wanted[::4] = [f"{random.getrandbits(128):032x}" for _ in wanted[::4]]  # a quarter are misses
    started = time.perf_counter()
    answers = AnswerCache(tmp_path).lookup(wanted)
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0, f"lookup of {n} keys took {elapsed:.2f} s"
    assert answers[1] == f"answer{(n - 2) % 1000:04d}" and answers[0] is None
    assert sum(a is not None for a in answers) == n - len(wanted[::4])


# --------------------------------------------------------------------------- cached re-runs


def eager_rendering(df: Any, fields: list[str]) -> dict[str, list[str | None]]:
    """How every row was rendered before columns were rendered a slice at a time."""
    out: dict[str, list[str | None]] = {}
    for f in fields:
        if isinstance(df, pd.DataFrame):
            nulls = df[f].isna().tolist()
            out[f] = [None if n else (v if type(v) is str else str(v))
                      for v, n in zip(df[f].tolist(), nulls, strict=True)]  # fmt: skip
        else:
            series = df.get_column(f)
            if series.dtype.is_float():
                series = series.fill_nan(None)
            out[f] = [None if v is None else str(v) for v in series.to_list()]
    return out


def mixed_frame(backend: str) -> Any:
    data: dict[str, Any] = {
        "text": ["a", None, "c", "a", "é🙂", None, "g", "é🙂"],
        "real": [1.5, None, float("nan"), 1.5, 1.5, 3.0, 0.1, 1.5],
        "whole": [1, 2, 3, 1, 1, 6, 7, 1],
    }
    if backend == "polars":
        return pl.DataFrame(data)
    frame = pd.DataFrame(data)
    frame["nullable"] = pd.array([1, None, 3, 1, 1, 6, 7, 1], dtype="Int64")
    frame["mixed"] = pd.Series([1, "x", None, 1, True, float("nan"), pd.NaT, 2.5], dtype=object)
    frame["when"] = pd.to_datetime(["2024-01-01", None, "2024-01-03", "2024-01-01",
                                    "2024-01-01", "2024-01-06", "2024-01-07", "2024-01-08"])  # fmt: skip
    return frame


def test_columns_render_a_slice_at_a_time_as_they_rendered_whole(backend: str) -> None:
    from llmframe._frames import rendered_columns

    df = mixed_frame(backend)
    fields = [str(c) for c in df.columns]
    expected = eager_rendering(df, fields)
    for f, column_ in rendered_columns(df, fields).items():
        want = expected[f]
        assert len(column_) == len(want)
        assert column_[:] == list(column_) == [column_[i] for i in range(len(want))] == want
        assert column_[2:5] == want[2:5] and column_[5:2] == [] and column_[::-2] == want[::-2]
        assert column_[-1] == want[-1] and column_.count(None) == want.count(None)
        with pytest.raises(IndexError):
            column_[len(want)]


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 100_000])
def test_a_rerun_keyed_a_slice_at_a_time_finds_what_it_found_whole(
    tmp_path: Path, backend: str, chunk_rows: int
) -> None:
    from llmframe import _engine
    from llmframe._config import resolve
    from llmframe._frames import rendered_columns
    from llmframe._keys import call_prefix, row_digests, row_keys
    from llmframe._template import parse_template

    df = mixed_frame(backend)
    template = parse_template("{text} costs {real}, {whole} times", [str(c) for c in df.columns])
    opts = resolve(model="gpt-4o-mini", cache=str(tmp_path / "c"), progress=False)
    eager = eager_rendering(df, list(template.fields))
    prefix = call_prefix(model="gpt-4o-mini", template=template.text, system=None, params=None)
    keys = row_keys(prefix, [eager[f] for f in template.fields])
    digests, nulls = row_digests(prefix, [eager[f] for f in template.fields])
    assert [None if k is None else bytes.fromhex(k) for k in keys] == [
        None if r in nulls else digests[16 * r : 16 * r + 16] for r in range(len(keys))
    ]
    assert keys[3] == keys[0] and keys[7] == keys[4] != keys[0]
    assert keys[1] is keys[2] is keys[5] is None
    # Rows 0 and 3 (one key) are cached; so is the all-zero key null rows stand in for.
    with AnswerCache(tmp_path / "c") as cache:
        cache.add_columns(
            {"key": [keys[0], "0" * 32], "model": ["m"] * 2, "template_hash": ["t"] * 2,
             "status": ["ok"] * 2, "answer": ["zero", "never served"]}
        )  # fmt: skip
    for _ in range(2):  # the second run sees the same folder afresh
        prepared = _engine.prepare(
            rendered_columns(df, template.fields), len(df), template, opts, chunk_rows=chunk_rows
        )
        assert prepared.cache is not None
        prepared.cache.close()
        assert prepared.answers == ["zero", None, None, "zero", None, None, None, None]
        assert [(job.key, job.values, job.rows) for job in prepared.todo] == [
            (keys[rows[0]], {f: eager[f][rows[0]] for f in template.fields}, rows)
            for rows in ([4, 7], [6])
        ]
        report = prepared.report
        assert (report.cached_rows, report.null_rows, report.duplicate_rows) == (2, 3, 1)


def test_a_fully_cached_rerun_builds_no_client_and_no_tokenizer(
    fake_server: Any, make_frame: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import llmframe
    from llmframe import _engine

    options: dict[str, Any] = {
        "model": "gpt-4o-mini", "base_url": fake_server.base_url, "api_key": fake_server.api_key,
        "progress": False, "cache": str(tmp_path / "c"),
    }  # fmt: skip
    df = make_frame({"review": ["good", "bad", None, "good"]})
    first = df.llm.apply("Sentiment of: {review}", **options)
    requests = fake_server.stats.requests

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("built although no row was left to send")

    monkeypatch.setattr(_engine, "ChatClient", refuse)
    monkeypatch.setattr(_engine, "get_tokenizer", refuse)
    again = df.llm.apply("Sentiment of: {review}", **options)
    assert fake_server.stats.requests == requests
    if isinstance(df, pd.DataFrame):
        pd.testing.assert_frame_equal(again, first)
    else:
        assert again.equals(first) and again.schema == first.schema
    report = llmframe.last_report()
    assert report is not None and report.rows == 4 and report.requests == 0
    assert (report.cached_rows, report.null_rows, report.batch_size_final) == (3, 1, 20)
