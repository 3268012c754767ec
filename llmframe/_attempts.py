"""One request and its retries; every attempt passes the budget and the limiter.

The SDK's own retries are off (``max_retries=0``), so each attempt here is
visible to the shared limiter. The policy is openai-python's
(:mod:`._retry`): retry 408, 409, 429, 5xx, timeouts and connection errors
with capped exponential backoff and jitter, honouring the server's
``retry-after``. Never retried: what the endpoint rejects (the caller changes
the request instead), what would fail every request, and the budget.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from . import _retry
from ._budget import Budget
from ._client import CallError
from ._report import RunReport

__all__ = ["Priced", "RetryPolicy", "send_with_retries"]


class Priced(Protocol):
    """What the budget reads of a request: a chat ``Request``, or an embeddings one."""

    @property
    def input_tokens(self) -> int: ...

    @property
    def output_tokens(self) -> int: ...


Q = TypeVar("Q", bound=Priced)
R = TypeVar("R")


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts, and how long to wait before attempt ``n + 1`` (``delay(n, headers)``)."""

    max_attempts: int = 6
    delay: Callable[[int, Mapping[str, str]], float] | None = None  # None: _retry.retry_delay

    def wait(self, attempt: int, headers: Mapping[str, str]) -> float:
        return (self.delay or _retry.retry_delay)(attempt, headers)


async def send_with_retries(
    request: Q,
    once: Callable[[Q], Awaitable[R]],
    *,
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[None]],
    budget: Budget,
    report: RunReport,
    rows: int,
    final: Callable[[CallError], bool],
) -> R:
    """The reply to ``request``, trying again while ``policy`` allows.

    ``once`` sends one attempt; ``final(err)`` says an error must not be retried
    (a rejection, or a stop). Raises the last :class:`CallError`; a budget stop is
    one with ``kind="budget"`` (``rows`` of them counted unsent when nothing went).
    """
    attempt = 0
    while True:
        estimate = budget.estimate(request.input_tokens, request.output_tokens)
        if not budget.admits(estimate):
            if attempt == 0:
                report.budget_unsent_rows += rows
            when = "before this row was sent" if attempt == 0 else f"before retry {attempt}"
            raise CallError("budget", f"max_cost_usd={budget.limit} reached (spent ${budget.spent:.4f}) {when}", False)
        with budget.hold(estimate):
            try:
                return await once(request)
            except CallError as err:
                if not err.retryable or final(err):
                    raise
                attempt += 1
                if attempt >= policy.max_attempts:
                    err.message = f"{err.message} (gave up after {attempt} attempts)"
                    raise
                report.retries += 1
                # A 429 already paused the limiter by its retry-after: no extra wait here.
                await sleep(0.0 if err.kind == "rate_limit" else policy.wait(attempt - 1, err.headers))
