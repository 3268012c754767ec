"""Retry policy: when to retry a request and how long to wait first.

Small pure functions, no state: the client decides *whether* to retry from the
status code (or from a timeout / connection error, which it sees as an
exception), and asks :func:`retry_delay` *how long* to wait. The server's own
``retry-after-ms`` / ``retry-after`` wins when it is sane; otherwise a capped
exponential backoff with jitter spreads retries out, so that many failed
requests do not all come back at the same instant. The formula and the header
order are the ones openai-python uses, because llmframe turns the SDK's own
retries off (``max_retries=0``) so that every attempt passes the limiter::

    >>> retry_delay(0, {"retry-after-ms": "250"})
    0.25
    >>> 0.375 <= retry_delay(0, {}) <= 0.5        # backoff: 0.5 s minus up to 25 % jitter
    True

Clocks and randomness are parameters, so tests never sleep and never guess.
"""

from __future__ import annotations

import email.utils
import math
import random as _random
import re
import time
from collections.abc import Callable, Mapping

__all__ = [
    "backoff_delay",
    "is_retryable_status",
    "parse_duration",
    "parse_retry_after",
    "retry_delay",
]

# A plain decimal number. Stricter than float(), which also takes "inf", "nan",
# "1_000" and " 1e3 " -- none of which a sane server sends as a delay.
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_NUMBER_RE = re.compile(rf"{_NUMBER}(?:[eE][+-]?\d+)?")

# Go's time.Duration.String() format, which OpenAI uses in x-ratelimit-reset-*:
# "6m0s", "1h2m3.5s", "12ms". "ms" must be tried before "m"; "µs"/"us"/"ns" for completeness.
_DURATION_PART_RE = re.compile(rf"({_NUMBER})(h|ms|m|s|us|µs|μs|ns)")
_UNIT_SECONDS = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ns": 1e-9,
}

# Statuses worth another attempt: timeout, conflict (a lock on the server side),
# rate limit, and every server error. Other 4xx mean the request itself is wrong.
_RETRYABLE_STATUSES = frozenset({408, 409, 429})

# 2**64 * any sane initial delay is far beyond any cap; keeps the float finite.
_MAX_EXPONENT = 64


def _seconds(value: float) -> float | None:
    """``value`` if it is usable as a delay (finite and not negative), else None."""
    return value if math.isfinite(value) and value >= 0 else None


def _number(text: str) -> float | None:
    text = text.strip()
    if not _NUMBER_RE.fullmatch(text):
        return None
    return _seconds(float(text))


def parse_duration(value: str | None) -> float | None:
    """Seconds in an OpenAI reset header such as ``"6m0s"``, ``"12ms"`` or ``"1h2m3.5s"``.

    A bare number is seconds (``"20"``). Anything else -- None, empty, negative,
    ``inf``, ``nan``, unknown units -- is None: a reset time we cannot read is
    better ignored than guessed.

    >>> parse_duration("1m30.5s")
    90.5
    """
    if value is None:
        return None
    text = value.strip().lower()
    if not text:
        return None
    bare = _number(text)
    if bare is not None:
        return bare
    total = 0.0
    position = 0
    for part in _DURATION_PART_RE.finditer(text):
        if part.start() != position:  # something unparsable between two parts
            return None
        total += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
        position = part.end()
    if position == 0 or position != len(text):
        return None
    return _seconds(total)


def _lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    # httpx.Headers is case-insensitive already, a plain dict is not: normalize both.
    return {str(name).lower(): value for name, value in headers.items()}


def parse_retry_after(
    headers: Mapping[str, str] | None,
    *,
    now: Callable[[], float] = time.time,
) -> float | None:
    """Seconds the server asks us to wait, or None if it does not say (sanely).

    Reads ``retry-after-ms`` (milliseconds, OpenAI's precise variant) first, then
    ``retry-after`` as seconds, then ``retry-after`` as an HTTP date, measured
    from ``now()`` (wall-clock seconds since the epoch). Header names are
    matched case-insensitively. Garbage, ``inf``, ``nan``, negative values and
    dates in the past are ignored, and the next source is tried.

    >>> parse_retry_after({"Retry-After": "2"})
    2.0
    """
    if not headers:
        return None
    lowered = _lower_keys(headers)
    milliseconds = lowered.get("retry-after-ms")
    if milliseconds is not None:
        parsed = _number(milliseconds)
        if parsed is not None:
            return parsed / 1000
    retry_after = lowered.get("retry-after")
    if retry_after is None:
        return None
    parsed = _number(retry_after)
    if parsed is not None:
        return parsed
    try:
        date = email.utils.parsedate_tz(retry_after)
        if date is None:
            return None
        when = email.utils.mktime_tz(date)
    except (OverflowError, ValueError, IndexError, TypeError):  # e.g. year 99999
        return None
    return _seconds(float(when) - now())


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
