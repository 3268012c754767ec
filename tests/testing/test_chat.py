"""The chat endpoint over real HTTP: answers, usage, limits and 429s, faults, latency."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest
from _support import (
    ITEMS,
    MODEL,
    TEMPLATE,
    ask,
    ask_raw,
    expected_packed,
    fails,
    parse_duration,
    rendered,
    run,
)

from llmframe import _tokens
from llmframe._packing import answers_schema, packed_messages
from llmframe.testing import FakeServer, Faults, expected_answer


@pytest.fixture
def server(fake_server: FakeServer) -> FakeServer:
    return fake_server


# --------------------------------------------------------------------- answers


def test_one_row_answer_and_usage(server: FakeServer) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Classify: great value"},
    ]
    raw = ask_raw(server, messages)
    reply = raw.parse()
    content = reply.choices[0].message.content
    assert content == expected_answer("Classify: great value")
    assert reply.id.startswith("chatcmpl-")
    assert reply.object == "chat.completion"
    assert reply.model == MODEL
    assert reply.choices[0].finish_reason == "stop"
    tokenizer = _tokens.get_tokenizer(MODEL)
    assert reply.usage.prompt_tokens == _tokens.count_messages(messages, tokenizer)
    assert reply.usage.completion_tokens == tokenizer.count(content)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert raw.headers["x-request-id"]
    assert int(raw.headers["openai-processing-ms"]) >= 0
    assert not any(name.startswith("x-ratelimit") for name in raw.headers)  # no limits set


def test_packed_request_answers_every_id_like_its_one_row_request(server: FakeServer) -> None:
    messages = packed_messages(TEMPLATE, "Be brief.", ITEMS)
    reply = ask(server, messages=messages, response_format=answers_schema(len(ITEMS)))
    content = reply.choices[0].message.content
    assert json.loads(content) == expected_packed()
    assert content == json.dumps(expected_packed(), ensure_ascii=False, separators=(",", ":"))
    one_row = ask(server, rendered(ITEMS[2])).choices[0].message.content
    assert json.loads(content)["2"] == one_row
    tokenizer = _tokens.get_tokenizer(MODEL)
    assert reply.usage.prompt_tokens == _tokens.count_messages(messages, tokenizer)
    assert reply.usage.completion_tokens == tokenizer.count(content)
    assert server.stats.items == len(ITEMS) + 1


def test_packed_item_missing_a_field_is_answered_with_a_guess(server: FakeServer) -> None:
    items = [{"review": "ok", "stars": "3"}, {"review": "no stars"}]
    reply = ask(server, messages=packed_messages(TEMPLATE, None, items))
    answers = json.loads(reply.choices[0].message.content)
    assert answers == {"0": expected_answer(rendered(items[0])), "1": "?"}


def test_packed_request_uses_the_last_task_block(server: FakeServer) -> None:
    system = "Earlier rules:\n<task>\nIgnore {review}\n</task>"
    reply = ask(server, messages=packed_messages(TEMPLATE, system, ITEMS[:2]))
    answers = json.loads(reply.choices[0].message.content)
    assert answers == {str(i): expected_answer(rendered(item)) for i, item in enumerate(ITEMS[:2])}


def test_answer_fn_overrides_the_default(fake_server_factory: Callable[..., FakeServer]) -> None:
    server = fake_server_factory(answer_fn=lambda prompt: prompt.upper())
    assert ask(server, "shout").choices[0].message.content == "SHOUT"
    reply = ask(server, messages=packed_messages("say {word}", None, [{"word": "hi"}]))
    assert json.loads(reply.choices[0].message.content) == {"0": "SAY HI"}


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_cuts_the_answer(
    fake_server_factory: Callable[..., FakeServer], param: str
) -> None:
    long_answer = "one two three four five six seven eight nine ten"
    server = fake_server_factory(answer_fn=lambda prompt: long_answer)
    reply = ask(server, "Hi", **{param: 3})
    content = reply.choices[0].message.content
    assert long_answer.startswith(content) and content != long_answer
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == _tokens.get_tokenizer(MODEL).count(content) <= 3
    assert ask(server, "Hi", **{param: 100}).choices[0].finish_reason == "stop"


# ----------------------------------------------------------------- rate limits


def test_rpm_limit_answers_429_with_openai_headers(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    # rpm=2: the bucket holds 2 requests and refills one every 30 s.
    server = fake_server_factory(rpm=2)
    first = ask_raw(server, [{"role": "user", "content": "one"}])
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert 29.9 <= parse_duration(first.headers["x-ratelimit-reset-requests"]) <= 30.0
    assert "x-ratelimit-limit-tokens" not in first.headers  # no TPM limit, no TPM headers
    ask(server, "two")

    error = fails(server, openai.RateLimitError, content="three")
    headers = error.response.headers
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert "requests per min (RPM): Limit 2, Used 2, Requested 1" in error.message
    retry_ms = int(headers["retry-after-ms"])
    assert 29_000 < retry_ms <= 30_000  # one request refills in 30 s, minus the time spent
    assert int(headers["retry-after"]) == math.ceil(retry_ms / 1000) == 30
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 59 < parse_duration(headers["x-ratelimit-reset-requests"]) <= 60
    match = re.search(r"Please try again in (\S+)\. ", error.message)
    assert match and abs(parse_duration(match.group(1)) - retry_ms / 1000) < 0.01
    assert server.stats.rate_limited == 1 and server.stats.ok == 2


@pytest.mark.alone  # the bucket refills while the test runs
def test_tpm_limit_counts_estimates_then_real_usage(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    # 600 tokens, refilled at 10 per second; every answer is about 200 tokens long.
    server = fake_server_factory(tpm=600, answer_fn=lambda prompt: "word " * 200)
    messages = [{"role": "user", "content": "Hi"}]
    prompt = _tokens.count_messages(messages, _tokens.get_tokenizer(MODEL))

    def remaining(raw: Any) -> int:
        return int(raw.headers["x-ratelimit-remaining-tokens"])

    # Without max_tokens the estimate is the prompt alone; the debit grows to the real usage.
    raw = ask_raw(server, messages)
    used = raw.parse().usage.total_tokens
    assert used > 200
    assert raw.headers["x-ratelimit-limit-tokens"] == "600"
    assert 600 - used <= remaining(raw) <= 600 - used + 2
    # With max_tokens the estimate is prompt + 300; the unused part comes back.
    raw = ask_raw(server, messages, max_tokens=300)
    assert 600 - 2 * used <= remaining(raw) <= 600 - 2 * used + 2
    left = remaining(raw)

    error = fails(server, openai.RateLimitError, max_tokens=300)
    assert error.type == "tokens"
    match = re.search(r"\(TPM\): Limit 600, Used (\d+), Requested (\d+)\.", error.message)
    assert match, error.message
    assert abs(int(match.group(1)) - (600 - left)) <= 2  # refilled a little meanwhile
    assert int(match.group(2)) == prompt + 300
    retry = int(error.response.headers["retry-after-ms"]) / 1000
    assert retry == pytest.approx((prompt + 300 - left) / 10, abs=0.5)
    assert abs(int(error.response.headers["x-ratelimit-remaining-tokens"]) - left) <= 2

    too_large = fails(server, openai.RateLimitError, max_tokens=1000)
    assert "Request too large" in too_large.message
    assert "retry-after-ms" not in too_large.response.headers  # waiting would never help


# ---------------------------------------------------------------------- faults


def test_error_fault(fake_server_factory: Callable[..., FakeServer]) -> None:
    server = fake_server_factory(faults=Faults(error_rate=1.0))
    error = fails(server, openai.InternalServerError)
    assert error.status_code in (500, 502, 503)
    assert error.type == "server_error"
    assert server.stats.server_errors == 1 and server.stats.ok == 0


def test_garbage_fault(fake_server_factory: Callable[..., FakeServer]) -> None:
    server = fake_server_factory(faults={"garbage_rate": 1.0})
    raw = ask_raw(server, [{"role": "user", "content": "x"}])
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("application/json")
    with pytest.raises(ValueError):
        json.loads(raw.content)
    assert server.stats.garbage == 1 and server.stats.ok == 0


def test_faults_are_drawn_per_attempt_not_per_body(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory(faults=Faults(error_rate=0.5), seed=1)

    async def same_body_twenty_times(client: openai.AsyncOpenAI) -> list[bool]:
        outcomes = []
        for _ in range(20):
            try:
                await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "same"}]
                )
                outcomes.append(True)
            except openai.InternalServerError:
                outcomes.append(False)
        return outcomes

    outcomes = run(same_body_twenty_times, server)
    assert any(outcomes) and not all(outcomes)
    assert server.stats.ok + server.stats.server_errors == 20


def _pairs(text: str) -> list[tuple[str, str]]:
    return json.loads(text, object_pairs_hook=list)  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["drop", "duplicate", "shuffle", "wrong_id", "truncate", "prose"])
def test_each_packing_fault_alone(
    fake_server_factory: Callable[..., FakeServer], kind: str
) -> None:
    server = fake_server_factory(faults=Faults(**{f"{kind}_rate": 1.0}))
    reply = ask(server, messages=packed_messages(TEMPLATE, None, ITEMS))
    content = reply.choices[0].message.content
    finish = reply.choices[0].finish_reason
    expected = expected_packed()
    correct_text = json.dumps(expected, separators=(",", ":"), ensure_ascii=False)
    assert server.stats.packing_faults == {kind: 1}
    assert server.stats.ok == 1
    if kind == "truncate":
        assert finish == "length"
        assert correct_text.startswith(content) and len(content) < len(correct_text)
        with pytest.raises(ValueError):
            json.loads(content)
        return
    assert finish == "stop"
    if kind == "prose":
        with pytest.raises(ValueError):
            json.loads(content)
        fenced = re.search(r"```json\n(.*?)\n```", content, re.DOTALL)
        assert fenced and json.loads(fenced.group(1)) == expected
        return
    pairs = _pairs(content)
    keys = [key for key, _ in pairs]
    if kind == "drop":
        assert len(pairs) == len(expected) - 1
        assert all(expected[key] == value for key, value in pairs)
    elif kind == "duplicate":
        assert len(pairs) == len(expected) + 1
        (twice,) = {key for key in keys if keys.count(key) == 2}
        assert sorted(set(keys)) == sorted(expected)
        values = [value for key, value in pairs if key == twice]
        assert expected[twice] in values and len(set(values)) == 2
    elif kind == "shuffle":
        assert sorted(keys) == sorted(expected)
        wrong = [key for key, value in pairs if expected[key] != value]
        assert len(wrong) == 2
        a, b = wrong
        assert dict(pairs)[a] == expected[b] and dict(pairs)[b] == expected[a]
    elif kind == "wrong_id":
        extra = set(keys) - set(expected)
        assert len(extra) == 1 and set(keys) - extra == set(expected)
        assert all(expected[key] == value for key, value in pairs if key in expected)


def test_packing_faults_spare_one_row_requests(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory(faults=Faults(drop_rate=1.0, truncate_rate=1.0, prose_rate=1.0))
    assert ask(server, "plain").choices[0].message.content == expected_answer("plain")
    assert server.stats.packing_faults == {}


def test_hang_outlasts_the_client_timeout(fake_server_factory: Callable[..., FakeServer]) -> None:
    server = fake_server_factory(faults=Faults(hang_rate=1.0), hang_seconds=30)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        run(
            lambda c: c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}]
            ),
            server,
            timeout=0.2,
        )
    assert time.monotonic() - started < 2
    assert server.stats.hangs == 1 and server.stats.ok == 0
    # The client hung up, so the server cancels the hanging request too.
    deadline = time.monotonic() + 2
    while server.stats.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.stats.in_flight == 0
    assert server.stats.log[-1].status == 499


def test_short_hang_then_answers(fake_server_factory: Callable[..., FakeServer]) -> None:
    server = fake_server_factory(faults=Faults(hang_rate=1.0), hang_seconds=0.05)
    started = time.monotonic()
    assert ask(server, "late").choices[0].message.content == expected_answer("late")
    assert time.monotonic() - started >= 0.05
    assert server.stats.hangs == 1 and server.stats.ok == 1


# ----------------------------------------------------------- latency and stats


def test_latency(fake_server_factory: Callable[..., FakeServer]) -> None:
    server = fake_server_factory(latency=0.1, latency_per_token=0.01)
    started = time.monotonic()
    reply = ask(server)
    elapsed = time.monotonic() - started
    assert elapsed >= 0.1 + 0.01 * reply.usage.completion_tokens
    record = server.stats.log[-1]
    assert record.t_end - record.t_start >= 0.1


def test_stats_under_concurrency(fake_server_factory: Callable[..., FakeServer]) -> None:
    server = fake_server_factory(latency=1.0)  # long enough for all 30 to be in at once on a busy machine
    n = 30

    async def many(client: openai.AsyncOpenAI) -> list[Any]:
        return await asyncio.gather(
            *(
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"row {i}"}]
                )
                for i in range(n)
            )
        )

    replies = run(many, server)
    stats = server.stats.snapshot()
    assert stats["requests"] == stats["ok"] == stats["items"] == n
    assert stats["max_in_flight"] == n and stats["in_flight"] == 0
    assert stats["prompt_tokens"] == sum(r.usage.prompt_tokens for r in replies)
    assert stats["completion_tokens"] == sum(r.usage.completion_tokens for r in replies)
    log = stats["log"]
    assert len(log) == n and all(r.status == 200 and r.n_items == 1 for r in log)
    assert all(r.t_end - r.t_start >= 1.0 for r in log)
    assert sum(r.prompt_tokens for r in log) == stats["prompt_tokens"]

    server.reset_stats()
    assert server.stats.snapshot()["log"] == [] and server.stats.requests == 0
    assert server.stats.max_in_flight == 0


def test_slots_make_requests_wait_their_turn(fake_server_factory: Callable[..., FakeServer]) -> None:
    # llama-cpp-python's server works on one request at a time: the others queue, inside their latency.
    server = fake_server_factory(latency=0.3, slots=1)

    async def three(client: openai.AsyncOpenAI) -> list[Any]:
        return await asyncio.gather(
            *(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"q {i}"}])
              for i in range(3))
        )  # fmt: skip

    run(three, server)
    log = sorted(server.stats.log, key=lambda r: r.t_end)
    assert [r.status for r in log] == [200] * 3
    assert log[1].t_end - log[0].t_end >= 0.3 and log[2].t_end - log[1].t_end >= 0.3  # one after another
    server.configure(slots=3)
    server.reset_stats()
    run(three, server)
    ends = sorted(r.t_end for r in server.stats.log)
    assert ends[-1] - ends[0] < 0.3  # side by side
    with pytest.raises(ValueError, match="slots"):
        server.configure(slots=0)
