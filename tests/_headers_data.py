"""Response headers as OpenAI sends them, and a fixed wall clock for HTTP dates."""

from __future__ import annotations

import email.utils

OPENAI_HEADERS = {
    "x-ratelimit-limit-requests": "600",
    "x-ratelimit-limit-tokens": "6000",
    "x-ratelimit-remaining-requests": "599",
    "x-ratelimit-remaining-tokens": "5990",
    "x-ratelimit-reset-requests": "100ms",
    "x-ratelimit-reset-tokens": "1m30.5s",
}


def window_headers(rpm: int, remaining: float, reset: str) -> dict[str, str]:
    """The three request headers that together say how much the server's window holds."""
    return {"x-ratelimit-limit-requests": str(rpm), "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": reset}  # fmt: skip


NOW = 1_700_000_000.0  # a fixed wall clock for HTTP-date cases


def now() -> float:
    return NOW


def http_date(offset: float) -> str:
    """An HTTP date ``offset`` seconds after :data:`NOW`."""
    return email.utils.formatdate(NOW + offset, usegmt=True)
