"""One request and its retries, with the policy and sleep injected: no test waits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llmframe._attempts import RetryPolicy, send_with_retries
from llmframe._budget import Budget
from llmframe._client import CallError, Completion
from llmframe._pricing import Price
from llmframe._report import RunReport
from llmframe._requests import Request

REQUEST = Request([{"role": "user", "content": "x"}], {}, None, "text", 1000, 1000)
DONE = Completion("ok", "stop", 10, 1, "r", {}, 0.1)


def run(outcomes: list[Any], **kw: Any) -> tuple[Any, list[float], RunReport, list[int]]:
    slept: list[float] = []
    sent: list[int] = []
    report = RunReport()

    async def once(request: Request) -> Completion:
        sent.append(1)
        outcome = outcomes.pop(0)
        if isinstance(outcome, CallError):
            raise outcome
        return outcome

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    options: dict[str, Any] = {
        "policy": RetryPolicy(4, delay=lambda n, headers: 2.0**n),
        "sleep": sleep, "budget": Budget(None, None), "report": report, "rows": 3,
        "final": lambda err: False,
    }  # fmt: skip
    options.update(kw)
    try:
        result: Any = asyncio.run(send_with_retries(REQUEST, once, **options))
    except CallError as err:
        result = err
    return result, slept, report, sent


def test_retryable_errors_are_retried_with_the_policys_delays() -> None:
    result, slept, report, sent = run([CallError("server", "HTTP 503", True, 503)] * 2 + [DONE])
    assert result is DONE and slept == [1.0, 2.0] and report.retries == 2 and len(sent) == 3


def test_a_429_waits_in_the_limiter_not_here() -> None:
    result, slept, _, _ = run([CallError("rate_limit", "HTTP 429", True, 429), DONE])
    assert result is DONE and slept == [0.0]


def test_gives_up_after_max_attempts_and_says_so() -> None:
    result, slept, _, sent = run([CallError("timeout", "no answer", True)] * 4)
    assert isinstance(result, CallError) and "gave up after 4 attempts" in result.message
    assert len(sent) == 4 and len(slept) == 3


@pytest.mark.parametrize("final", [True, False])
def test_final_and_non_retryable_errors_are_not_retried(final: bool) -> None:
    # final: retryable by status, but a rejection; not final: not retryable at all.
    err = CallError("server", "HTTP 500: response_format unsupported", final, 500)
    result, slept, _, sent = run([err], final=lambda e: final)
    assert result is err and slept == [] and len(sent) == 1


def test_the_budget_stops_before_sending_and_counts_the_rows_unsent() -> None:
    budget = Budget(0.0001, Price(1.0, 1.0, "test"))  # $1 per 1M tokens: this request costs $0.002
    result, _, report, sent = run([DONE], budget=budget)
    assert isinstance(result, CallError) and result.kind == "budget"
    assert "before this row was sent" in result.message
    assert sent == [] and report.budget_unsent_rows == 3
    assert budget.reserved == 0.0  # nothing left held
