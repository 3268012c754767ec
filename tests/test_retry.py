"""The retry policy: backoff, the server's retry-after within reason, retryable statuses."""

from __future__ import annotations

import math

import pytest
from _headers_data import http_date, now

from llmframe._retry import backoff_delay, is_retryable_status, retry_delay

# -- backoff_delay --------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "delay"),
    [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (60, 8.0), (10_000, 8.0)],
)
def test_backoff_doubles_up_to_the_cap(attempt: int, delay: float) -> None:
    assert backoff_delay(attempt, random=lambda: 0.0) == delay


@pytest.mark.parametrize(("attempt", "delay"), [(0, 0.375), (3, 3.0), (9, 6.0)])
def test_backoff_jitter_takes_off_at_most_a_quarter(attempt: int, delay: float) -> None:
    assert backoff_delay(attempt, random=lambda: 1.0) == pytest.approx(delay)


def test_backoff_with_real_randomness_stays_in_range() -> None:
    for attempt in range(8):
        top = min(0.5 * 2**attempt, 8.0)
        for _ in range(50):
            assert 0.75 * top <= backoff_delay(attempt) <= top


def test_backoff_custom_initial_and_cap() -> None:
    assert backoff_delay(2, initial=1.0, cap=3.0, random=lambda: 0.0) == 3.0
    assert backoff_delay(1, initial=0.1, cap=30.0, random=lambda: 0.5) == pytest.approx(0.175)


def test_backoff_negative_attempt_counts_as_first() -> None:
    assert backoff_delay(-3, random=lambda: 0.0) == 0.5


# -- retry_delay ----------------------------------------------------------------


def no_jitter() -> float:
    return 0.0


@pytest.mark.parametrize(
    ("attempt", "headers", "delay"),
    [
        (0, {"retry-after": "3"}, 3.0),
        (5, {"retry-after-ms": "20"}, 0.02),
        (0, {"retry-after": "0"}, 0.0),  # the server says "now": believe it
        (0, {"retry-after": "60"}, 60.0),  # the edge of sane is still sane
        (0, {"retry-after": "61"}, 0.5),  # beyond: back off instead
        (2, {"retry-after": "3600"}, 2.0),
        (1, {"retry-after": "-1"}, 1.0),
        (1, {"retry-after": "nan"}, 1.0),
        (1, {"retry-after": "inf"}, 1.0),
        (3, {}, 4.0),
        (3, None, 4.0),
        (0, {"Retry-After": http_date(10)}, 10.0),
        (0, {"Retry-After": http_date(600)}, 0.5),
    ],
)
def test_retry_delay(attempt: int, headers: dict[str, str] | None, delay: float) -> None:
    assert retry_delay(attempt, headers, random=no_jitter, now=now) == pytest.approx(delay)


def test_retry_delay_custom_server_cap() -> None:
    headers = {"retry-after": "20"}
    assert retry_delay(0, headers, max_server_delay=10, random=no_jitter) == 0.5
    assert retry_delay(0, headers, max_server_delay=30, random=no_jitter) == 20.0


def test_retry_delay_passes_backoff_settings() -> None:
    assert retry_delay(4, {}, initial=1.0, cap=5.0, random=no_jitter) == 5.0


def test_retry_delay_is_finite_for_any_attempt() -> None:
    assert math.isfinite(retry_delay(100_000, {}))


# -- is_retryable_status --------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 520, 529, 599])
def test_retryable_statuses(status: int) -> None:
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [200, 201, 301, 400, 401, 403, 404, 413, 422, 428, 430, 600])
def test_not_retryable_statuses(status: int) -> None:
    assert not is_retryable_status(status)

