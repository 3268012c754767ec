"""What the Redis limiter is called by: the ``limiter=`` URL, the URL shown in messages, its keys.

Light on purpose (no ``redis`` import): :mod:`._config` checks ``limiter=`` with
these before any limiter exists.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit, urlunsplit

__all__ = ["INSTALL_HINT", "is_redis_url", "redacted", "redis_keys"]

_SCHEMES = ("redis://", "rediss://")
INSTALL_HINT = "pip install 'llmframe[redis]'"


def is_redis_url(value: object) -> bool:
    """Does ``limiter=`` name a Redis server (``redis://`` or ``rediss://``)?"""
    return isinstance(value, str) and value.lower().startswith(_SCHEMES)


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redis_keys(name: str) -> list[str]:
    """The four Redis keys of the endpoint key ``name``, named by a hash of it (one hash slot)."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:24]
    return [f"llmframe:limiter:{{{digest}}}:{part}" for part in ("state", "waiting", "sharers", "given")]
