"""pytest fixtures for the fake OpenAI server, registered through the ``pytest11`` entry point.

``fake_server``
    A running :class:`~llmframe.testing.FakeServer` with default settings, stopped
    after the test::

        def test_answer(fake_server):
            client = openai.OpenAI(base_url=fake_server.base_url, api_key=fake_server.api_key)

``fake_server_factory``
    A callable ``(**settings) -> FakeServer`` that starts a server with those
    settings; every server it started is stopped after the test::

        def test_rate_limit(fake_server_factory):
            server = fake_server_factory(rpm=60, tpm=10_000)

The server is imported inside the fixtures, so test sessions that never use
them do not pay for importing aiohttp.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from llmframe.testing import FakeServer

__all__ = ["fake_server", "fake_server_factory"]


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """A running fake OpenAI server with default settings."""
    from llmframe.testing import FakeServer

    with FakeServer() as server:
        yield server


@pytest.fixture
def fake_server_factory() -> Iterator[Callable[..., FakeServer]]:
    """Start fake servers with any settings; all are stopped after the test."""
    from llmframe.testing import FakeServer

    servers: list[FakeServer] = []

    def start(**settings: Any) -> FakeServer:
        server = FakeServer(**settings)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        server.stop()
