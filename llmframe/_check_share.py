"""One packing check per task, however many runs start it at once: a claim file and a verdict file.

A Dask computation runs one ``apply`` per partition, in several threads and
worker processes at once. Each would run its own packing check (:mod:`._check`)
on the same task, paying its one-row sample and trial requests again. Instead,
in the cache folder the partitions share::

    .packing-<task>.claim      who checks: created with O_EXCL by the first run
    .packing-<task>.verdict    what it found: the verdict, as the endpoint memory keeps it

The run that creates the claim checks, writes the verdict and removes the claim.
A run that finds a verdict uses it (no check, only the canaries' warm-up). A run
that finds a claim waits for the verdict, polling, up to :data:`WAIT_SECONDS`;
if the claim goes away without a verdict, or the wait runs out, it checks itself,
as every run did before. A claim whose process is gone (same host, pid not alive)
or older than :data:`CLAIM_SECONDS` is taken over at once. The files name the task
by a hash and hold only a pid, a host name, a time and the verdict: no key.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._capabilities import MEMORY, atomic_write_json, read_json
from ._claims import process_alive

if TYPE_CHECKING:
    from ._engine import Run

__all__ = ["CLAIM_SECONDS", "POLL_SECONDS", "WAIT_SECONDS", "SharedCheck", "shared_check"]

#: How long a run waits for another run's verdict before it checks itself.
WAIT_SECONDS = 60.0
#: A claim older than this belongs to a run that died or hung: it is taken over.
CLAIM_SECONDS = 120.0
#: How often a waiting run looks for the verdict.
POLL_SECONDS = 0.2


class SharedCheck:
    """The claim and verdict files of one task in one folder (see the module docstring).

    >>> import tempfile
    >>> share = SharedCheck(Path(tempfile.mkdtemp()), "ab12")
    >>> share.claim(), SharedCheck(share.folder, "ab12").claim()
    (True, False)
    >>> share.store({"batch_size": 20}); SharedCheck(share.folder, "ab12").stored()
    {'batch_size': 20}
    """

    __slots__ = ("_held", "claim_path", "clock", "folder", "verdict_path")

    def __init__(self, folder: Path, task_key: str, clock: Callable[[], float] = time.time) -> None:
        self.folder = folder
        name = task_key[:32]
        self.claim_path = folder / f".packing-{name}.claim"
        self.verdict_path = folder / f".packing-{name}.verdict"
        self.clock = clock
        self._held = False

    def stored(self) -> dict[str, Any] | None:
        """The verdict another run stored for this task, or None."""
        verdict = read_json(self.verdict_path).get("verdict")
        return verdict if isinstance(verdict, dict) else None

    def claim(self) -> bool:
        """True if this run is now the one that checks (it held no claim before)."""
        if self._held:
            return True
        body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "at": self.clock()}).encode()
        for _ in range(2):  # a second try after taking a dead claim over
            try:
                fd = os.open(self.claim_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._dead():
                    return False
                with contextlib.suppress(FileNotFoundError):
                    self.claim_path.unlink()
                continue
            except OSError:  # a read-only folder: nobody can share, so check alone
                return True
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            self._held = True
            return True
        return False

    def _dead(self) -> bool:
        """The claim on disk belongs to a run that can no longer store a verdict."""
        owner = read_json(self.claim_path)
        if not owner:  # unreadable or being written: judge by its age
            with contextlib.suppress(OSError):
                return self.clock() - self.claim_path.stat().st_mtime > CLAIM_SECONDS
            return False
        at, pid = owner.get("at"), owner.get("pid")
        if isinstance(at, (int, float)) and self.clock() - at > CLAIM_SECONDS:
            return True
        return owner.get("host") == socket.gethostname() and isinstance(pid, int) and not process_alive(pid, None)

    def store(self, verdict: dict[str, Any]) -> None:
        """Keep this run's verdict for the others, and let go of the claim."""
        with contextlib.suppress(OSError):
            atomic_write_json(self.verdict_path, {"verdict": verdict, "at": self.clock()})
        self.release()

    def release(self) -> None:
        """Let go of the claim, if this run holds it (a run that ends without a verdict)."""
        if self._held:
            self._held = False
            with contextlib.suppress(OSError):
                self.claim_path.unlink()

    async def wait(
        self, sleep: Callable[[float], Awaitable[None]], timeout: float = WAIT_SECONDS
    ) -> dict[str, Any] | None:
        """The verdict, once another run stored it; None if this run should check itself:
        it holds the claim now (the other let go without a verdict, or died), or
        ``timeout`` seconds passed."""
        waited = 0.0
        while True:
            verdict = self.stored()
            if verdict is not None:
                return verdict
            if self.claim() or waited >= timeout:
                return None
            await sleep(POLL_SECONDS)
            waited += POLL_SECONDS


async def shared_check(
    run: Run, rewire: Callable[[], Run], folder: Path | None, sleep: Callable[[float], Awaitable[None]]
) -> Run:
    """``run``, holding the claim while it checks (``run.on_checked(None)`` lets go of it when
    the run ends), or a run ``rewire()`` made after another run's verdict was found."""
    check = run.planner.check
    if folder is None or check is None or not check.sizes or not run.task_key:
        return run  # no folder to share, or no check to run (none, or a warm-up)
    share = SharedCheck(folder, run.task_key)
    verdict = share.stored()
    if verdict is None and not share.claim():
        verdict = await share.wait(sleep)
    if verdict is None:
        run.on_checked = lambda entry: share.store(entry) if entry is not None else share.release()
        return run
    share.release()
    MEMORY.update(run.endpoint.memory_key, None, verdicts={run.task_key: verdict})  # this process's memory
    return rewire()
