"""The answer log: appended per reply, read by every process, torn tails, folds, orphans."""

from __future__ import annotations

import os
import random
import subprocess
import warnings
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from _cache_helpers import child_command, key, record, run_child, segments

from llmframe import _cache_log
from llmframe._cache import AnswerCache
from llmframe._cache_admin import cache_info, clear_cache, compact_cache, read_cache
from llmframe._cache_log import (
    LOG_NAME,
    LOGS_SUPPORTED,
    AnswerLog,
    fold_orphans,
    list_logs,
    log_is_live,
    parse_log,
    read_log,
)
from llmframe._cache_reader import CacheReader
from llmframe._cache_schema import SCHEMA, records_to_table
from llmframe._cache_segments import SEGMENT_NAME
from llmframe._errors import CacheError


def logs(folder: Path) -> list[str]:
    return sorted(list_logs(folder))


def table(*numbers: int, answer: str = "yes") -> pa.Table:
    return records_to_table([record(n, f"{answer} {n}") for n in numbers])


def answers(folder: Path, numbers: range) -> list[str | None]:
    return CacheReader(folder).lookup([key(n) for n in numbers])


def test_append_then_read_whole_records(tmp_path: Path) -> None:
    log = AnswerLog.create(tmp_path)
    assert LOG_NAME.fullmatch(log.name) and log.name.startswith(f".log-{os.getpid()}-")
    assert not SEGMENT_NAME.fullmatch(log.name) and not log.name.endswith(".parquet")
    assert logs(tmp_path) == [log.name] and not list(tmp_path.glob(".tmp-*"))
    read = read_log(log.path)
    assert read is not None and read.records.num_rows == 0 and read.torn_bytes == 0
    log.append(table(1, 2))
    log.append(table(3))
    log.append(SCHEMA.empty_table())  # nothing to write
    read = read_log(log.path)
    assert read is not None and read.torn_bytes == 0
    assert read.records.equals(pa.concat_tables([table(1, 2), table(3)]))
    assert read.records.schema.equals(SCHEMA)
    assert log.size == log.path.stat().st_size
    # Every reader of the segments passes the log by.
    with AnswerCache(tmp_path, log_answers=False) as cache:
        cache.add([record(9, "in a segment")])
    assert pd.read_parquet(tmp_path)["answer"].tolist() == ["in a segment"]
    assert pl.read_parquet(tmp_path / "*.parquet")["answer"].to_list() == ["in a segment"]
    assert [p.name for p in tmp_path.glob("*.parquet")] == segments(tmp_path)
    assert log_is_live(log.path)
    log.discard()
    assert logs(tmp_path) == [] and read_log(log.path) is None


def test_a_torn_last_record_is_skipped_at_every_byte(tmp_path: Path) -> None:
    log = AnswerLog.create(tmp_path)
    log.append(table(1, 2))
    log.append(table(3))
    whole = log.size
    log.append(table(4, 5, answer="torn"))
    data = log.path.read_bytes()
    log.close()
    kept = pa.concat_tables([table(1, 2), table(3)])
    for cut in range(whole, len(data)):
        read = parse_log(data[:cut])
        assert read.records.equals(kept), cut
        assert read.torn_bytes == cut - whole
    # A log cut inside its schema holds nothing, and says how much it skipped.
    for cut in range(0, whole, 7):
        read = parse_log(data[:cut])
        assert read.records.num_rows <= 2 and read.torn_bytes == cut - _whole_prefix(data, cut)
    assert parse_log(b"not an arrow stream at all").torn_bytes == 26
    assert parse_log(data).records.num_rows == 5


def _whole_prefix(data: bytes, cut: int) -> int:
    """The bytes of whole messages in ``data[:cut]``, found by reading message by message."""
    stream = pa.BufferReader(pa.py_buffer(data[:cut]))
    good = 0
    try:
        while True:
            pa.ipc.read_message(stream)
            good = stream.tell()
    except Exception:  # EOF or a torn message
        return good


def test_an_orphan_with_a_torn_tail_is_folded_with_one_warning(tmp_path: Path) -> None:
    log = AnswerLog.create(tmp_path)
    log.append(table(1, 2))
    whole = log.size
    log.append(table(3, 4))
    data = log.path.read_bytes()
    log.close()  # the lock goes as it would with the process: an orphan
    for cut in random.Random(3).sample(range(whole + 1, len(data)), 12):
        folder = tmp_path / f"cut-{cut}"
        folder.mkdir()
        (folder / log.name).write_bytes(data[:cut])
        with pytest.warns(RuntimeWarning, match=f"incomplete record \\({cut - whole} bytes") as seen:
            AnswerCache(folder).close()
        assert len([w for w in seen if "llmframe cache" in str(w.message)]) == 1
        assert logs(folder) == [] and len(segments(folder)) == 1
        assert answers(folder, range(1, 5)) == ["yes 1", "yes 2", None, None]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the log is gone: never warned about again
            AnswerCache(folder).close()
            assert read_cache(folder).height == 2


def test_flush_folds_the_log_and_later_adds_start_a_new_one(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path)
    assert logs(tmp_path) == []  # a cache that only looks up writes nothing
    cache.add([record(1, "a")])
    cache.add([record(2, "b"), record(3, "c")])
    [first] = logs(tmp_path)
    read = read_log(tmp_path / first)
    assert read is not None and read.records.num_rows == 3  # one message per add
    assert segments(tmp_path) == []
    cache.flush()
    assert logs(tmp_path) == [] and len(segments(tmp_path)) == 1
    cache.add([record(4, "d")])
    [second] = logs(tmp_path)
    assert second != first
    assert cache.lookup([key(n) for n in range(1, 5)]) == ["a", "b", "c", "d"]
    cache.close()
    assert logs(tmp_path) == [] and len(segments(tmp_path)) == 2
    assert answers(tmp_path, range(1, 5)) == ["a", "b", "c", "d"]


def test_log_answers_false_keeps_records_in_memory_only(tmp_path: Path) -> None:
    with AnswerCache(tmp_path, log_answers=False) as cache:
        cache.add([record(1, "a")])
        assert logs(tmp_path) == [] and cache.lookup([key(1)]) == ["a"]
    assert answers(tmp_path, range(1, 2)) == ["a"]


KILLED = """
    import os, sys
    from datetime import datetime, timezone
    from llmframe._cache import AnswerCache, CacheRecord

    cache = AnswerCache(sys.argv[1])
    for n in range(int(sys.argv[2])):
        cache.add([CacheRecord(f"{n:032x}", "m", "t", f"answer {n}", "ok", None, 1, 1, None,
                               datetime.now(timezone.utc), None)])
    if sys.argv[3] == "wait":
        print("ready", flush=True)
        sys.stdin.readline()
    os._exit(9)  # no close, no flush: as kill -9 leaves it
"""


def test_orphaned_logs_are_folded_when_a_cache_opens(tmp_path: Path) -> None:
    done = run_child(KILLED, str(tmp_path), "30", "exit", check=False)
    assert done.returncode == 9, done.stderr
    [orphan] = logs(tmp_path)
    assert segments(tmp_path) == [] and not log_is_live(tmp_path / orphan)
    info = cache_info(tmp_path)
    assert (info["records"], info["logs"], info["orphaned_logs"]) == (30, 1, 1)
    # Found before anyone folds it, by a reader that never writes...
    assert answers(tmp_path, range(30)) == [f"answer {n}" for n in range(30)]
    assert logs(tmp_path) == [orphan]
    # ...and folded into a segment by the next cache that opens the folder.
    cache = AnswerCache(tmp_path)
    assert logs(tmp_path) == [] and len(segments(tmp_path)) == 1
    assert cache.lookup([key(n) for n in range(30)]) == [f"answer {n}" for n in range(30)]
    cache.close()


def test_a_live_writers_log_is_read_but_never_folded(tmp_path: Path) -> None:
    command, env = child_command(KILLED, str(tmp_path), "12", "wait")
    child = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        [live] = logs(tmp_path)
        assert log_is_live(tmp_path / live)
        with AnswerCache(tmp_path) as cache:  # another writer: sees the records, folds nothing
            assert cache.lookup([key(n) for n in range(12)]) == [f"answer {n}" for n in range(12)]
            cache.add([record(100, "mine")])
        assert logs(tmp_path) == [live] and len(segments(tmp_path)) == 1
        assert compact_cache(tmp_path)["logs_folded"] == 0 and clear_cache(tmp_path) == 1
        assert logs(tmp_path) == [live] and cache_info(tmp_path)["orphaned_logs"] == 0
    finally:
        assert child.stdin is not None
        child.stdin.write(b"\n")
        child.stdin.close()
        child.wait(timeout=30)
    assert compact_cache(tmp_path)["logs_folded"] == 1  # its writer is gone now
    assert logs(tmp_path) == [] and answers(tmp_path, range(12)) == [f"answer {n}" for n in range(12)]


def test_liveness_is_the_lock_not_the_pid(tmp_path: Path) -> None:
    """A log named with a live pid (this one: a pid reused by another program) but not
    locked by anyone is an orphan."""
    log = AnswerLog.create(tmp_path)
    log.append(table(1))
    log.close()
    assert str(os.getpid()) in log.name and not log_is_live(log.path)
    assert fold_orphans(tmp_path) == 1
    assert logs(tmp_path) == [] and answers(tmp_path, range(1, 2)) == ["yes 1"]


def test_two_writers_in_one_folder_see_each_others_answers(tmp_path: Path) -> None:
    one, two = AnswerCache(tmp_path), AnswerCache(tmp_path)
    one.add([record(1, "from one")])
    two.add([record(2, "from two")])
    assert len(logs(tmp_path)) == 2
    assert one.lookup([key(1), key(2)]) == two.lookup([key(1), key(2)]) == ["from one", "from two"]
    assert fold_orphans(tmp_path) == 0  # both alive, in this very process
    one.close()
    assert two.lookup([key(1), key(2)]) == ["from one", "from two"]
    two.close()
    assert logs(tmp_path) == [] and len(segments(tmp_path)) == 2
    frame = read_cache(tmp_path).sort("key")
    assert frame.get_column("answer").to_list() == ["from one", "from two"]


def test_a_crash_between_segment_and_log_delete_leaves_duplicates_not_losses(tmp_path: Path) -> None:
    crash = """
        import os, sys
        from datetime import datetime, timezone
        from llmframe import _cache_log
        from llmframe._cache import AnswerCache, CacheRecord

        cache = AnswerCache(sys.argv[1])
        cache.add([CacheRecord("0" * 32, "m", "t", "once", "ok", None, 1, 1, None,
                               datetime.now(timezone.utc), None)])
        _cache_log.AnswerLog.discard = lambda self: os._exit(17)  # dies after the segment
        cache.flush()
    """
    done = run_child(crash, str(tmp_path), check=False)
    assert done.returncode == 17, done.stderr
    assert len(segments(tmp_path)) == 1 and len(logs(tmp_path)) == 1
    assert read_cache(tmp_path).height == 2  # the same record in the segment and the log
    AnswerCache(tmp_path).close()
    assert len(segments(tmp_path)) == 2 and logs(tmp_path) == []
    assert CacheReader(tmp_path).lookup(["0" * 32]) == ["once"]
    assert compact_cache(tmp_path)["records_after"] == 1


def test_a_failed_log_write_keeps_the_records_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = AnswerCache(tmp_path)
    cache.add([record(1, "logged")])
    [log] = logs(tmp_path)
    size = (tmp_path / log).stat().st_size
    real_write = os.write

    def half_then_full(fd: int, data: bytes | memoryview) -> int:
        if len(data) > 100:  # part of the message reaches the file, then the disk is full
            real_write(fd, bytes(data[:100]))
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(_cache_log.os, "write", half_then_full)
    with pytest.warns(RuntimeWarning, match="No space left on device") as seen:
        cache.add([record(2, "in memory")])
        cache.add([record(3, "in memory too")])  # no second warning, no new log
    assert len(seen) == 1
    assert (tmp_path / log).stat().st_size == size  # cut back to its last whole record
    assert logs(tmp_path) == [log]
    assert cache.lookup([key(1), key(2), key(3)]) == ["logged", "in memory", "in memory too"]
    monkeypatch.undo()
    cache.flush()  # the folder takes writes again: so does the log
    cache.add([record(4, "logged again")])
    assert len(logs(tmp_path)) == 1
    cache.close()
    assert answers(tmp_path, range(1, 5)) == ["logged", "in memory", "in memory too", "logged again"]


def test_read_cache_and_info_count_log_records(tmp_path: Path) -> None:
    with AnswerCache(tmp_path) as done:
        done.add([record(1, "in a segment")])
    cache = AnswerCache(tmp_path)
    cache.add([record(2, "in a log"), record(3, status="error")])
    frame = read_cache(tmp_path)
    assert frame.schema == pl.Schema(read_cache(tmp_path / "missing").schema)
    assert sorted(frame.get_column("key").to_list()) == [key(1), key(2), key(3)]
    info = cache_info(tmp_path)
    assert (info["records"], info["ok"], info["error"], info["logs"]) == (3, 2, 1, 1)
    assert info["log_bytes"] == sum(list_logs(tmp_path).values()) > 0
    assert info["orphaned_logs"] == 0
    cache.close()


@pytest.mark.skipif(not LOGS_SUPPORTED, reason="needs flock")
def test_a_close_whose_flush_fails_lets_go_of_its_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk at close: the error is raised, and the logs are released (not deleted),
    so the next cache to open the folder, in this process too, folds them."""
    import llmframe._cache_segments as cache_module

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    real = cache_module.write_segment
    monkeypatch.setattr(cache_module, "write_segment", full_disk)
    for n in range(2):
        cache = AnswerCache(tmp_path, flush_seconds=1e9)
        cache.add([record(n)])
        with pytest.raises(CacheError, match="No space left"):
            cache.close()
        cache.close()  # closed for good: a second close does nothing
    monkeypatch.setattr(cache_module, "write_segment", real)
    with AnswerCache(tmp_path) as again:  # folds both orphans on open
        assert again.lookup([key(0), key(1)]) == ["yes", "yes"]
    assert not list_logs(tmp_path)
