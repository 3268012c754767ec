"""Reading response headers: reset durations, retry-after, x-ratelimit-*."""

from __future__ import annotations

import email.utils
import importlib
from collections.abc import Iterator, Mapping

import pytest
from _headers_data import OPENAI_HEADERS, http_date, now

from llmframe._headers import (
    RateLimitHeaders,
    Window,
    exhausted_wait,
    parse_duration,
    parse_rate_limits,
    parse_retry_after,
)

# -- parse_duration -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1s", 1.0),
        ("0.5s", 0.5),
        ("1h2m3.5s", 3723.5),
        ("20", 20.0),
        ("1m30.5s", 90.5),
        ("0s", 0.0),
        ("0", 0.0),
        ("0.25", 0.25),
        ("1.5h", 5400.0),
        ("2m", 120.0),
        ("1s500ms", 1.5),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("100ns", 1e-7),
        (" 7s ", 7.0),
        ("3S", 3.0),
        (".5s", 0.5),
    ],
)
def test_parse_duration_reads_go_durations(value: str, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "abc",
        "s",
        "ms",
        "-1s",
        "-5",
        "inf",
        "nan",
        "infs",
        "Infinity",
        "1e999",
        "1x",
        "1s2",
        "1 s",
        "1s 2m",
        "1..2s",
        "1_000",
        "1d",
        "+3s",
    ],
)
def test_parse_duration_rejects_garbage(value: str | None) -> None:
    assert parse_duration(value) is None


# -- parse_retry_after ----------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "1500.5"}, 1.5005),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"retry-after": " 3 "}, 3.0),
        # milliseconds win over seconds, whatever the order of the headers
        ({"retry-after": "9", "retry-after-ms": "100"}, 0.1),
        ({"retry-after-ms": "100", "retry-after": "9"}, 0.1),
        # zero is a valid answer, not "missing"
        ({"retry-after": "0"}, 0.0),
        ({"retry-after-ms": "0", "retry-after": "9"}, 0.0),
        # a bad millisecond value falls back to retry-after
        ({"retry-after-ms": "soon", "retry-after": "4"}, 4.0),
        ({"retry-after-ms": "inf", "retry-after": "4"}, 4.0),
        ({"retry-after-ms": "nan", "retry-after": "4"}, 4.0),
        ({"retry-after-ms": "-100", "retry-after": "4"}, 4.0),
        ({"retry-after-ms": "", "retry-after": "4"}, 4.0),
        # header names in any case
        ({"Retry-After": "5"}, 5.0),
        ({"RETRY-AFTER": "5"}, 5.0),
        ({"Retry-After-Ms": "200"}, 0.2),
        ({"RETRY-AFTER-MS": "200", "Retry-After": "7"}, 0.2),
        # HTTP dates, relative to the injected clock
        ({"retry-after": http_date(30)}, 30.0),
        ({"Retry-After": http_date(0)}, 0.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),  # in the past
        ({"retry-after": http_date(-5)}, None),
        ({"retry-after-ms": "garbage", "retry-after": http_date(12)}, 12.0),
        # nothing usable
        ({}, None),
        ({"content-type": "application/json"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "-inf"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "later"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "1e999"}, None),
        ({"retry-after": "Tue, 1 Jan 99999 00:00:00 GMT"}, None),
        ({"retry-after": "Mon, 32 Foo 2020 00:00:00 GMT"}, None),
        ({"retry-after-ms": "100x"}, None),
        ({"retry-after-ms": "inf"}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], seconds: float | None) -> None:
    result = parse_retry_after(headers, now=now)
    if seconds is None:
        assert result is None
    else:
        assert result == pytest.approx(seconds)


def test_parse_retry_after_none_headers() -> None:
    assert parse_retry_after(None) is None


class _CaseInsensitiveHeaders(Mapping[str, str]):
    """Like httpx.Headers: keys come back lower-cased, lookups ignore case."""

    def __init__(self, items: dict[str, str]):
        self._items = {k.lower(): v for k, v in items.items()}

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def test_parse_retry_after_accepts_any_mapping() -> None:
    headers = _CaseInsensitiveHeaders({"Retry-After-Ms": "300", "Retry-After": "1"})
    assert parse_retry_after(headers) == pytest.approx(0.3)


def _httpx_module() -> object | None:
    for name in ("httpx", "httpx2"):  # whichever HTTP library the installed openai uses
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def test_parse_retry_after_reads_httpx_headers() -> None:
    httpx = _httpx_module()
    if httpx is None:
        pytest.skip("no httpx installed")
    headers = httpx.Headers({"Retry-After": "2", "X-Other": "1"})  # type: ignore[attr-defined]
    assert parse_retry_after(headers) == 2.0


def test_parse_retry_after_uses_wall_clock_by_default() -> None:
    import time

    later = email.utils.formatdate(time.time() + 120, usegmt=True)
    result = parse_retry_after({"retry-after": later})
    assert result is not None
    assert 115 <= result <= 120


# -- parse_rate_limits ----------------------------------------------------------


def test_parse_rate_limits_reads_openai_headers() -> None:
    assert parse_rate_limits(OPENAI_HEADERS) == RateLimitHeaders(
        requests=Window(limit=600.0, remaining=599.0, reset=0.1),
        tokens=Window(limit=6000.0, remaining=5990.0, reset=90.5),
    )


def test_parse_rate_limits_ignores_case_and_missing_headers() -> None:
    seen = parse_rate_limits(_CaseInsensitiveHeaders({"X-RateLimit-Remaining-Tokens": "12"}))
    assert seen == RateLimitHeaders(requests=Window(), tokens=Window(remaining=12.0))
    assert parse_rate_limits({}) == RateLimitHeaders(Window(), Window())


@pytest.mark.parametrize("bad", ["abc", "", "-5", "inf", "nan", "1_000", "+5", "0x10"])
def test_parse_rate_limits_ignores_garbage(bad: str) -> None:
    kinds = ("limit", "remaining", "reset")
    seen = parse_rate_limits({f"x-ratelimit-{kind}-tokens": bad for kind in kinds})
    assert seen.tokens == Window()


def test_a_zero_limit_is_no_limit_but_zero_remaining_is_zero() -> None:
    seen = parse_rate_limits({"x-ratelimit-limit-requests": "0", "x-ratelimit-remaining-requests": "0"})
    assert seen.requests == Window(limit=None, remaining=0.0)


# -- what the three headers of one limit say together -------------------------------------


@pytest.mark.parametrize(
    ("window", "capacity"),
    [
        (Window(limit=1200, remaining=1199, reset=0.05), 1200.0),  # OpenAI: a minute's worth
        (Window(limit=1200, remaining=0, reset=1.0), 20.0),  # a server enforcing one second
        (Window(limit=600, remaining=10, reset=3600.0), 600.0),  # never more than the limit
        (Window(limit=600, remaining=10), None),
        (Window(remaining=10, reset=1.0), None),
        (Window(limit=600, reset=1.0), None),
    ],
)
def test_window_capacity(window: Window, capacity: float | None) -> None:
    assert window.capacity == (None if capacity is None else pytest.approx(capacity))


@pytest.mark.parametrize(
    ("window", "amount", "wait"),
    [
        (Window(limit=600, remaining=0, reset=6.0), 1, 0.1),  # refills at 10/s
        (Window(limit=600, remaining=0, reset=0.05), 1, 0.05),  # never later than the reset
        (Window(limit=6000, remaining=40, reset=59.4), 100, 0.6),
        (Window(limit=6000, remaining=0, reset=60.0), 10_000, 60.0),  # more than the limit: full
        (Window(remaining=0, reset=2.0), 1, 2.0),
        (Window(limit=600, remaining=3, reset=1.0), 1, None),  # room now
        (Window(limit=600, remaining=0), 1, None),  # no reset: nothing said
    ],
)
def test_window_wait_for(window: Window, amount: float, wait: float | None) -> None:
    assert window.wait_for(amount) == (None if wait is None else pytest.approx(wait))


def test_exhausted_wait_reads_garbage_as_nothing() -> None:
    assert exhausted_wait(None, 10) is None
    assert exhausted_wait({}, 10) is None
    assert exhausted_wait({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "soon"}, 10) is None
    assert exhausted_wait({"x-ratelimit-remaining-requests": "nan", "x-ratelimit-reset-requests": "1s"}, 10) is None
    assert exhausted_wait({"X-RateLimit-Remaining-Tokens": "0", "X-RateLimit-Reset-Tokens": "250ms"}, 10) == 0.25
