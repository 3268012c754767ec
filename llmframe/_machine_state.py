"""The file a machine-wide limiter shares, and who shares it: locks, format and liveness.

:class:`StateFile` is one small file per endpoint, read and written whole
while holding an exclusive ``flock`` on it, in the fixed binary layout of
:func:`encode_state` (one row per sharer, a :class:`Holding`); what the
values do is :mod:`._machine_limiter`'s business. Nothing is fsynced: the state describes
the next minute, and a machine that restarts starts afresh anyway. The kernel
drops a ``flock`` when its process dies, however it dies, so a process killed
inside a transaction leaves no lock behind.

:class:`Owner` is one sharer's presence: a file in ``owners/`` that it keeps
locked for its whole life. Whether a sharer is alive is whether its file can be
locked (:func:`owner_alive`): no pids (the system reuses them), no heartbeats
(a process busy for a minute is not dead), and a process killed with
``kill -9`` is seen dead at the next look.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import ConfigError

if sys.platform != "win32":
    import fcntl

__all__ = [
    "Holding", "Owner", "StateFile", "clock_domain", "decode_state", "encode_state", "owner_alive",
    "sweep_owners",
]  # fmt: skip

#: The largest state read back; a state lists one row per live sharer, so a few KB.
_MAX_BYTES = 1 << 20


@dataclass(slots=True)
class Holding:
    """One sharer's row: its given limits, its placed reservations not started yet, and
    its requests in flight (started, not settled) with their tokens."""

    pid: int
    rpm: float | None = None
    tpm: float | None = None
    count: int = 0  # reservations placed and waiting for their start
    requests: float = 0.0  # what they were charged, to give back if the sharer dies
    tokens: float = 0.0
    latest: float = -math.inf  # the latest start among them (the FIFO anchor without it)
    flying: int = 0
    flying_tokens: float = 0.0


# The state file: a header, the schedule, what was learned, then one row per sharer.
# Fixed-size binary, so one transaction costs microseconds (JSON cost ten times more).
# Limits and times that may be unknown are NaN in the file, None here.
_HEADER = struct.Struct("<4sI40s16s")  # magic, sharers, clock domain, probe holder (b"": none)
_SCHEDULE = struct.Struct("<10ddqdd")  # two buckets (limit, rate, capacity, full_at, opening), the rest
_QUOTA = struct.Struct("<dd???dddd")
_ROW = struct.Struct("<16sqddqdddqd")  # token, then a Holding
_MAGIC = b"LFQ2"


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _none(value: float) -> float | None:
    return None if math.isnan(value) else value


def encode_state(domain: str, probe: str | None, quota: list[Any], schedule: list[Any],
            holdings: dict[str, Holding]) -> bytes:  # fmt: skip
    requests, tokens, *rest = schedule
    rpm, tpm, observed, learned, remembered, reset_requests, reset_tokens, remembered_windows = quota
    parts = [
        _HEADER.pack(_MAGIC, len(holdings), domain.encode()[:40], (probe or "").encode()),
        _SCHEDULE.pack(*map(_nan, requests), *map(_nan, tokens), *rest),
        _QUOTA.pack(
            _nan(rpm),
            _nan(tpm),
            observed,
            learned,
            remembered,
            _nan(reset_requests),
            _nan(reset_tokens),
            *map(_nan, remembered_windows),
        ),
    ]
    for token, h in holdings.items():
        parts.append(_ROW.pack(token.encode(), h.pid, _nan(h.rpm), _nan(h.tpm), h.count,
                               h.requests, h.tokens, h.latest, h.flying, h.flying_tokens))  # fmt: skip
    return b"".join(parts)


def decode_state(raw: bytes) -> tuple[str, str | None, list[Any], list[Any], dict[str, Holding]]:
    """What :func:`encode_state` wrote; ValueError for anything else."""
    try:
        return _decode(raw)
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"not a limiter state: {exc}") from None


def _decode(raw: bytes) -> tuple[str, str | None, list[Any], list[Any], dict[str, Holding]]:
    magic, sharers, domain, probe = _HEADER.unpack_from(raw, 0)
    if magic != _MAGIC:
        raise ValueError("not a limiter state (or another version's)")
    at = _HEADER.size
    values = _SCHEDULE.unpack_from(raw, at)
    schedule = [[_none(v) for v in values[:5]], [_none(v) for v in values[5:10]], *values[10:]]
    at += _SCHEDULE.size
    rpm, tpm, observed, learned, remembered, reset_requests, reset_tokens, *windows = _QUOTA.unpack_from(
        raw, at
    )
    quota = [
        _none(rpm),
        _none(tpm),
        observed,
        learned,
        remembered,
        _none(reset_requests),
        _none(reset_tokens),
        [_none(v) for v in windows],
    ]
    at += _QUOTA.size
    holdings = {}
    for _ in range(sharers):
        token, pid, rpm, tpm, count, requests, tokens, latest, flying, flying_tokens = _ROW.unpack_from(raw, at)
        holdings[token.decode()] = Holding(
            pid, _none(rpm), _none(tpm), count, requests, tokens, latest, flying, flying_tokens
        )
        at += _ROW.size
    return (
        domain.rstrip(b"\0").decode(),
        probe.rstrip(b"\0").decode() or None,
        quota,
        schedule,
        holdings,
    )


def _require_flock() -> None:
    if sys.platform == "win32":
        raise ConfigError("limiter='machine' needs flock (Linux or macOS); use limiter='process'")


def clock_domain() -> str:
    """What makes ``time.monotonic()`` readings comparable between processes: this boot.

    Times in a state written before a restart mean nothing after it.
    """
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    import time

    # Elsewhere: when the monotonic clock started, to the minute.
    return f"{round((time.time() - time.monotonic()) / 60)}"


class StateFile:
    """One file read and written whole under an exclusive lock (see the module docstring).

    >>> state = StateFile(path)            # doctest: +SKIP
    >>> data = state.lock()                # b"" the first time
    >>> state.unlock(b'{"new": "state"}')  # or None to leave it as it was
    """

    __slots__ = ("_fd", "_size", "path")

    def __init__(self, path: Path) -> None:
        _require_flock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._size = 0

    def lock(self) -> bytes:
        """Wait for the lock; the bytes the last holder left."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            data = os.pread(self._fd, _MAX_BYTES, 0)
        except BaseException:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            raise
        self._size = len(data)
        return data

    def unlock(self, data: bytes | None) -> None:
        """Leave ``data`` (None: what was there) for the next holder, and let go of the lock."""
        try:
            if data is not None:
                os.pwrite(self._fd, data, 0)
                if len(data) < self._size:
                    os.ftruncate(self._fd, len(data))
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


class Owner:
    """This sharer's presence: a token, and its file in ``folder`` locked while it lives."""

    __slots__ = ("_fd", "folder", "token")

    def __init__(self, folder: Path) -> None:
        _require_flock()
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.token = secrets.token_hex(8)
        # Locked under a hidden name first: a file that shows under its token is always
        # locked while its sharer lives, so a sweep cannot take a newborn for dead.
        hidden = folder / f".{self.token}"
        self._fd: int | None = os.open(hidden, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(hidden, folder / self.token)

    def release(self) -> None:
        """Leave for good (a clean exit): the file goes, and the lock with it."""
        with contextlib.suppress(OSError):
            (self.folder / self.token).unlink()
        self.abandon()

    def abandon(self) -> None:
        """Let go of the lock and keep the file, as a killed process does."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def owner_alive(folder: Path, token: str) -> bool:
    """True while the sharer ``token`` holds its file's lock; a dead one's file is removed."""
    path = folder / token
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        with contextlib.suppress(OSError):
            path.unlink()
        return False
    finally:
        os.close(fd)


def sweep_owners(folder: Path) -> None:
    """Remove the files of sharers that died before they could say who they were."""
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            if not entry.name.startswith("."):
                owner_alive(folder, entry.name)
