"""What a server's response headers say about its limits: pure parsing, no state.

Two families of headers, read as OpenAI sends them (and ignored, not guessed,
when a server sends something else)::

    retry-after-ms: 250            how long to wait before trying again
    retry-after: 2  |  <HTTP date>
    x-ratelimit-limit-requests: 500         the limits of the key and model,
    x-ratelimit-remaining-tokens: 19000     what is left of them now, and when
    x-ratelimit-reset-tokens: 6m0s          the window is full again

    >>> parse_retry_after({"retry-after-ms": "250"})
    0.25
    >>> parse_rate_limits({"x-ratelimit-limit-requests": "500"}).requests.limit
    500.0

:func:`parse_retry_after` feeds the retry policy (:mod:`._retry`) and the
client's errors; :func:`parse_rate_limits` feeds the limiter's calibration.
Numbers are plain decimals: ``inf``, ``nan``, negatives and garbage are None.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "RateLimitHeaders",
    "Window",
    "exhausted_wait",
    "parse_duration",
    "parse_rate_limits",
    "parse_retry_after",
]

# A plain decimal number. Stricter than float(), which also takes "inf", "nan",
# "1_000" and " 1e3 " -- none of which a sane server sends as a delay or a limit.
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


def _seconds(value: float) -> float | None:
    """``value`` if it is usable as a delay or a count (finite and not negative), else None."""
    return value if math.isfinite(value) and value >= 0 else None


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    text = text.strip()
    if not _NUMBER_RE.fullmatch(text):
        return None
    return _seconds(float(text))


def _lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    # httpx.Headers is case-insensitive already, a plain dict is not: normalize both.
    return {str(name).lower(): value for name, value in headers.items()}


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
    milliseconds = _number(lowered.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000
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


@dataclass(frozen=True, slots=True)
class Window:
    """One limit's headers (requests or tokens); None where a header is missing or unreadable.

    ``limit`` is per minute; ``remaining`` is what is left now; ``reset`` is
    the seconds until the window is full again.
    """

    limit: float | None = None
    remaining: float | None = None
    reset: float | None = None

    @property
    def capacity(self) -> float | None:
        """How much the server's window holds when full, if the three headers say.

        A window that refills at ``limit / 60`` per second and is full ``reset``
        seconds from now holds ``remaining + limit / 60 * reset`` then; never more
        than a minute's ``limit``. OpenAI's buckets hold a whole minute; a server
        enforcing its limit over one second holds a sixtieth of it.

        >>> Window(limit=1200, remaining=1190, reset=0.5).capacity
        1200.0
        >>> Window(limit=1200, remaining=0, reset=1.0).capacity
        20.0
        """
        if self.limit is None or self.remaining is None or self.reset is None:
            return None
        return float(min(self.limit, self.remaining + self.limit / 60 * self.reset))

    def wait_for(self, amount: float) -> float | None:
        """Seconds until the window holds ``amount`` again, or None: it does now, or it
        does not say. Taken from ``reset`` (when it is full again), sooner at its refill
        rate (``limit / 60`` per second) where the limit is known.

        >>> Window(limit=600, remaining=0, reset=6.0).wait_for(1)
        0.1
        >>> Window(remaining=0, reset=2.0).wait_for(1)
        2.0
        """
        if self.remaining is None or self.reset is None or self.remaining >= amount:
            return None
        if self.limit is None:
            return self.reset
        return min(self.reset, (min(amount, self.limit) - self.remaining) / (self.limit / 60))


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """The ``x-ratelimit-*`` headers of one response, read."""

    requests: Window
    tokens: Window


def _window(lowered: Mapping[str, str], kind: str) -> Window:
    limit = _number(lowered.get(f"x-ratelimit-limit-{kind}"))
    return Window(
        limit=limit if limit else None,  # a limit of 0 says nothing we could pace by
        remaining=_number(lowered.get(f"x-ratelimit-remaining-{kind}")),
        reset=parse_duration(lowered.get(f"x-ratelimit-reset-{kind}")),
    )


def exhausted_wait(headers: Mapping[str, str] | None, tokens: float) -> float | None:
    """After a 429 that names no ``retry-after``: how long until the window it ran out
    of holds one more request of ``tokens`` tokens, read from ``x-ratelimit-reset-*``
    and ``-remaining-*`` (:meth:`Window.wait_for`); None when the headers do not say.

    >>> exhausted_wait({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s"}, 100)
    1.5
    """
    if not headers:
        return None
    seen = parse_rate_limits(headers)
    waits = [w for w in (seen.requests.wait_for(1), seen.tokens.wait_for(tokens)) if w is not None]
    return max(waits) if waits else None


def parse_rate_limits(headers: Mapping[str, str]) -> RateLimitHeaders:
    """The ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers, any case.

    >>> parse_rate_limits({"X-RateLimit-Remaining-Tokens": "1200"}).tokens
    Window(limit=None, remaining=1200.0, reset=None)
    """
    lowered = _lower_keys(headers)
    return RateLimitHeaders(_window(lowered, "requests"), _window(lowered, "tokens"))
