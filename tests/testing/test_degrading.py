"""The fake server's degrading model: packed answers that go wrong as batches grow."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import openai
import pytest

from llmframe._packing import packed_messages
from llmframe.testing import Degrade, FakeServer, Faults, expected_answer
from llmframe.testing._degrade import degrade_answers, wrong_answer

MODEL = "gpt-4o-mini"
TEMPLATE = "Capital of {country}?"


def items(n: int) -> list[dict[str, str]]:
    return [{"country": f"country {i}"} for i in range(n)]


def right(n: int) -> list[str]:
    return [expected_answer(TEMPLATE.format_map(item)) for item in items(n)]


def ask_packed(server: FakeServer, n: int) -> list[str]:
    """Send one packed request of ``n`` items; the answers in id order (every id must be there)."""

    async def main() -> Any:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key=server.api_key, max_retries=0
        ) as client:
            return await client.chat.completions.create(
                model=MODEL, messages=packed_messages(TEMPLATE, None, items(n))
            )

    reply = asyncio.run(main())
    answers = json.loads(reply.choices[0].message.content)
    assert sorted(answers, key=int) == [str(i) for i in range(n)], "every id, once"
    return [answers[str(i)] for i in range(n)]


def ask_one(server: FakeServer, prompt: str) -> str:
    async def main() -> Any:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key=server.api_key, max_retries=0
        ) as client:
            return await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}]
            )

    return str(asyncio.run(main()).choices[0].message.content)


# ------------------------------------------------------------------ the curve, as pure code


def test_error_rate_formula() -> None:
    d = Degrade(error_per_item=0.02, start=10)
    assert [d.error_rate(n) for n in (1, 5, 10, 11, 20, 50, 100)] == pytest.approx(
        [0.0, 0.0, 0.0, 0.02, 0.2, 0.8, 1.0]
    )
    # Even with start=0, one item alone is never degraded.
    assert Degrade(error_per_item=1.0, start=0).error_rate(1) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"error_per_item": 1.5}, "error_per_item"),
        ({"error_per_item": float("nan")}, "error_per_item"),
        ({"error_per_item": True}, "error_per_item"),
        ({"start": -1}, "start"),
        ({"start": 2.5}, "start"),
        ({"shift_after": 0}, "shift_after"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Degrade(**kwargs)


def test_coerce() -> None:
    assert Degrade.coerce(None) is None
    assert Degrade.coerce({"start": 3}) == Degrade(start=3)
    with pytest.raises(TypeError, match="degrade must be"):
        Degrade.coerce(0.5)  # type: ignore[arg-type]


def test_wrong_answers_are_wrong_and_deterministic() -> None:
    assert wrong_answer("p", "right") == wrong_answer("p", "right") != "right"
    collide = wrong_answer("p", "x")
    assert wrong_answer("p", collide) != collide


def test_errors_grow_monotonically_with_batch_size() -> None:
    d = Degrade(error_per_item=0.01, start=5, seed=3)
    prompts = [f"prompt {i}" for i in range(2000)]
    wrong_at = {n: {p for p in prompts if d.is_wrong(p, n)} for n in (5, 10, 20, 50)}
    assert wrong_at[5] == set()
    assert wrong_at[10] <= wrong_at[20] <= wrong_at[50]
    for n in (10, 20, 50):  # the observed share follows p(n)
        assert len(wrong_at[n]) / len(prompts) == pytest.approx(d.error_rate(n), abs=0.03)
    other_seed = Degrade(error_per_item=0.01, start=5, seed=4)
    assert {p for p in prompts if other_seed.is_wrong(p, 50)} != wrong_at[50]


def test_shift_moves_answers_one_row_back() -> None:
    d = Degrade(error_per_item=0.0, shift_after=2)
    prompts, answers = ["p0", "p1", "p2", "p3", "p4"], ["a0", "a1", "a2", "a3", "a4"]
    assert degrade_answers(d, prompts, answers, 5) == ["a0", "a1", "a1", "a2", "a3"]
    assert degrade_answers(d, prompts[:2], answers[:2], 2) == ["a0", "a1"]  # not more than k
    assert degrade_answers(d, prompts[:3], answers[:3], 3) == ["a0", "a1", "a1"]


# ----------------------------------------------------------------------- over real HTTP


def test_packed_answers_degrade_but_keep_every_id(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory(degrade=Degrade(error_per_item=0.02, start=10))
    assert ask_packed(server, 10) == right(10)
    assert server.stats.degraded == 0
    answers = ask_packed(server, 50)
    wrong = sum(a != r for a, r in zip(answers, right(50), strict=True))
    assert wrong == server.stats.degraded
    assert 25 <= wrong <= 50  # p(50) = 0.8
    # The same request gets the same answers (a model at temperature 0), whatever the seed.
    server.configure(seed=123)
    assert ask_packed(server, 50) == answers
    assert server.stats.packing_faults == {}


def test_one_row_requests_are_never_degraded(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory(degrade=Degrade(error_per_item=1.0, start=0, shift_after=1))
    prompt = TEMPLATE.format(country="France")
    assert ask_one(server, prompt) == expected_answer(prompt)
    assert server.stats.degraded == 0


def test_shift_mode_over_http(fake_server_factory: Callable[..., FakeServer]) -> None:
    server = fake_server_factory(degrade={"error_per_item": 0.0, "shift_after": 4})
    expected = right(10)
    assert ask_packed(server, 4) == expected[:4]
    assert ask_packed(server, 10) == expected[:4] + expected[3:9]
    assert server.stats.degraded == 6


def test_configure_turns_degrading_on_and_off(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory()
    assert ask_packed(server, 20) == right(20)
    server.configure(degrade=Degrade(error_per_item=1.0, start=0))
    assert all(a != r for a, r in zip(ask_packed(server, 20), right(20), strict=True))
    server.configure(degrade=None)
    assert ask_packed(server, 20) == right(20)
    assert server.stats.degraded == 20
    server.reset_stats()
    assert server.stats.degraded == 0 and server.stats.snapshot()["degraded"] == 0


def test_degrading_combines_with_packing_faults(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory(
        degrade=Degrade(error_per_item=0.0, shift_after=2), faults=Faults(prose_rate=1.0)
    )

    async def main() -> Any:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key=server.api_key, max_retries=0
        ) as client:
            return await client.chat.completions.create(
                model=MODEL, messages=packed_messages(TEMPLATE, None, items(4))
            )

    content = asyncio.run(main()).choices[0].message.content
    assert content.startswith("Here are the answers")
    expected = right(4)
    fenced = content.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(fenced) == {
        "0": expected[0],
        "1": expected[1],
        "2": expected[1],
        "3": expected[2],
    }
    assert server.stats.packing_faults == {"prose": 1} and server.stats.degraded == 2
