"""For the fake server's tests: a real ``openai`` client against a running server, default settings."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import openai
import pytest

from llmframe.testing import FakeServer, expected_answer
from llmframe.testing._settings import Settings

T = TypeVar("T")
MODEL = "gpt-4o-mini"
TEMPLATE = "Classify the sentiment of this review: {review} ({stars} stars) {{not a field}}"
ITEMS = [
    {"review": "Great value", "stars": "5"},
    {"review": "Broke after a day", "stars": "1"},
    {"review": "Très bien, mais cher", "stars": "4"},
    {"review": 'Said "meh"\nand left', "stars": "3"},
    {"review": "{review} is not a placeholder in a value", "stars": "2"},
]


def run(
    make: Callable[[openai.AsyncOpenAI], Awaitable[T]], server: FakeServer, **options: Any
) -> T:
    """Run ``make(client)`` with a fresh AsyncOpenAI client on a fresh event loop."""

    async def main() -> T:
        async with openai.AsyncOpenAI(
            base_url=server.base_url,
            api_key=options.pop("api_key", server.api_key),
            max_retries=0,
            **options,
        ) as client:
            return await make(client)

    return asyncio.run(main())


def ask(server: FakeServer, content: str = "Hi", **params: Any) -> Any:
    messages = params.pop("messages", [{"role": "user", "content": content}])
    return run(
        lambda c: c.chat.completions.create(model=MODEL, messages=messages, **params), server
    )


def ask_raw(server: FakeServer, messages: Any, **params: Any) -> Any:
    return run(
        lambda c: c.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, **params
        ),
        server,
    )


def fails(server: FakeServer, error: type[Exception], **params: Any) -> Any:
    with pytest.raises(error) as caught:
        ask(server, **params)
    return caught.value


def rendered(item: dict[str, str]) -> str:
    return TEMPLATE.format_map(item)


def expected_packed() -> dict[str, str]:
    return {str(i): expected_answer(rendered(item)) for i, item in enumerate(ITEMS)}


_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:([\d.]+)s)?(?:(\d+)ms)?$")


def parse_duration(text: str) -> float:
    match = _DURATION.match(text)
    assert match and text, f"not an OpenAI duration: {text!r}"
    hours, minutes, seconds, ms = match.groups()
    return (
        int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0) + int(ms or 0) / 1000
    )


#: FakeServer's defaults, as Settings fields.
DEFAULTS: dict[str, Any] = {
    "rpm": None,
    "tpm": None,
    "latency": 0.0,
    "latency_per_token": 0.0,
    "faults": None,
    "answer_fn": None,
    "api_keys": None,
    "burst_seconds": 60.0,
    "json_schema": True,
    "json_object": True,
    "hang_seconds": 3600.0,
    "model_context": 128_000,
}


def settings(**changes: Any) -> Settings:
    """FakeServer's default settings, with ``changes``."""
    return Settings.of({**DEFAULTS, **changes})
