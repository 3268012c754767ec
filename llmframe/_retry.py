"""Retry policy: when to retry a request and how long to wait first.

Small pure functions, no state: the client decides *whether* to retry from the
status code (or from a timeout / connection error, which it sees as an
exception), and asks :func:`retry_delay` *how long* to wait. The server's own
``retry-after-ms`` / ``retry-after`` wins when it is sane; otherwise a capped
exponential backoff with jitter spreads retries out, so that many failed
requests do not all come back at the same instant (the headers are read by
:mod:`._headers`). The formula and the header order are the ones
openai-python uses, because llmframe turns the SDK's own retries off
(``max_retries=0``) so that every attempt passes the limiter::

    >>> retry_delay(0, {"retry-after-ms": "250"})
    0.25
    >>> 0.375 <= retry_delay(0, {}) <= 0.5        # backoff: 0.5 s minus up to 25 % jitter
    True

Clocks and randomness are parameters, so tests never sleep and never guess.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable, Mapping

from ._headers import parse_retry_after

__all__ = ["backoff_delay", "is_retryable_status", "retry_delay"]

# Statuses worth another attempt: timeout, conflict (a lock on the server side),
# rate limit, and every server error. Other 4xx mean the request itself is wrong.
_RETRYABLE_STATUSES = frozenset({408, 409, 429})

# 2**64 * any sane initial delay is far beyond any cap; keeps the float finite.
_MAX_EXPONENT = 64


def backoff_delay(
    attempt: int,
    *,
    initial: float = 0.5,
    cap: float = 8.0,
    random: Callable[[], float] = _random.random,
) -> float:
    """Capped exponential backoff with jitter; ``attempt`` 0 is the first retry.

    ``min(initial * 2**attempt, cap) * (1 - 0.25 * random())``: the jitter only
    shortens the wait (by up to a quarter), so the cap stays a true maximum.

    >>> backoff_delay(3, random=lambda: 0.0)
    4.0
    """
    exponent = min(max(attempt, 0), _MAX_EXPONENT)
    return min(initial * 2.0**exponent, cap) * (1 - 0.25 * random())


def retry_delay(
    attempt: int,
    headers: Mapping[str, str] | None,
    *,
    max_server_delay: float = 60.0,
    initial: float = 0.5,
    cap: float = 8.0,
    random: Callable[[], float] = _random.random,
    now: Callable[[], float] = time.time,
) -> float:
    """How long to wait before retry number ``attempt`` (0 = the first retry).

    The server's retry-after when it gives one between 0 and
    ``max_server_delay`` seconds (it knows its own limits better than we do);
    else :func:`backoff_delay`. A server asking for more than
    ``max_server_delay`` is not obeyed blindly: a misconfigured proxy saying
    "retry in an hour" should cost a few backoffs, not an hour.

    >>> retry_delay(5, {"retry-after": "1.5"})
    1.5
    """
    server = parse_retry_after(headers, now=now)
    if server is not None and 0 <= server <= max_server_delay:
        return server
    return backoff_delay(attempt, initial=initial, cap=cap, random=random)


def is_retryable_status(status: int) -> bool:
    """True for statuses where the same request may succeed later: 408, 409, 429, 5xx."""
    return status in _RETRYABLE_STATUSES or 500 <= status <= 599
