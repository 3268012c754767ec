"""What every endpoint of the fake server shares: its settings, its own RPM/TPM buckets,
a seeded fault draw, and the requests in progress (so that ``stop()`` can cancel them)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

from llmframe.testing._limits import Limits
from llmframe.testing._settings import Settings
from llmframe.testing._stats import ServerStats

__all__ = ["Handler"]


class Handler:
    """The base of the chat and embeddings endpoints; a subclass adds ``handle``."""

    def __init__(self, settings: Callable[[], Settings], stats: ServerStats, seed: int = 0) -> None:
        self._settings = settings
        self._stats = stats
        self._rng = random.Random(seed)
        self._limits = Limits()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.configure(settings(), None)

    def configure(self, settings: Settings, seed: int | None) -> None:
        """Follow new limits (keeping what was used); ``seed`` restarts the fault draws."""
        self._limits.configure(settings.rpm, settings.tpm, settings.burst_seconds, time.monotonic())
        if seed is not None:
            self._rng.seed(seed)

    async def cancel_all(self) -> None:
        """Cancel the requests in progress (hangs included) and wait a moment for them."""
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
