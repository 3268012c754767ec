"""The budget: ``max_cost_usd`` as a cap on what is spent plus what is in flight.

A request goes only if what was spent, plus the estimates of requests in
flight, plus its own estimate fit under the cap; so concurrent requests cannot
overrun it together. An unknown price costs nothing here (and ``apply``
refuses a cap without a price).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ._pricing import Price

__all__ = ["Budget"]


class Budget:
    __slots__ = ("limit", "price", "reserved", "spent")

    def __init__(self, limit: float | None, price: Price | None) -> None:
        self.limit = limit
        self.price = price
        self.spent = 0.0
        self.reserved = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """What these tokens cost, or ``None`` when the price is unknown."""
        return None if self.price is None else self.price.cost(prompt_tokens, completion_tokens)

    def estimate(self, input_tokens: int, output_tokens: int) -> float:
        return self.cost(input_tokens, output_tokens) or 0.0

    def admits(self, estimate: float) -> bool:
        return self.limit is None or self.spent + self.reserved + estimate <= self.limit

    @contextlib.contextmanager
    def hold(self, estimate: float) -> Iterator[None]:
        """Count ``estimate`` as in flight while the block runs."""
        self.reserved += estimate
        try:
            yield
        finally:
            self.reserved -= estimate

    def spend(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Record a reply's usage; returns its cost."""
        cost = self.cost(prompt_tokens, completion_tokens)
        if cost is not None:
            self.spent += cost
        return cost
