"""Rate limits remembered between processes, per (endpoint, model, key hash).

A new process or kernel knows nothing of an endpoint's limits, so its limiter
would probe: one request alone until headers arrive. What the headers taught
is kept in ``limits.json`` in llmframe's user cache folder
(:func:`~llmframe._cache_admin.default_cache_dir`), keyed by the base URL, the
model and a hash of the key, never the key itself, and a new limiter starts
from it at full speed. The entry is trusted for the first burst only: every
response's headers set the limits again, and a 429 pauses every sharer as
always, so a stale entry costs at most one burst.

An endpoint that sends no rate-limit headers (vLLM, llama.cpp, Ollama) is
remembered as such, so its first request does not wait alone either.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from pathlib import Path
from typing import Any

from ._capabilities import EndpointMemory, atomic_write_json, read_json

__all__ = ["LIMITERS_FOLDER", "LIMITS_FILE", "endpoint_key", "limiter_state_path", "recall", "remember"]

LIMITS_FILE = "limits.json"
#: Where machine-wide limiters keep their state, one file per endpoint key (and ``owners/``).
LIMITERS_FOLDER = "limiters"
_lock = threading.Lock()
#: What this process read or wrote last, per file and key: most responses repeat it,
#: and then cost no file access.
_known: dict[tuple[str, str], dict[str, Any]] = {}


def endpoint_key(base_url: str, key_fingerprint: str, model: str) -> str:
    """The endpoint as :class:`EndpointMemory` names it (URL without credentials or query,
    and the model), and a hash of the key's fingerprint, shortened: never the key."""
    digest = hashlib.sha256(key_fingerprint.encode()).hexdigest()[:16] if key_fingerprint else ""
    return f"{EndpointMemory.key(base_url, model)}|{digest}"


def _path() -> Path | None:
    from ._cache_admin import default_cache_dir

    try:
        return default_cache_dir() / LIMITS_FILE
    except Exception:  # no home folder: nothing is remembered
        return None


def limiter_state_path(key: str) -> Path:
    """The state file of the machine-wide limiter of ``key`` (named by a hash of it)."""
    from ._cache_admin import default_cache_dir

    return default_cache_dir() / LIMITERS_FOLDER / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.state"


def recall(key: str) -> dict[str, Any] | None:
    """The remembered entry (``rpm``, ``tpm``, ``headers``), or None."""
    path = _path()
    if path is None:
        return None
    entry = read_json(path).get(key)
    return entry if isinstance(entry, dict) else None


def remember(key: str, rpm: float | None, tpm: float | None, headers: bool) -> None:
    """Store what one response taught; a no-op when it is what is stored already."""
    path = _path()
    if path is None:
        return
    entry = {"rpm": rpm, "tpm": tpm, "headers": headers}
    memo = (str(path), key)
    with _lock:
        if _known.get(memo) == entry:
            return
        data = read_json(path)
        old = data.get(key)
        _known[memo] = entry
        if isinstance(old, dict) and {k: old.get(k) for k in entry} == entry:
            return
        data[key] = {**entry, "seen": time.time()}
        with contextlib.suppress(OSError):  # a read-only folder: learned again next time
            atomic_write_json(path, data)
