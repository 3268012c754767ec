"""One limiter per (base URL, API key, model), shared by the whole process or machine.

Quotas belong to the key and the model on one endpoint, so every call with the
same three shares one :class:`~llmframe._limiter.RateLimiter`, in any thread
or event loop. A new one starts from what an earlier process learned of the
endpoint's limits (:mod:`._limits_store`), and keeps what it learns there.

``kind`` says who else shares it: ``"process"`` (the default) this process
only; ``"machine"`` every process on this machine that uses the same three
(:class:`~llmframe._machine_limiter.MachineLimiter`, its state in the cache
folder's ``limiters/``); a ``redis://`` (or ``rediss://``) URL every process on
every machine that uses that Redis and the same three
(:class:`~llmframe._redis_limiter.RedisLimiter`).
"""

from __future__ import annotations

import hashlib
import threading
from urllib.parse import urlsplit, urlunsplit

from . import _limits_store
from ._errors import ConfigError
from ._limiter import RateLimiter
from ._redis_names import is_redis_url

__all__ = ["LIMITER_KINDS", "SHARED_BURST_SECONDS", "shared_limiter"]

#: The values of ``limiter=``, and who shares the quota under each.
LIMITER_KINDS = {"process": "this process only (the default)", "machine": "every process on this machine",
                 "redis://host:port/db": "every process on every machine using that Redis"}  # fmt: skip

_registry_lock = threading.Lock()
# Keyed by a hash of the API key: the key itself is never stored, so it cannot
# leak through a repr, a log line or a debugger.
_registry: dict[tuple[str, str, str, str], RateLimiter] = {}


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
        limiter.remember(entry.get("rpm"), entry.get("tpm"), _limits_store.window_seconds(entry))

    def keep(rpm: float | None, tpm: float | None, headers: bool, seconds: tuple[float | None, float | None]) -> None:
        _limits_store.remember(key, rpm, tpm, headers, seconds)

    limiter.on_learned = keep


def _new_limiter(kind: str, name: str, rpm: float | None, tpm: float | None) -> RateLimiter:
    if kind == "process":
        return RateLimiter(rpm=rpm, tpm=tpm, burst_seconds=SHARED_BURST_SECONDS)
    if is_redis_url(kind):
        from ._redis_limiter import RedisLimiter

        return RedisLimiter(kind, name, rpm, tpm, burst_seconds=SHARED_BURST_SECONDS)
    from ._machine_limiter import MachineLimiter
    from ._machine_state import sweep_owners

    path = _limits_store.limiter_state_path(name)
    sweep_owners(path.parent / "owners")
    return MachineLimiter(path, rpm, tpm, burst_seconds=SHARED_BURST_SECONDS)


def shared_limiter(
    base_url: str,
    api_key: str | None,
    model: str,
    *,
    rpm: float | None = None,
    tpm: float | None = None,
    kind: str = "process",
) -> RateLimiter:
    """The process-wide (or machine-wide, by ``kind``) limiter for one (base URL, API key, model).

    Quotas belong to the key and the model on one endpoint, so every call
    with the same three shares one limiter, in any thread or event loop.
    ``rpm`` / ``tpm`` set (or update) its user-given limits.

    >>> a = shared_limiter("https://api.openai.com/v1", "sk-...", "gpt-4o-mini")
    >>> a is shared_limiter("https://api.openai.com/v1/", "sk-...", "gpt-4o-mini")
    True
    """
    if kind not in LIMITER_KINDS and not is_redis_url(kind):
        raise ConfigError(f"limiter must be one of {sorted(LIMITER_KINDS)}, got {kind!r}")
    endpoint = (_normalize_base_url(base_url), _key_fingerprint(api_key), model)
    key = (kind, *endpoint)
    with _registry_lock:
        limiter = _registry.get(key)
        if limiter is None:
            name = _limits_store.endpoint_key(*endpoint)
            limiter = _registry[key] = _new_limiter(kind, name, rpm, tpm)
            _persist(limiter, name)
            return limiter
    if rpm is not None or tpm is not None:
        limiter.set_limits(rpm=rpm, tpm=tpm)
    return limiter
