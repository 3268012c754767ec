"""An httpx transport for tests: real HTTP to the fake server, except that the next calls to a
path get scripted answers first (a 429, a 5xx, a 403, ...), as a server or a proxy in front of
it would send them. ``lost=True``: the call reaches the server (which acts on it) and the
answer is lost on the way back, replaced by the scripted one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

try:
    import httpx2 as httpx  # the transport of openai >= 3
except ImportError:  # pragma: no cover - openai 1.x/2.x
    import httpx  # type: ignore[no-redef]
import openai

from llmframe.testing import FakeServer


@dataclass
class Answer:
    status: int
    message: str = "scripted"
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    lost: bool = False

    def response(self, request: httpx.Request) -> httpx.Response:
        body = {"error": {"message": self.message, "type": "invalid_request_error", "param": None,
                          "code": self.code}}  # fmt: skip
        return httpx.Response(self.status, json=body, headers=self.headers, request=request)


class Scripted(httpx.AsyncBaseTransport):
    """``script``: ``(method, path)`` -> the answers its next calls get, in order."""

    def __init__(self, script: dict[tuple[str, str], list[Answer]]) -> None:
        self.script = {key: list(answers) for key, answers in script.items()}
        self.calls: list[tuple[str, str, int]] = []  # (method, path, status the client got)
        self._real = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        key = (request.method, request.url.path)
        queue = self.script.get(key)
        if queue:
            answer = queue.pop(0)
            if answer.lost:
                reached = await self._real.handle_async_request(request)
                await reached.aread()
                await reached.aclose()
            else:
                await request.aread()
            response = answer.response(request)
        else:
            response = await self._real.handle_async_request(request)
        self.calls.append((*key, response.status_code))
        return response

    async def aclose(self) -> None:
        await self._real.aclose()

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.calls if (m, p) == (method, path))


def scripted_client(server: FakeServer, transport: Scripted, api_key: str | None = None) -> Any:
    """An ``AsyncOpenAI`` for ``server`` over ``transport`` (build it inside the running loop)."""
    return openai.AsyncOpenAI(base_url=server.base_url, api_key=api_key or server.api_key,
                              http_client=httpx.AsyncClient(transport=transport))  # fmt: skip
