"""The fake server as a whole: its public names, its life cycle, and configure() while it runs.

What each endpoint answers is tested beside its module (``test_chat``,
``test_requests``, ``test_embeddings``, ``test_catalog``), the buckets as
pure code in ``test_limits``, the settings in ``test_settings``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

import openai
import pytest
from _support import ask, ask_raw, fails

import llmframe.testing
from llmframe.testing import FakeServer, Faults, expected_answer


@pytest.fixture
def server(fake_server: FakeServer) -> FakeServer:
    return fake_server


# ------------------------------------------------------------------ public API


def test_public_names() -> None:
    assert llmframe.testing.__all__ == [
        "Degrade",
        "FakeServer",
        "Faults",
        "expected_answer",
        "expected_value",
    ]


def test_expected_answer_is_short_and_deterministic() -> None:
    answer = expected_answer("Hello")
    assert answer == expected_answer("Hello") != expected_answer("Hello!")
    assert re.fullmatch(r"a[0-9a-f]{7}", answer)


def test_faults_validate_rates() -> None:
    with pytest.raises(ValueError, match="drop_rate"):
        Faults(drop_rate=1.5)
    with pytest.raises(ValueError, match="must not exceed 1"):
        Faults(error_rate=0.6, hang_rate=0.6)


def test_configure_changes_limits_while_running(server: FakeServer) -> None:
    assert (
        "x-ratelimit-limit-requests"
        not in ask_raw(server, [{"role": "user", "content": "a"}]).headers
    )
    server.configure(rpm=1, burst_seconds=60)
    ask(server, "b")
    fails(server, openai.RateLimitError, content="c")
    server.configure(rpm=None)
    assert ask(server, "d").choices[0].message.content == expected_answer("d")


def test_stop_cancels_hanging_requests_promptly(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory(faults=Faults(hang_rate=1.0), hang_seconds=3600)
    errors: list[BaseException] = []

    def hang() -> None:
        try:
            ask(server, "x", timeout=30)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=hang)
    thread.start()
    deadline = time.monotonic() + 5
    while server.stats.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.stats.in_flight == 1
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 1.0
    thread.join(5)
    assert len(errors) == 1 and isinstance(errors[0], openai.APIConnectionError)
    assert not server.running


# ------------------------------------------------------ life cycle and fixtures


def test_fixture_and_context_manager(fake_server: FakeServer) -> None:
    assert fake_server.running
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", fake_server.base_url)
    assert fake_server.api_key == "fake-key"
    assert ask(fake_server).choices[0].message.content == expected_answer("Hi")
    fake_server.stop()
    fake_server.stop()  # idempotent
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake_server.base_url


def test_invalid_settings_are_refused(server: FakeServer) -> None:
    with pytest.raises(ValueError, match="rpm"):
        FakeServer(rpm=0)
    with pytest.raises(ValueError, match="latency"):
        server.configure(latency=-1)
    assert ask(server).choices[0].message.content  # still serving, unchanged
