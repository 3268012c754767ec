"""A sharer of a quota killed with SIGKILL while it holds reservations, for the tests of the
machine-wide (``"machine"``) and the Redis (``"redis"``) limiter across real processes.

The child takes the whole burst of a 600 RPM quota (10 requests), places 40 more that wait
(0.1 to 4.0 s ahead), says it is ready, and waits to be killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path

    async def main():
        kind, where, ready = sys.argv[1:]
        if kind == "machine":
            from llmframe._machine_limiter import MachineLimiter
            limiter = MachineLimiter(Path(where), rpm=600)
        else:
            from llmframe._redis_limiter import RedisLimiter
            limiter = RedisLimiter(where, "killed", rpm=600)
        limiter.observe({})                # no rate-limit headers: the given limit alone
        for _ in range(10):                # the whole burst goes now
            await limiter.acquire(0)
        waiters = [asyncio.ensure_future(limiter.acquire(0)) for _ in range(40)]  # 0.1 .. 4.0 s
        await asyncio.sleep(0.05)
        Path(ready).touch()
        await asyncio.sleep(60)           # killed here, holding 40 reservations

    asyncio.run(main())
    """
)


@contextlib.contextmanager
def doomed_sharer(kind: str, where: str, ready: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The child sharing the quota of ``kind`` at ``where`` (a state file, a Redis URL), once it
    holds its reservations; killed at the end if the test has not killed it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    doomed = subprocess.Popen([sys.executable, "-c", _CHILD, kind, where, str(ready)], env=env)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert doomed.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        yield doomed
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait(timeout=10)


def kill(doomed: subprocess.Popen[bytes]) -> float:
    """``kill -9``; when it was sent (``time.monotonic()``)."""
    os.kill(doomed.pid, signal.SIGKILL)
    killed = time.monotonic()
    doomed.wait(timeout=10)
    return killed


def seconds_for_ten(limiter: Any) -> float:
    """How long ten requests, one after another, take to start."""

    async def ten() -> float:
        started = time.monotonic()
        for _ in range(10):
            await limiter.acquire(0)
        return time.monotonic() - started

    return asyncio.run(ten())
