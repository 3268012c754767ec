"""Prices in USD per million tokens, and what a run costs.

Each price carries the date it was taken; prices change, so pass your own with
``prices={"my-model": (input_per_1m, output_per_1m)}`` (or via ``configure``).
An unknown model's cost is ``None`` ("unknown"), never zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["BATCH_DISCOUNT", "PRICES", "Price", "batch_price_for", "price_for"]


@dataclass(frozen=True)
class Price:
    input_per_1m: float
    output_per_1m: float
    as_of: str  # the date the price was taken
    source: str = "OpenAI API pricing page (standard tier, live API)"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / 1e6


# Standard (non-Batch-API) prices. The Batch API bills half of these.
PRICES: dict[str, Price] = {
    "gpt-4o-mini": Price(0.15, 0.60, "2025-08-07"),
    "gpt-4o": Price(2.50, 10.00, "2025-08-07"),
    "gpt-4.1": Price(2.00, 8.00, "2025-08-07"),
    "gpt-4.1-mini": Price(0.40, 1.60, "2025-08-07"),
    "gpt-4.1-nano": Price(0.10, 0.40, "2025-08-07"),
    "gpt-5": Price(1.25, 10.00, "2025-08-07"),
    "gpt-5-mini": Price(0.25, 2.00, "2025-08-07"),
    "gpt-5-nano": Price(0.05, 0.40, "2025-08-07"),
    "o4-mini": Price(1.10, 4.40, "2025-08-07"),
    "gpt-3.5-turbo": Price(0.50, 1.50, "2025-08-07"),
    # Embeddings bill input tokens only.
    "text-embedding-3-small": Price(0.02, 0.0, "2025-08-07"),
    "text-embedding-3-large": Price(0.13, 0.0, "2025-08-07"),
    "text-embedding-ada-002": Price(0.10, 0.0, "2025-08-07"),
}


def price_for(model: str, prices: Mapping[str, tuple[float, float] | Price] | None = None) -> Price | None:
    """The price of ``model``: the user's table first, then ours; dated snapshots
    (``gpt-4o-mini-2024-07-18``) match their family by the longest prefix."""
    found = _lookup(model, prices) if prices else None
    return found or _lookup(model, PRICES)


def _lookup(model: str, table: Mapping[str, tuple[float, float] | Price]) -> Price | None:
    best = ""
    for name in table:
        if (model == name or model.startswith(name + "-")) and len(name) > len(best):
            best = name
    if not best:
        return None
    p = table[best]
    return p if isinstance(p, Price) else Price(float(p[0]), float(p[1]), "given", "user")


#: The share of the live price the Batch API bills: OpenAI and Azure OpenAI bill half, input and output.
BATCH_DISCOUNT = 0.5


def batch_price_for(
    model: str,
    prices: Mapping[str, tuple[float, float] | Price] | None = None,
    batch_prices: Mapping[str, tuple[float, float] | Price] | None = None,
) -> Price | None:
    """The price of ``model`` through the Batch API: ``batch_prices`` when it names the model,
    else :data:`BATCH_DISCOUNT` times the live price (:func:`price_for`)."""
    given = _lookup(model, batch_prices) if batch_prices else None
    if given is not None:
        return given
    live = price_for(model, prices)
    if live is None:
        return None
    return Price(live.input_per_1m * BATCH_DISCOUNT, live.output_per_1m * BATCH_DISCOUNT, live.as_of,
                 f"{live.source}, at the Batch API's {BATCH_DISCOUNT:.0%}")  # fmt: skip
