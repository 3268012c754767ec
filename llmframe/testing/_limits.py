"""RPM and TPM limits for the fake server, modelled on OpenAI's.

Each limit is a token bucket that refills continuously at ``limit / 60`` per
second up to a capacity of ``limit * burst_seconds / 60`` (a full minute's
worth by default, as OpenAI allows). A request is admitted when the request
bucket holds at least one request and the token bucket at least the request's
estimate (prompt tokens plus ``max_tokens``); admission debits both. Once the
answer is known the token debit is corrected to the tokens actually used, so a
bucket may go below zero when a request without ``max_tokens`` answers at
length, as OpenAI's accounting does.

The 429 message and the ``x-ratelimit-*`` headers follow OpenAI's format,
including its Go-style durations (``"1s"``, ``"6m0s"``, ``"120ms"``,
``"1.5s"``). The clock is passed in, so this module is tested without sleeping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Bucket", "Limits", "Rejection", "format_duration"]


def format_duration(seconds: float) -> str:
    """A duration the way OpenAI writes it in headers and messages (Go's format, ms precision).

    >>> [format_duration(s) for s in (0, 0.12, 1, 1.5, 360, 90.25, 3600)]
    ['0s', '120ms', '1s', '1.5s', '6m0s', '1m30.25s', '1h0m0s']
    """
    ms = round(seconds * 1000) if math.isfinite(seconds) else 0
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


class Bucket:
    """One continuously refilled token bucket (not thread-safe: the server's loop owns it)."""

    __slots__ = ("capacity", "level", "limit", "rate", "updated")

    def __init__(self, limit: float, burst_seconds: float, now: float, capacity_floor: float = 0.0):
        self.limit = limit
        self.rate = limit / 60.0
        self.capacity = max(limit * burst_seconds / 60.0, capacity_floor)
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait(self, amount: float) -> float:
        """Seconds until the bucket holds ``amount`` (0 if it already does)."""
        return max(0.0, (amount - self.level) / self.rate)

    def reset(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level) / self.rate)

    def remaining(self) -> int:
        return max(0, math.floor(self.level))

    def used(self) -> int:
        return max(0, math.ceil(self.capacity - self.level))

    def rescale(
        self, limit: float, burst_seconds: float, now: float, capacity_floor: float = 0.0
    ) -> None:
        """Change the limit, keeping what was used (the level, capped at the new capacity)."""
        self.refill(now)
        self.limit = limit
        self.rate = limit / 60.0
        self.capacity = max(limit * burst_seconds / 60.0, capacity_floor)
        self.level = min(self.level, self.capacity)


@dataclass(frozen=True)
class Rejection:
    """Why a request was refused: which limit, and how long until it would fit."""

    kind: str  # "requests" or "tokens"
    wait: float  # seconds; math.inf when the request can never fit
    limit: int
    used: int
    requested: int

    @property
    def never_fits(self) -> bool:
        return math.isinf(self.wait)

    def message(self, model: str) -> str:
        unit = "requests per min (RPM)" if self.kind == "requests" else "tokens per min (TPM)"
        where = f"for {model} in organization org-llmframe-fake on {unit}"
        more = "Visit https://platform.openai.com/account/rate-limits to learn more."
        if self.never_fits:
            return (
                f"Request too large {where}: Limit {self.limit}, Requested {self.requested}. "
                f"The input or output tokens must be reduced in order to run successfully. {more}"
            )
        return (
            f"Rate limit reached {where}: Limit {self.limit}, Used {self.used}, "
            f"Requested {self.requested}. Please try again in {format_duration(self.wait)}. {more}"
        )


class Limits:
    """The request and token buckets of one server; either may be absent (no limit)."""

    __slots__ = ("requests", "tokens")

    def __init__(self) -> None:
        self.requests: Bucket | None = None
        self.tokens: Bucket | None = None

    def configure(
        self, rpm: float | None, tpm: float | None, burst_seconds: float, now: float
    ) -> None:
        """Set the limits; a new limit starts full, a changed one keeps what was used."""
        # A request bucket that cannot hold one request would refuse everything forever.
        self.requests = _updated(self.requests, rpm, burst_seconds, now, capacity_floor=1.0)
        self.tokens = _updated(self.tokens, tpm, burst_seconds, now)

    def admit(self, estimate: int, now: float) -> Rejection | None:
        """Debit one request and ``estimate`` tokens, or say why not (debiting nothing)."""
        requests, tokens = self.requests, self.tokens
        if tokens is not None and estimate > tokens.capacity:
            return Rejection("tokens", math.inf, round(tokens.limit), tokens.used(), estimate)
        waits: list[Rejection] = []
        if requests is not None:
            requests.refill(now)
            if requests.level < 1.0:
                waits.append(
                    Rejection(
                        "requests", requests.wait(1.0), round(requests.limit), requests.used(), 1
                    )
                )
        if tokens is not None:
            tokens.refill(now)
            if tokens.level < estimate:
                waits.append(
                    Rejection(
                        "tokens",
                        tokens.wait(estimate),
                        round(tokens.limit),
                        tokens.used(),
                        estimate,
                    )
                )
        if waits:
            return max(waits, key=lambda rejection: rejection.wait)
        if requests is not None:
            requests.level -= 1.0
        if tokens is not None:
            tokens.level -= estimate
        return None

    def settle(self, estimate: int, actual: int, now: float) -> None:
        """Correct an admitted request's token debit from ``estimate`` to ``actual``."""
        if self.tokens is not None and actual != estimate:
            self.tokens.refill(now)
            self.tokens.level = min(self.tokens.capacity, self.tokens.level + estimate - actual)

    def headers(self, now: float) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers: limit, remaining and time until full, per limit."""
        headers: dict[str, str] = {}
        for name, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is None:
                continue
            bucket.refill(now)
            headers[f"x-ratelimit-limit-{name}"] = str(round(bucket.limit))
            headers[f"x-ratelimit-remaining-{name}"] = str(bucket.remaining())
            headers[f"x-ratelimit-reset-{name}"] = format_duration(bucket.reset())
        return headers


def _updated(
    bucket: Bucket | None,
    limit: float | None,
    burst_seconds: float,
    now: float,
    capacity_floor: float = 0.0,
) -> Bucket | None:
    if limit is None:
        return None
    if bucket is None:
        return Bucket(limit, burst_seconds, now, capacity_floor)
    bucket.rescale(limit, burst_seconds, now, capacity_floor)
    return bucket
