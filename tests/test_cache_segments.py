"""The segment store: names, atomic writes, several processes, corrupt files, compaction."""

from __future__ import annotations

import os
import random
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest
from _cache_helpers import (
    EXPECTED_SCHEMA,
    child_command,
    key,
    leftovers,
    record,
    run_child,
    segments,
    write_segment,
)

from llmframe import _cache_index, _cache_segments
from llmframe._cache import AnswerCache
from llmframe._cache_admin import cache_info, compact_cache, read_cache
from llmframe._cache_reader import CacheReader
from llmframe._cache_schema import SCHEMA
from llmframe._cache_segments import AUTO_COMPACT_SEGMENTS
from llmframe._errors import CacheError

# --------------------------------------------------------------------------- files and atomic writes


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
    # No segment, no temp file: only the answer log, which still holds the record.
    assert [p.name for p in tmp_path.iterdir()] == [p.name for p in tmp_path.glob(".log-*")]
    assert len(list(tmp_path.iterdir())) == 1
    assert CacheReader(tmp_path).lookup([key(1)]) == ["survives"]
    monkeypatch.undo()
    cache.close()  # the records were kept for the next attempt
    assert AnswerCache(tmp_path).lookup([key(1)]) == ["survives"]


def test_crash_between_write_and_rename_leaves_no_visible_segment(tmp_path: Path) -> None:
    crash = """
        import os, sys
        from datetime import datetime, timezone
        from llmframe._cache import AnswerCache, CacheRecord

        def die(src, dst):
            os._exit(17)  # the process dies between writing the temp file and renaming it

        cache = AnswerCache(sys.argv[1])
        cache.add([CacheRecord("0" * 32, "m", "t", "kept", "ok", None, 1, 1, None,
                               datetime.now(timezone.utc), None)])
        os.replace = die
        cache.flush()
    """
    done = run_child(crash, str(tmp_path), check=False)
    assert done.returncode == 17, done.stderr
    assert segments(tmp_path) == []
    assert len(leftovers(tmp_path)) == 1  # what a real crash leaves: invisible to readers
    # The record is in the dead process's answer log, which every lookup reads.
    assert read_cache(tmp_path).get_column("answer").to_list() == ["kept"]
    assert CacheReader(tmp_path).lookup(["0" * 32]) == ["kept"]
    assert pd.read_parquet(tmp_path).empty  # pandas and polars pass the log and temp file by

    with AnswerCache(tmp_path) as cache:  # opening folds the orphaned log into a segment
        assert len(segments(tmp_path)) == 1 and not list(tmp_path.glob(".log-*"))
        assert cache.lookup(["0" * 32]) == ["kept"]
        cache.add([record(1, "after the crash")])
    assert sorted(pd.read_parquet(tmp_path)["answer"].tolist()) == ["after the crash", "kept"]
    assert sorted(pl.read_parquet(tmp_path / "*.parquet")["answer"].to_list()) == [
        "after the crash", "kept",
    ]  # fmt: skip


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


# --------------------------------------------------------------------------- processes


WRITER = """
    import sys
    from datetime import datetime, timedelta, timezone
    from llmframe._cache import AnswerCache, CacheRecord

    folder, who, keys, per_flush = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print("ready", flush=True)
    sys.stdin.readline()  # blocks until the parent says go
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
    children = []
    for who in ("a", "b"):
        command, env = child_command(WRITER, str(folder), who, str(keys), str(per_flush))
        children.append(
            subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        )  # fmt: skip
    for child in children:
        # Blocks until the child has imported llmframe; empty if it died first.
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
    for child in children:  # both start writing at the same moment
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
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


def test_auto_compaction_plan_spares_the_big_segment() -> None:
    small = {f"seg-{i}": 10 for i in range(AUTO_COMPACT_SEGMENTS)}
    assert _cache_segments.auto_compact_plan(small) == []
    big = {"seg-0": 10_000, **{f"seg-{i}": 10 for i in range(1, AUTO_COMPACT_SEGMENTS + 1)}}
    assert sorted(_cache_segments.auto_compact_plan(big)) == sorted(set(big) - {"seg-0"})
    even = {f"seg-{i}": 10 for i in range(AUTO_COMPACT_SEGMENTS + 1)}
    assert sorted(_cache_segments.auto_compact_plan(even)) == sorted(even)


def test_auto_compaction_leaves_segments_past_the_size_cap_alone() -> None:
    cap = _cache_segments.AUTO_COMPACT_MAX_BYTES
    # Three big segments and 64 small ones: the big ones are neither merged nor counted.
    frozen = {f"seg-big-{i}": cap + i for i in range(3)}
    small = {f"seg-{i}": 1_000 + i for i in range(AUTO_COMPACT_SEGMENTS)}
    assert _cache_segments.auto_compact_plan({**frozen, **small}) == []
    small[f"seg-{AUTO_COMPACT_SEGMENTS}"] = cap - 1  # one more, just under the cap: the small ones merge
    plan = _cache_segments.auto_compact_plan({**frozen, **small})
    assert plan and not set(plan) & set(frozen)


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


def test_one_automatic_compaction_reads_a_bounded_total() -> None:
    # A long run's flushes: more segments than the trigger, ~150 kB each, under the per-segment cap.
    over = _cache_segments.AUTO_COMPACT_SEGMENTS + 36
    sizes = {f"seg-{i:03d}": 150_000 + i for i in range(over)}
    plan = _cache_segments.auto_compact_plan(sizes)
    assert len(plan) >= 2
    assert sum(sizes[name] for name in plan) <= _cache_segments.AUTO_COMPACT_MERGE_BYTES
    assert plan == sorted(sizes, key=sizes.__getitem__)[: len(plan)]  # the smallest first
    # Two segments are merged even when together they pass the budget: the count goes down.
    near = {f"seg-{i:03d}": _cache_segments.AUTO_COMPACT_MAX_BYTES - 1 - i for i in range(over)}
    assert len(_cache_segments.auto_compact_plan(near)) == 2
