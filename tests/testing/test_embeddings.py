"""The embeddings endpoint: deterministic unit vectors, floats or base64."""

from __future__ import annotations

import math
from typing import Any

import openai
import pytest
from _support import run

from llmframe.testing import FakeServer
from llmframe.testing._embeddings import embedding


@pytest.fixture
def server(fake_server: FakeServer) -> FakeServer:
    return fake_server


def test_embeddings_are_deterministic_unit_vectors(server: FakeServer) -> None:
    async def embed(client: openai.AsyncOpenAI) -> Any:
        return await client.embeddings.create(model="text-embedding-3-small", input=["a", "b", "a"])

    reply = run(embed, server)  # the SDK asks for base64 by default
    vectors = [item.embedding for item in reply.data]
    assert len(vectors[0]) == 1536
    assert vectors[0] == vectors[2] != vectors[1]
    assert abs(math.fsum(v * v for v in vectors[1]) - 1.0) < 1e-4
    assert reply.usage.prompt_tokens == 3

    async def floats(client: openai.AsyncOpenAI) -> Any:
        return await client.embeddings.create(
            model="text-embedding-3-small", input="a", dimensions=8, encoding_format="float"
        )

    small = run(floats, server).data[0].embedding
    assert len(small) == 8


def test_embedding_is_a_unit_vector_per_text() -> None:
    vector = embedding("a", 16)
    assert len(vector) == 16 and abs(math.fsum(v * v for v in vector) - 1.0) < 1e-6
    assert vector == embedding("a", 16) != embedding("b", 16)
