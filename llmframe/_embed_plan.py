"""Packing texts into embeddings requests: up to the API's item and token limits.

One request carries at most ``max_items`` inputs (2,048 on OpenAI) and
``max_tokens`` input tokens (300,000 on OpenAI, and never more than the TPM
limit, or it could never be admitted), counted with tiktoken. Batches are
formed when a worker is free, so they follow the limits the limiter learned
meanwhile; a batch that must go again (the endpoint refused it as too large)
is split in halves and goes before new texts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["MAX_INPUTS", "MAX_INPUT_TOKENS", "MAX_REQUEST_TOKENS", "EmbedBatch", "EmbedPlanner"]

#: The embeddings API's limits (OpenAI, text-embedding-3 and ada-002).
MAX_INPUTS = 2048
MAX_REQUEST_TOKENS = 300_000
MAX_INPUT_TOKENS = 8192


@dataclass
class EmbedBatch:
    """One request: the unique texts it carries (indices into the run's texts) and their tokens."""

    texts: list[int]
    input_tokens: int
    output_tokens: int = 0  # embeddings generate none; the budget reads it

    @property
    def tokens(self) -> int:
        return self.input_tokens


class EmbedPlanner:
    """Hands out the next batch; ``too_large`` holds texts that fit no request."""

    __slots__ = ("_again", "_next", "max_items", "max_tokens", "tokens", "too_large")

    def __init__(self, tokens: Sequence[int], *, max_items: int, max_tokens: Callable[[], int]) -> None:
        self.tokens = tokens  # per unique text
        self.max_items = max_items
        self.max_tokens = max_tokens  # read at each take: the TPM limit may be learned meanwhile
        self._next = 0
        self._again: deque[list[int]] = deque()
        self.too_large: list[int] = []

    def take(self) -> EmbedBatch | None:
        if self._again:
            again = self._again.popleft()
            return EmbedBatch(again, sum(self.tokens[i] for i in again))
        budget = self.max_tokens()
        texts: list[int] = []
        total = 0
        while self._next < len(self.tokens) and len(texts) < self.max_items:
            count = self.tokens[self._next]
            if count > budget:  # alone it would not fit either
                self.too_large.append(self._next)
                self._next += 1
                continue
            if total + count > budget:
                break
            texts.append(self._next)
            total += count
            self._next += 1
        return EmbedBatch(texts, total) if texts else None

    def split(self, batch: EmbedBatch) -> None:
        """Send ``batch`` again as two halves, before any new text."""
        half = len(batch.texts) // 2
        self._again.extendleft([batch.texts[half:], batch.texts[:half]])

    def stop(self) -> list[int]:
        """Hand out nothing more; the texts never sent."""
        left = [i for again in self._again for i in again] + list(range(self._next, len(self.tokens)))
        self._again.clear()
        self._next = len(self.tokens)
        return left
