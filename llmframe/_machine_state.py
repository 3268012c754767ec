"""The file a machine-wide limiter shares, and who shares it: locks, bytes and liveness.

:class:`StateFile` is one small file per endpoint, read and written whole
while holding an exclusive ``flock`` on it; what the bytes mean is
:mod:`._machine_limiter`'s business. Nothing is fsynced: the state describes
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
import os
import secrets
import sys
from pathlib import Path

from ._errors import ConfigError

if sys.platform != "win32":
    import fcntl

__all__ = ["Owner", "StateFile", "clock_domain", "owner_alive", "sweep_owners"]

#: The largest state read back; a state lists one row per live sharer, so a few KB.
_MAX_BYTES = 1 << 20


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
