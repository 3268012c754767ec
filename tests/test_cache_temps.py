"""What a writer killed mid-write leaves (a temporary segment or log) is removed when a
cache next opens, once it is old enough that no live writer can own it; everything
else in the folder, and a fresh temporary file, is left alone."""

from __future__ import annotations

import os
import time
from pathlib import Path

from _cache_helpers import key, record, run_child, segments

from llmframe._cache import AnswerCache
from llmframe._cache_admin import clear_cache
from llmframe._cache_reader import CacheReader
from llmframe._cache_temps import STALE_TEMPORARY_SECONDS, TEMP_PREFIX, remove_stale_temporaries
from llmframe._embed_cache import FOLDER, EmbeddingCache

#: A child that writes 20 answers to its log, then dies (as ``kill -9`` would) halfway
#: through writing the segment they were being flushed to.
DIES_MID_WRITE = """
    import os, sys
    from datetime import datetime, timezone
    from llmframe import _cache_segments
    from llmframe._cache import AnswerCache, CacheRecord

    def half_then_die(table, sink):
        sink.write(b"PAR1" + b"x" * 4096)
        sink.flush()
        os._exit(9)

    cache = AnswerCache(sys.argv[1])
    cache.add([CacheRecord(f"{n:032x}", "m", "t", f"answer {n}", "ok", None, 1, 1, None,
                           datetime.now(timezone.utc), None) for n in range(20)])
    _cache_segments.write_parquet = half_then_die
    cache.flush()
"""


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX))


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_segment_cut_short_by_a_kill_is_removed_once_stale(tmp_path: Path) -> None:
    done = run_child(DIES_MID_WRITE, str(tmp_path), check=False)
    assert done.returncode == 9, done.stderr
    [temp] = temporaries(tmp_path)
    assert temp.endswith(".parquet.part") and segments(tmp_path) == []
    # Fresh: it could be a live writer's, so the next cache leaves it (and folds the log).
    AnswerCache(tmp_path).close()
    assert temporaries(tmp_path) == [temp] and len(segments(tmp_path)) == 1
    # Stale: removed by the next open; the answers were never in it, they were in the log.
    age(tmp_path / temp, STALE_TEMPORARY_SECONDS + 60)
    AnswerCache(tmp_path).close()
    assert temporaries(tmp_path) == []
    assert CacheReader(tmp_path).lookup([key(n) for n in range(20)]) == [f"answer {n}" for n in range(20)]


def test_only_stale_temporaries_go(tmp_path: Path) -> None:
    names = {
        "stale": ".tmp-seg-1-2-0badc0de.parquet.part",
        "stale_log": ".tmp-.log-1-0badc0de-host.arrows",
        "fresh": ".tmp-seg-3-4-0fedcba9.parquet.part",
        "other": "notes.txt",
        "hidden": ".keep",
        "another_tools": ".tmp-upload-1234.json",  # a folder given as cache= may hold others' files
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".tmp-folder").mkdir()  # not a file: not ours to remove
    for which in ("stale", "stale_log", "other", "hidden", "another_tools"):
        age(tmp_path / names[which], 7 * 24 * 3600)
    assert remove_stale_temporaries(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [names["fresh"], names["other"], names["hidden"], names["another_tools"], ".tmp-folder"]
    )
    # An injected clock: a day later, the fresh one is stale too.
    assert remove_stale_temporaries(tmp_path, now=time.time() + 24 * 3600) == 1
    assert remove_stale_temporaries(tmp_path / "missing") == 0


def test_clear_counts_stale_temporaries_and_keeps_fresh_ones(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path)
    cache.add([record(1, "one")])
    cache.close()
    (tmp_path / ".tmp-seg-1-2-0badc0de.parquet.part").write_bytes(b"x")
    age(tmp_path / ".tmp-seg-1-2-0badc0de.parquet.part", STALE_TEMPORARY_SECONDS + 1)
    (tmp_path / ".tmp-seg-3-4-0fedcba9.parquet.part").write_bytes(b"x")
    assert clear_cache(tmp_path) == 2  # the segment and the stale temporary
    assert temporaries(tmp_path) == [".tmp-seg-3-4-0fedcba9.parquet.part"]


def test_the_embedding_cache_removes_its_stale_temporaries(tmp_path: Path) -> None:
    folder = tmp_path / FOLDER
    folder.mkdir()
    stale = folder / ".tmp-seg-1-2-0badc0de.arrow.part"
    stale.write_bytes(b"x")
    age(stale, STALE_TEMPORARY_SECONDS + 1)
    fresh = folder / ".tmp-seg-3-4-0fedcba9.arrow.part"
    fresh.write_bytes(b"x")
    EmbeddingCache(tmp_path).close()
    assert not stale.exists() and fresh.exists()


def test_a_file_url_cache_removes_its_stale_temporaries(tmp_path: Path) -> None:
    """At a ``file://`` URL a segment is written under a temporary name and renamed (the put
    is not atomic there): what a writer killed between the two left goes once stale."""
    from llmframe._cache_admin import cache_location

    remote = tmp_path / "remote"
    remote.mkdir()
    stale, fresh = (remote / f"{TEMP_PREFIX}seg-{n}-42-0123abcd.parquet.part" for n in (1, 2))
    for path in (stale, fresh):
        path.write_bytes(b"PAR1")
    age(stale, STALE_TEMPORARY_SECONDS + 60)
    cache_location(remote.as_uri() + "/")
    assert temporaries(remote) == [fresh.name]
