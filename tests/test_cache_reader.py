"""CacheReader: lookups that never write, with an index kept up to date or not kept at all."""

from __future__ import annotations

from pathlib import Path

import pytest
from _cache_helpers import (
    folder_state,
    key,
    reads_from_disk,
    record,
    write_segment,
)

from llmframe._cache import AnswerCache
from llmframe._cache_admin import clear_cache
from llmframe._cache_reader import CacheReader
from llmframe._cache_schema import records_to_table


def test_lookups_read_only_new_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_segment(tmp_path, [record(1, "one")])
    reads = reads_from_disk(monkeypatch)
    reader = CacheReader(tmp_path)
    assert reader.lookup([key(1), key(2)]) == ["one", None]
    assert reader.lookup([key(1)]) == ["one"]
    newer = write_segment(tmp_path, [record(2, "two")])  # another process's segment
    assert reader.lookup([key(1), key(2)]) == ["one", "two"]
    assert len(reads) == 2 and reads[1] == [newer.name]


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


def test_unwritten_records_are_found_for_that_lookup_only(tmp_path: Path) -> None:
    write_segment(tmp_path, [record(1, "stored", seconds=5), record(2, "stored")])
    before = folder_state(tmp_path)
    reader = CacheReader(tmp_path)
    unwritten = records_to_table(
        [
            record(1, "older", seconds=1),  # the newest created wins, written or not
            record(2, status="error", seconds=9),  # an error never hides an answer
            record(3, "new"),
        ]
    )
    keys = [key(1), key(2), key(3)]
    assert reader.lookup(keys, unwritten=unwritten) == ["stored", "stored", "new"]
    assert reader.lookup(keys) == ["stored", "stored", None]  # not folded into the kept index
    binary = bytes.fromhex("".join(keys))
    assert reader.lookup_binary(binary, unwritten=unwritten).to_pylist() == [
        "stored",
        "stored",
        "new",
    ]
    assert reader.lookup([key(3)], unwritten=records_to_table([])) == [None]
    assert folder_state(tmp_path) == before


def test_a_reader_writes_nothing_and_creates_no_folder(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    reader = CacheReader(missing, keep_index=False)
    assert reader.lookup([key(1)]) == [None]
    assert reader.lookup_binary(bytes.fromhex(key(1))).to_pylist() == [None]
    with pytest.raises(ValueError, match="16 bytes"):
        reader.lookup_binary(b"x" * 17)
    assert not missing.exists()
