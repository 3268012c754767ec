"""Failures that hit every row stop the run early with one clear error.

A dead endpoint, a bad key, an unknown model and a parameter the endpoint rejects
each fail within 3 requests and 2 seconds, through the real ``openai`` client
over HTTP, with ``errors="null"`` too (a frame of all nulls is never what was
asked for), and no API key in the message. OpenAI's endpoint with no key at all
is a ``ConfigError`` before any request.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import pytest

import llmframe
from llmframe import AuthenticationError, ConfigError, EndpointError
from llmframe._client import UNREACHABLE, CallError
from llmframe._endpoint import UNREACHABLE_STREAK, EndpointState
from llmframe.testing import FakeServer

SECRET = "sk-test-SECRET-0123456789abcdef"
FRAME = pd.DataFrame({"review": [f"review number {i}" for i in range(40)]})


def _apply(base_url: str, **kwargs: Any) -> Any:
    options: dict[str, Any] = {"model": "fake-model", "api_key": SECRET, "errors": "null",
                               "progress": False, "batch_size": 5, **kwargs}  # fmt: skip
    return FRAME.llm.apply("Sentiment of: {review}", output="s", base_url=base_url, **options)


def _fails_fast(expected: type[Exception], match: str, base_url: str, **kwargs: Any) -> Any:
    start = time.monotonic()
    with pytest.raises(expected, match=match) as info:
        _apply(base_url, **kwargs)
    seconds = time.monotonic() - start
    report = info.value.report  # type: ignore[attr-defined]
    assert report.requests <= 3, f"{report.requests} requests before the stop"
    assert seconds < 2.0, f"{seconds:.2f} s before the stop"
    assert SECRET not in str(info.value)
    assert all(SECRET not in e.message for e in info.value.errors)  # type: ignore[attr-defined]
    assert len(info.value.errors) == len(FRAME)  # type: ignore[attr-defined]  # every row accounted for
    return info.value


def _dead_url() -> str:
    server = FakeServer().start()
    url = server.base_url
    server.stop()  # nothing listens on that port any more
    return url


def test_connection_refused_stops_at_the_first_attempt() -> None:
    url = _dead_url()
    err = _fails_fast(EndpointError, "connection refused", url)
    assert url.rstrip("/") in str(err)
    assert err.report.retries == 0


def test_a_host_name_that_does_not_resolve_stops_at_the_first_attempt() -> None:
    err = _fails_fast(EndpointError, "does not resolve", "http://llmframe-no-such-host.invalid/v1")
    assert "llmframe-no-such-host.invalid" in str(err)


def test_a_refused_key_stops_with_one_error(fake_server_factory: Any) -> None:
    server = fake_server_factory(api_keys=["the-right-key-123456"])
    _fails_fast(AuthenticationError, "refused the API key", server.base_url)
    assert server.stats.unauthorized <= 3


def test_an_unknown_model_stops_with_one_error(fake_server_factory: Any) -> None:
    server = fake_server_factory(models=["another-model"])
    _fails_fast(EndpointError, "check model= and base_url=", server.base_url)


def test_a_rejected_parameter_stops_with_one_error(fake_server_factory: Any) -> None:
    server = fake_server_factory(unsupported_params=("temperature",))
    _fails_fast(EndpointError, r"rejects params\['temperature'\]", server.base_url,
                params={"temperature": 0.3})  # fmt: skip
    assert server.stats.bad_requests <= 3


def test_a_dead_endpoint_keeps_what_was_answered(fake_server: FakeServer) -> None:
    """Rows answered before the stop are cached: the next run sends only the others."""
    half = FRAME.iloc[:20]
    half.llm.apply("Sentiment of: {review}", output="s", base_url=fake_server.base_url, model="fake-model",
                   api_key=SECRET, progress=False)  # fmt: skip
    with pytest.raises(EndpointError) as info:
        _apply(_dead_url())
    assert info.value.report.cached_rows == 20
    assert len(info.value.errors) == 20


def test_no_key_for_openai_is_a_config_error_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        FRAME.llm.apply("Sentiment of: {review}", output="s", model="gpt-4o-mini", progress=False)
    # A local server needs no key; a run the cache answers whole needs none either.
    server = FakeServer().start()
    try:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        out = FRAME.llm.apply("Sentiment of: {review}", output="s", model="fake-model", progress=False)
        monkeypatch.delenv("OPENAI_BASE_URL")
        again = FRAME.llm.apply("Sentiment of: {review}", output="s", model="fake-model", progress=False,
                                base_url=None)  # fmt: skip
        assert list(again["s"]) == list(out["s"])
    finally:
        server.stop()


def test_an_estimate_needs_no_key() -> None:
    estimate = llmframe.estimate(FRAME, "Sentiment of: {review}", model="gpt-4o-mini")
    assert estimate.rows == len(FRAME)


# -- the rule, without a network -----------------------------------------------------


def _state() -> EndpointState:
    return EndpointState("k", None, {}, "auto", learns=False)


def _unreachable() -> CallError:
    return CallError("connection", "could not connect to the endpoint", True, code=UNREACHABLE)


def test_before_any_reply_one_unreachable_attempt_stops() -> None:
    state = _state()
    state.attempted(CallError("connection", "reset by peer", True))  # open, then broke: retried
    assert state.fatal is None
    state.attempted(_unreachable())
    assert state.fatal is not None and "could not connect" in state.fatal.message


def test_after_replies_a_streak_stops_and_a_reply_resets_it() -> None:
    state = _state()
    state.attempted(None)
    for _ in range(UNREACHABLE_STREAK - 1):
        state.attempted(_unreachable())
    state.attempted(None)  # the server came back: the streak starts again
    for _ in range(UNREACHABLE_STREAK - 1):
        state.attempted(_unreachable())
    assert state.fatal is None
    state.attempted(_unreachable())
    assert state.fatal is not None
    assert f"{UNREACHABLE_STREAK} attempts in a row" in state.fatal.message
