"""Failures that hit every row stop the run early with one clear error.

A dead endpoint, a bad key, an unknown model and a parameter the endpoint rejects
each fail within 3 requests and 2 seconds, through the real ``openai`` client
over HTTP, with ``errors="null"`` too (a frame of all nulls is never what was
asked for), and no API key in the message. OpenAI's endpoint with no key at all
is a ``ConfigError`` before any request.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from typing import Any

import pandas as pd
import pytest

import llmframe
from llmframe import AuthenticationError, ConfigError, EndpointError
from llmframe._claims import CLAIMS_FILE
from llmframe._client import UNREACHABLE, CallError
from llmframe._endpoint import UNREACHABLE_SECONDS, EndpointState
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
    # Raised by a script's apply, the error stands alone: no "During handling of the above
    # exception" with the RuntimeError that found no event loop running.
    assert info.value.__context__ is None, repr(info.value.__context__)
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
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):  # named, not defaulted: the same
        FRAME.llm.apply("Sentiment of: {review}", output="s", model="gpt-4o-mini", progress=False,
                        base_url="https://api.openai.com/v1")  # fmt: skip
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


def test_after_replies_it_stops_once_refused_for_a_while_and_a_reply_resets_it() -> None:
    """Counted in time, not attempts: 32 requests in flight refuse at once in one blip."""
    state = _state()
    state.attempted(None, now=0.0)
    for _ in range(100):  # a restart blip seen by every request in flight, and their retries
        state.attempted(_unreachable(), now=1.0)
    state.attempted(_unreachable(), now=1.0 + UNREACHABLE_SECONDS - 0.1)
    assert state.fatal is None
    state.attempted(None, now=12.0)  # the server came back: the clock starts again
    state.attempted(_unreachable(), now=13.0)
    state.attempted(_unreachable(), now=13.0 + UNREACHABLE_SECONDS - 0.1)
    assert state.fatal is None
    state.attempted(_unreachable(), now=13.0 + UNREACHABLE_SECONDS)
    assert state.fatal is not None
    assert f"for {UNREACHABLE_SECONDS:.0f} s, after it had answered" in state.fatal.message


def test_a_server_restart_mid_run_does_not_stop_it(fake_server_factory: Any) -> None:
    """The server stops and comes back on the same port while requests are in flight: the
    refused attempts are retried and every row is answered."""
    import threading

    server = fake_server_factory(latency=0.05)
    port = server.port
    frame = pd.DataFrame({"review": [f"restart review {i}" for i in range(400)]})

    def blip() -> None:
        deadline = time.monotonic() + 30
        while server.stats.requests < 10 and time.monotonic() < deadline:
            time.sleep(0.002)
        server.stop()
        time.sleep(0.3)  # the outage; the test's own timing, not the library's
        restarted = FakeServer(latency=0.05, port=port).start()
        blip.restarted = restarted  # type: ignore[attr-defined]

    thread = threading.Thread(target=blip)
    thread.start()
    try:
        out = frame.llm.apply("Sentiment of: {review}", output="s", base_url=server.base_url, model="fake-model",
                              api_key=SECRET, progress=False, batch_size=1, max_concurrency=16)  # fmt: skip
    finally:
        thread.join()
        getattr(blip, "restarted", server).stop()
    assert out["s"].notna().all()


def _open_files() -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_a_run_that_cannot_start_leaves_nothing_open(fake_server: FakeServer, tmp_path: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """An unusable limiter folder is a ConfigError, and the cache, its log and the claim
    store opened before it are all closed: nothing leaks, no claim is left behind."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "limiters").write_text("")  # a file where the machine limiter wants its folder
    monkeypatch.setenv("LLMFRAME_CACHE_DIR", str(home))
    before = _open_files()
    for _ in range(2):
        with pytest.raises(ConfigError, match="limiter='machine'"):
            _apply(fake_server.base_url, limiter="machine", cache=str(tmp_path / "answers"))
    assert [f for f in _open_files() if f not in before] == []
    with sqlite3.connect(tmp_path / "answers" / CLAIMS_FILE) as db:
        assert db.execute("select count(*) from claims").fetchone() == (0,)
        assert db.execute("select count(*) from runs").fetchone() == (0,)  # the run let go of its lease
