"""The user's tools on a cache folder: where it is, read_cache, cache_info, compact_cache, clear_cache."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import pytest
from _cache_helpers import (
    BASE,
    EXPECTED_SCHEMA,
    key,
    leftovers,
    record,
    segments,
    write_segment,
)

from llmframe import _cache_admin
from llmframe._cache import AnswerCache
from llmframe._cache_admin import (
    cache_info,
    clear_cache,
    compact_cache,
    default_cache_dir,
    read_cache,
    resolve_cache_dir,
)
from llmframe._errors import ConfigError

# --------------------------------------------------------------------------- compact, clear, info


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


def test_cache_info(tmp_path: Path) -> None:
    write_segment(tmp_path, [record(1), record(2, status="error")])
    write_segment(tmp_path, [record(2, "now ok", seconds=1)])
    info = cache_info(tmp_path)
    embeddings = {k: info.pop(k) for k in list(info) if k.startswith("embedding_")}
    assert embeddings["embedding_segments"] == embeddings["embedding_records"] == 0  # test_embed_cache.py
    assert (info.pop("dask_runs"), info.pop("dask_run_bytes")) == (0, 0)  # test_dask_runs.py
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
        "logs": 0,
        "orphaned_logs": 0,
        "log_bytes": 0,
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


# --------------------------------------------------------------------------- read_cache


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


# --------------------------------------------------------------------------- where the folder is


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
