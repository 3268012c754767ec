"""Limits remembered between processes: a new limiter starts at full speed, headers correct it."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from _headers_data import OPENAI_HEADERS

import llmframe
from llmframe import _limits_store
from llmframe._cache_admin import default_cache_dir
from llmframe._quota import Quota
from llmframe._shared_limiter import _registry, shared_limiter
from llmframe.testing import FakeServer

SECRET = "sk-remember-DO-NOT-LEAK-123456"


def _new_process() -> None:
    """What a new process knows: nothing in memory, only the files."""
    from llmframe._capabilities import MEMORY

    _registry.clear()
    _limits_store._known.clear()
    MEMORY.clear()


def test_remembered_limits_end_probing_and_the_next_headers_replace_them() -> None:
    quota = Quota(None, None)
    quota.remember(1000, 50_000)
    assert not quota.probing and (quota.rpm, quota.tpm) == (1000.0, 50_000.0)
    from llmframe._headers import parse_rate_limits

    quota.learn(parse_rate_limits(OPENAI_HEADERS))
    assert not quota.remembered
    assert (quota.rpm, quota.tpm) != (1000.0, 50_000.0)


def test_remembered_limits_are_gone_when_the_endpoint_stops_sending_them() -> None:
    from llmframe._headers import parse_rate_limits

    quota = Quota(None, None)
    quota.remember(1000, 50_000)
    quota.learn(parse_rate_limits({}))
    assert (quota.rpm, quota.tpm) == (None, None) and not quota.probing


def test_what_this_process_saw_wins_over_the_memory() -> None:
    from llmframe._headers import parse_rate_limits

    quota = Quota(None, None)
    quota.learn(parse_rate_limits({}))
    quota.remember(10, 10)
    assert (quota.rpm, quota.tpm) == (None, None)


def test_a_new_process_starts_from_the_stored_limits_without_the_key() -> None:
    url = "https://remember-one.example.com/v1"
    first = shared_limiter(url, SECRET, "m")
    assert first.stats.probing
    first.observe(OPENAI_HEADERS)
    learned = (first.rpm, first.tpm)
    stored = (default_cache_dir() / _limits_store.LIMITS_FILE).read_text()
    assert SECRET not in stored and "remember-one.example.com" in stored

    _new_process()
    second = shared_limiter(url, SECRET, "m")
    assert second is not first
    assert not second.stats.probing and (second.rpm, second.tpm) == learned
    other_key = shared_limiter(url, SECRET + "x", "m")
    assert other_key.stats.probing, "another key may have other limits"


def test_given_limits_still_cap_remembered_ones() -> None:
    url = "https://remember-two.example.com/v1"
    shared_limiter(url, SECRET, "m").observe(OPENAI_HEADERS)
    _new_process()
    limiter = shared_limiter(url, SECRET, "m", rpm=3)
    assert limiter.rpm == 3


def test_credentials_in_the_url_are_not_stored() -> None:
    url = "https://user:hunter2@remember-three.example.com/v1?token=abc"
    shared_limiter(url, None, "m").observe(OPENAI_HEADERS)
    stored = (default_cache_dir() / _limits_store.LIMITS_FILE).read_text()
    assert "hunter2" not in stored and "token=abc" not in stored


def test_a_second_run_in_a_new_process_sends_its_first_requests_together(tmp_path: Any) -> None:
    df = pd.DataFrame({"q": [f"question {i}" for i in range(8)]})
    with FakeServer(rpm=6000, tpm=1_000_000, latency=0.05) as server:
        kw: dict[str, Any] = {"model": "m", "base_url": server.base_url, "api_key": server.api_key,
                              "batch_size": 1, "progress": False}  # fmt: skip
        llmframe.apply(df, "A {q}", cache=tmp_path, **kw)
        entry = json.loads((default_cache_dir() / _limits_store.LIMITS_FILE).read_text())
        assert any(v["rpm"] == 6000 and v["headers"] for v in entry.values())
        _new_process()
        llmframe.apply(df, "B {q}", cache=tmp_path, **kw)
        log = server.stats.log[-8:]
        first = min(r.t_start for r in log)
        # Without the memory the first request would go alone (a probe), the rest after it.
        assert sum(r.t_start < first + 0.04 for r in log) >= 4
