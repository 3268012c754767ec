"""The model catalogue: GET /v1/models and /v1/models/{model}."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest
from _support import MODEL, run

from llmframe.testing import FakeServer


@pytest.fixture
def server(fake_server: FakeServer) -> FakeServer:
    return fake_server


def test_models(server: FakeServer) -> None:
    async def models(client: openai.AsyncOpenAI) -> list[str]:
        return [model.id async for model in client.models.list()]

    assert MODEL in run(models, server)


def test_one_model_by_name_and_the_key_check(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory(api_keys="sk-right")

    async def retrieve(client: openai.AsyncOpenAI) -> Any:
        return await client.models.retrieve("any-name")

    model = run(retrieve, server)
    assert (model.id, model.object, model.owned_by) == ("any-name", "model", "llmframe-fake")
    with pytest.raises(openai.AuthenticationError):
        run(retrieve, server, api_key="sk-wrong")
