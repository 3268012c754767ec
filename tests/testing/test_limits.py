"""The fake server's RPM/TPM buckets and its reset durations, as pure code on given times."""

from __future__ import annotations

import math

import pytest
from _support import parse_duration

from llmframe.testing._limits import Limits, format_duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "0s"),
        (0.12, "120ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59.999, "59.999s"),
        (360, "6m0s"),
        (90.25, "1m30.25s"),
        (3725, "1h2m5s"),
        (math.inf, "0s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds if math.isfinite(seconds) else 0, abs=1e-3)


def test_limits_refill_continuously_and_serve_bursts() -> None:
    limits = Limits()
    limits.configure(rpm=60, tpm=None, burst_seconds=60, now=0.0)
    assert all(limits.admit(10, now=0.0) is None for _ in range(60))  # a minute's burst
    rejection = limits.admit(10, now=0.0)
    assert rejection is not None and rejection.kind == "requests"
    assert rejection.wait == pytest.approx(1.0)
    assert limits.admit(10, now=1.0) is None  # one per second refilled
    assert limits.headers(now=1.0)["x-ratelimit-reset-requests"] == "1m0s"


def test_limits_settle_and_refuse_what_never_fits() -> None:
    limits = Limits()
    limits.configure(rpm=None, tpm=1200, burst_seconds=30, now=0.0)  # 600 tokens, 20 per second
    assert limits.admit(500, now=0.0) is None
    limits.settle(estimate=500, actual=100, now=0.0)
    assert limits.headers(now=0.0)["x-ratelimit-remaining-tokens"] == "500"
    rejection = limits.admit(700, now=0.0)
    assert rejection is not None and rejection.never_fits
    rejection = limits.admit(520, now=0.0)
    assert rejection is not None and rejection.wait == pytest.approx(1.0)
    assert limits.admit(520, now=1.0) is None
