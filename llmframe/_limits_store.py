"""Rate limits remembered between processes, per (endpoint, model, key hash).

A new process or kernel knows nothing of an endpoint's limits, so its limiter
would probe: one request alone until headers arrive. What the headers taught
is kept in ``limits.json`` in llmframe's user cache folder
(:func:`~llmframe._cache_admin.default_cache_dir`), keyed by the base URL, the
model and a hash of the key, never the key itself, and a new limiter starts
from it at full speed. Beside the limits, it keeps how many seconds of each limit the
server's window held (``rpm_window_seconds``, ``tpm_window_seconds``; read from
limit, remaining and reset, :mod:`._quota`), so that the new limiter's first
burst is its share of that window rather than the usual half second. The entry
is trusted for the first burst only: every response's headers set the limits
and the windows again (a smaller window or a lower remaining count lowers the
buckets at once), a 429 before that drops the remembered windows, and a 429
pauses every sharer as always, so a stale entry costs at most one burst.

:func:`remember` runs after every response: one that says what this process
last read or wrote costs one comparison, without a path, a lock or a file.

An endpoint that sends no rate-limit headers (vLLM, llama.cpp, Ollama) is
remembered as such, so its first request does not wait alone either.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
import time
from pathlib import Path
from typing import Any

from ._capabilities import EndpointMemory, atomic_write_json, read_json

__all__ = ["LIMITERS_FOLDER", "LIMITS_FILE", "endpoint_key", "limiter_state_path", "recall", "remember",
           "window_seconds"]  # fmt: skip

LIMITS_FILE = "limits.json"
#: Where machine-wide limiters keep their state, one file per endpoint key (and ``owners/``).
LIMITERS_FOLDER = "limiters"
_lock = threading.Lock()
#: What this process read or wrote last, per key: most responses repeat it.
_known: dict[str, dict[str, Any]] = {}
#: The entry's window fields, requests then tokens.
_WINDOW_FIELDS = ("rpm_window_seconds", "tpm_window_seconds")


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
    """The remembered entry (``rpm``, ``tpm``, ``headers``, the window seconds), or None."""
    path = _path()
    if path is None:
        return None
    entry = read_json(path).get(key)
    if not isinstance(entry, dict):
        return None
    with _lock:
        _known.setdefault(key, {k: entry.get(k) for k in ("rpm", "tpm", "headers", *_WINDOW_FIELDS)})
    return entry


def window_seconds(entry: dict[str, Any]) -> tuple[float | None, float | None]:
    """The seconds of each limit the server's window held, as ``entry`` says (None: unknown)."""
    rq, tk = (entry.get(field) for field in _WINDOW_FIELDS)
    return _seconds(rq), _seconds(tk)


def _seconds(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return float(value) if ok else None


def _two_digits_down(seconds: float | None) -> float | None:
    """``seconds`` to two significant digits, rounded down (a window must not grow by it):
    the largest reading creeps up by milliseconds, and each step would be a write."""
    if seconds is None or not (math.isfinite(seconds) and seconds > 0):
        return None
    scale = 10.0 ** (1 - math.floor(math.log10(seconds)))
    return math.floor(seconds * scale + 1e-9) / scale


def remember(
    key: str, rpm: float | None, tpm: float | None, headers: bool,
    seconds: tuple[float | None, float | None] = (None, None),
) -> None:  # fmt: skip
    """Store what one response taught (``seconds``: of each limit, what the server's
    window holds); a no-op when it is what this process last read or wrote."""
    entry = {"rpm": rpm, "tpm": tpm, "headers": headers, _WINDOW_FIELDS[0]: _two_digits_down(seconds[0]),
             _WINDOW_FIELDS[1]: _two_digits_down(seconds[1])}  # fmt: skip
    if _known.get(key) == entry:  # most replies: no path, no lock, no file
        return
    path = _path()
    if path is None:
        return
    with _lock:
        data = read_json(path)
        old = data.get(key)
        _known[key] = entry
        if isinstance(old, dict) and {k: old.get(k) for k in entry} == entry:
            return
        data[key] = {**entry, "seen": time.time()}
        with contextlib.suppress(OSError):  # a read-only folder: learned again next time
            atomic_write_json(path, data)
