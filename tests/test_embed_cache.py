"""The embedding cache keeps the answer cache's promises: vectors durable on arrival (a log per
process, folded at flush, close and the next open), compaction, and the admin tools."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import llmframe
from llmframe import _embed_cache, _embed_segments
from llmframe._cache_log import list_logs, log_is_live
from llmframe._cache_segments import AUTO_COMPACT_SEGMENTS
from llmframe._embed_cache import FOLDER, EmbeddingCache, lookup_vectors
from llmframe._embed_segments import compact_vectors, list_segments


def keys_of(numbers: range | list[int]) -> bytes:
    return b"".join(n.to_bytes(8, "little") + (n * 7919 + 1).to_bytes(8, "little") for n in numbers)


def vectors_of(numbers: range | list[int], dims: int = 4) -> np.ndarray:
    return np.array([[n + d / 10 for d in range(dims)] for n in numbers], dtype=np.float32)


def segments(cache_dir: Path) -> list[str]:
    return list(list_segments(cache_dir / FOLDER))


def logs(cache_dir: Path) -> list[str]:
    return list(list_logs(cache_dir / FOLDER))


def test_each_add_is_in_the_log_before_any_segment_and_folded_at_flush(tmp_path: Path) -> None:
    clock = [0.0]
    cache = EmbeddingCache(tmp_path, clock=lambda: clock[0])
    cache.add(keys_of(range(3)), "m", vectors_of(range(3)))
    cache.add(keys_of(range(3, 5)), "m", vectors_of(range(3, 5)))
    assert segments(tmp_path) == [] and len(logs(tmp_path)) == 1
    log = tmp_path / FOLDER / logs(tmp_path)[0]
    assert log_is_live(log)  # locked by its writer
    # Another reader (a process of its own would see the same) finds the logged vectors.
    found = lookup_vectors(tmp_path, keys_of([4, 99, 0]))
    assert found.positions.tolist()[1] == -1
    assert np.array_equal(found.vectors[found.positions[[0, 2]]], vectors_of([4, 0]))
    assert llmframe.read_embeddings(tmp_path).num_rows == 5
    # The writer itself finds its buffer and does not read its own log twice.
    assert cache.lookup(keys_of(range(5))).hits == 5
    clock[0] = 2.5
    cache.add(keys_of([5]), "m", vectors_of([5]))  # due: one segment, the log deleted
    assert len(segments(tmp_path)) == 1 and logs(tmp_path) == []
    cache.add(keys_of([6]), "m", vectors_of([6]))  # a new log for what comes next
    assert len(logs(tmp_path)) == 1
    cache.close()
    assert logs(tmp_path) == [] and len(segments(tmp_path)) == 2
    assert lookup_vectors(tmp_path, keys_of(range(7))).hits == 7


def test_a_log_holds_one_length_and_a_new_length_starts_another(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    cache.add(keys_of([1]), "m", vectors_of([1], 4))
    cache.add(keys_of([2]), "m", vectors_of([2], 6))
    assert len(logs(tmp_path)) == 2
    assert lookup_vectors(tmp_path, keys_of([1]), dims=4).hits == 1
    assert lookup_vectors(tmp_path, keys_of([2]), dims=6).hits == 1
    cache.close()
    assert logs(tmp_path) == [] and len(segments(tmp_path)) == 2


def _die(cache: EmbeddingCache) -> None:
    """What a kill leaves: the log on disk, its lock gone, nothing flushed."""
    for log in [*cache._retired, cache._log]:
        if log is not None:
            log.close()


def test_an_orphaned_log_is_folded_on_open_and_a_torn_tail_is_skipped(tmp_path: Path) -> None:
    dead = EmbeddingCache(tmp_path)
    dead.add(keys_of(range(4)), "m", vectors_of(range(4)))
    dead.add(keys_of(range(4, 6)), "m", vectors_of(range(4, 6)))
    _die(dead)
    (orphan,) = logs(tmp_path)
    with open(tmp_path / FOLDER / orphan, "ab") as f:
        f.write(b"\xff\xff\xff\xff\x40\x01\x00\x00partial")  # a write cut short by the kill
    assert not log_is_live(tmp_path / FOLDER / orphan)
    assert lookup_vectors(tmp_path, keys_of(range(6))).hits == 6  # read as it is, before any fold
    with pytest.warns(RuntimeWarning, match="incomplete record"):
        EmbeddingCache(tmp_path)
    assert logs(tmp_path) == [] and len(segments(tmp_path)) == 1
    found = lookup_vectors(tmp_path, keys_of(range(6)))
    assert found.hits == 6 and found.aligned is not None  # one run of one segment: slices
    assert np.array_equal(np.asarray(found.aligned.combine_chunks().flatten()).reshape(6, 4), vectors_of(range(6)))


def test_a_live_writers_log_is_left_to_it(tmp_path: Path) -> None:
    live = EmbeddingCache(tmp_path)
    live.add(keys_of([1]), "m", vectors_of([1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EmbeddingCache(tmp_path)  # opening folds orphans only
    assert len(logs(tmp_path)) == 1 and segments(tmp_path) == []
    live.close()
    assert logs(tmp_path) == []


def test_a_long_run_compacts_its_segments_and_a_rerun_still_slices_them(tmp_path: Path) -> None:
    clock = [0.0]
    cache = EmbeddingCache(tmp_path, clock=lambda: clock[0])
    n = AUTO_COMPACT_SEGMENTS + 6
    for i in range(n):  # one reply and one 2-second flush each, as a long run writes
        clock[0] += 2.0
        cache.add(keys_of(range(10 * i, 10 * i + 10)), "m", vectors_of(range(10 * i, 10 * i + 10)))
    cache.close()
    assert len(segments(tmp_path)) < AUTO_COMPACT_SEGMENTS
    found = lookup_vectors(tmp_path, keys_of(range(10 * n)))
    assert found.hits == 10 * n and found.aligned is not None and found.aligned.num_chunks <= 8
    matrix = np.asarray(found.aligned.combine_chunks().flatten()).reshape(-1, 4)
    assert np.array_equal(matrix, vectors_of(range(10 * n)))


def test_compaction_keeps_one_vector_per_key_in_row_order_and_one_segment_per_length(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    for part in ([0, 1, 2], [2, 3], [4, 5]):
        cache.add(keys_of(part), "m", vectors_of(part))
        cache.flush()
    cache.add(keys_of([9]), "m", vectors_of([9], 6))
    cache.close()
    folder = tmp_path / FOLDER
    done = compact_vectors(folder, segments(tmp_path))
    assert (done.records_read, done.records_written, len(segments(tmp_path))) == (8, 7, 2)
    four = llmframe.read_embeddings(tmp_path, dims=4)
    assert np.array_equal(np.asarray(four.column("vector").combine_chunks().flatten()).reshape(-1, 4),
                          vectors_of(range(6)))  # fmt: skip
    assert llmframe.read_embeddings(tmp_path, dims=6).num_rows == 1


def test_a_segment_compacted_away_while_a_lookup_lists_them_is_found_in_the_merged_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = EmbeddingCache(tmp_path)
    for part in ([0, 1], [2, 3]):
        cache.add(keys_of(part), "m", vectors_of(part))
        cache.flush()
    folder = tmp_path / FOLDER
    real = _embed_segments.read_segment
    compacted: list[bool] = []

    def read_then_compact(folder_: Path, name: str, columns: list[str] | None = None) -> pa.Table | None:
        if not compacted:  # another process compacts between this lookup's listing and its reads
            compacted.append(True)
            compact_vectors(folder, segments(tmp_path))
        return real(folder_, name, columns)

    monkeypatch.setattr(_embed_segments, "read_segment", read_then_compact)
    assert lookup_vectors(tmp_path, keys_of(range(4))).hits == 4 and len(segments(tmp_path)) == 1


def test_admin_tools_count_clear_and_compact_the_embeddings(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    for part in ([0, 1, 2], [2, 3]):
        cache.add(keys_of(part), "text-embedding-3-small", vectors_of(part))
        cache.flush()
    dead = EmbeddingCache(tmp_path)
    dead.add(keys_of([7, 8]), "text-embedding-3-small", vectors_of([7, 8]))
    _die(dead)
    info = llmframe.cache_info(tmp_path)
    assert (info["embedding_segments"], info["embedding_records"], info["embedding_keys"]) == (2, 7, 6)
    assert info["embedding_dims"] == [4] and info["embedding_models"] == ["text-embedding-3-small"]
    assert info["embedding_bytes"] == sum(p.stat().st_size for p in (tmp_path / FOLDER).glob("seg-*.arrow"))
    assert (info["embedding_logs"], info["embedding_orphaned_logs"]) == (1, 1) and info["embedding_log_bytes"] > 0
    assert info["records"] == 0  # the answer cache's own counts are apart
    compacted = llmframe.compact_cache(tmp_path)
    assert compacted["embedding_logs_folded"] == 1 and compacted["embedding_segments_before"] == 2
    assert (compacted["embedding_segments_after"], compacted["embedding_records_after"]) == (1, 6)
    assert compacted["embedding_bytes_after"] == sum(p.stat().st_size for p in (tmp_path / FOLDER).glob("seg-*"))
    assert lookup_vectors(tmp_path, keys_of([0, 1, 2, 3, 7, 8])).hits == 6
    live = EmbeddingCache(tmp_path)
    live.add(keys_of([20]), "text-embedding-3-small", vectors_of([20]))
    (tmp_path / FOLDER / "notes.txt").write_text("mine")
    assert llmframe.clear_cache(tmp_path) == 1  # the segment; the live log is its writer's
    assert (tmp_path / FOLDER / "notes.txt").exists() and len(logs(tmp_path)) == 1
    live.close()
    assert llmframe.clear_cache(tmp_path) == 1
    assert llmframe.cache_info(tmp_path)["embedding_records"] == 0 and os.listdir(tmp_path / FOLDER) == ["notes.txt"]


def test_a_close_that_cannot_write_leaves_its_log_for_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = EmbeddingCache(tmp_path)
    cache.add(keys_of(range(3)), "m", vectors_of(range(3)))

    def full_disk(folder: Path, table: pa.Table, *, durable_rename: bool = False) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_embed_cache, "write_vectors", full_disk)
    with pytest.raises(llmframe.CacheError, match="No space left"):
        cache.close()
    (log,) = logs(tmp_path)
    assert not log_is_live(tmp_path / FOLDER / log)  # let go of: an orphan now
    monkeypatch.undo()
    EmbeddingCache(tmp_path)  # the next open folds it
    assert logs(tmp_path) == [] and lookup_vectors(tmp_path, keys_of(range(3))).hits == 3
