"""One Endpoint for a call: the run and the estimate share its limiter, whatever the key."""

from __future__ import annotations

from typing import Any

import openai
import pandas as pd
import pytest

import llmframe
from llmframe._endpoint import Endpoint
from llmframe.testing import FakeServer

TEMPLATE = "Label this: {text}"


def frame() -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(30)]})


@pytest.mark.parametrize("how", ["keyless", "key", "client"])
def test_estimate_sees_the_limits_the_run_learned(fake_server_factory: Any, how: str) -> None:
    # The server announces its limits in x-ratelimit-* headers; the run learns them into
    # its endpoint's shared limiter. An estimate of the same call, with no rpm=/tpm=,
    # can only know them if it reads that same limiter.
    server: FakeServer = fake_server_factory(rpm=600, tpm=500_000)
    options: dict[str, Any] = {"model": "gpt-4o-mini", "progress": False, "cache": False}
    if how == "client":
        options["client"] = openai.AsyncOpenAI(base_url=server.base_url, api_key="client-key")
    else:
        options["base_url"] = server.base_url
        if how == "key":
            options["api_key"] = "a-key"
    before = llmframe.estimate(frame(), TEMPLATE, **options)
    assert before.rpm is None and before.seconds is None  # nothing learned yet
    frame().llm.apply(TEMPLATE, **options)
    after = llmframe.estimate(frame(), TEMPLATE, **options)
    assert (after.rpm, after.tpm) == (600, 500_000)
    assert after.seconds is not None


def test_endpoint_identity_never_holds_the_key() -> None:
    a = Endpoint.of(model="m", base_url="http://127.0.0.1:9/v1/", api_key="sk-secret-123456")
    b = Endpoint.of(model="m", base_url="http://127.0.0.1:9/v1", api_key="sk-secret-123456")
    c = Endpoint.of(model="m", base_url="http://127.0.0.1:9/v1", api_key="sk-other-1234567")
    assert a == b and a != c
    assert "sk-secret" not in repr(a) and "sk-secret" not in a.key_hash
    assert a.limiter() is b.limiter() and a.limiter() is not c.limiter()


def test_keyless_endpoint_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    from_env = Endpoint.of(model="m")
    assert from_env == Endpoint.of(model="m", base_url="http://127.0.0.1:9/v1")
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert Endpoint.of(model="m").base_url == "https://api.openai.com/v1"
