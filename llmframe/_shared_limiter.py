"""One limiter per (base URL, API key, model), shared by the whole process.

Quotas belong to the key and the model on one endpoint, so every call with the
same three shares one :class:`~llmframe._limiter.RateLimiter`, in any thread
or event loop. A new one starts from what an earlier process learned of the
endpoint's limits (:mod:`._limits_store`), and keeps what it learns there.
"""

from __future__ import annotations

import hashlib
import threading
from urllib.parse import urlsplit, urlunsplit

from . import _limits_store
from ._limiter import RateLimiter

__all__ = ["SHARED_BURST_SECONDS", "shared_limiter"]

_registry_lock = threading.Lock()
# Keyed by a hash of the API key: the key itself is never stored, so it cannot
# leak through a repr, a log line or a debugger.
_registry: dict[tuple[str, str, str], RateLimiter] = {}


def _normalize_base_url(base_url: str) -> str:
    """``HTTPS://API.example.com/v1/`` and ``https://api.example.com/v1`` are one endpoint."""
    parts = urlsplit(base_url.strip())
    return urlunsplit(
        (parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), parts.query, "")
    )


def _key_fingerprint(api_key: str | None) -> str:
    if api_key is None:
        return ""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


#: The burst of the process-wide limiters, under a server's likely one second:
#: requests released together reach the server spread out and late (connections
#: opening), so a client bucket as large as the server's runs it dry and earns a
#: 429 at every phase change (benchmarks/rate_limits.py: 0.8 s halved the 429s).
SHARED_BURST_SECONDS = 0.5


def _persist(limiter: RateLimiter, key: str) -> None:
    """Start ``limiter`` from what an earlier process learned, and keep what it learns."""
    entry = _limits_store.recall(key)
    if entry is not None:
        limiter.remember(entry.get("rpm"), entry.get("tpm"))

    def keep(rpm: float | None, tpm: float | None, headers: bool) -> None:
        _limits_store.remember(key, rpm, tpm, headers)

    limiter.on_learned = keep


def shared_limiter(
    base_url: str,
    api_key: str | None,
    model: str,
    *,
    rpm: float | None = None,
    tpm: float | None = None,
) -> RateLimiter:
    """The process-wide limiter for one (base URL, API key, model).

    Quotas belong to the key and the model on one endpoint, so every call
    with the same three shares one limiter, in any thread or event loop.
    ``rpm`` / ``tpm`` set (or update) its user-given limits.

    >>> a = shared_limiter("https://api.openai.com/v1", "sk-...", "gpt-4o-mini")
    >>> a is shared_limiter("https://api.openai.com/v1/", "sk-...", "gpt-4o-mini")
    True
    """
    key = (_normalize_base_url(base_url), _key_fingerprint(api_key), model)
    with _registry_lock:
        limiter = _registry.get(key)
        if limiter is None:
            limiter = _registry[key] = RateLimiter(rpm=rpm, tpm=tpm, burst_seconds=SHARED_BURST_SECONDS)
            _persist(limiter, _limits_store.endpoint_key(*key))
            return limiter
    if rpm is not None or tpm is not None:
        limiter.set_limits(rpm=rpm, tpm=tpm)
    return limiter
