"""Each Redis sharer's life beside its steps: the heartbeat thread, a fork, the process's exit.

A sharer holds a lease in Redis, which its steps renew; an idle one (a worker
between partitions) needs a thread to renew it, every quarter of the lease, and
the same thread tries Redis again while it is away (:mod:`._redis_outage`).
After ``fork`` the child is a sharer of its own (a new token, its own thread);
at exit every sharer leaves, so that its waiting reservations go back at once
rather than at the end of its lease.

What the lease does (in :mod:`._redis_script`): it is renewed every
``LEASE_SECONDS / 4`` and by each reservation. A reservation placed in the
schedule and not yet started names its sharer; when a sharer's lease runs out
(a worker killed, its machine gone), the next step of any other sharer gives
its waiting reservations and its probe back to everyone. Its requests in flight
keep their charge: the server may well have counted them. A sharer alive but
silent past its lease (stopped for seconds) finds its reservation given back
when it wakes, and places it again.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import weakref
from typing import Protocol

__all__ = ["Sharer", "close_all", "start_heartbeat", "track", "untrack"]


class Sharer(Protocol):
    """What the heartbeat, the fork hook and the exit hook call."""

    def tick(self) -> None:
        """Renew the lease, or try Redis again while it is away."""

    def after_fork(self) -> None:
        """In a forked child: become a sharer of its own."""

    def close(self) -> None:
        """Leave the quota."""


def start_heartbeat(sharer: Sharer, every: float) -> threading.Event:
    """A daemon thread calling ``sharer.tick()`` every ``every`` seconds until the event is set
    or the sharer is gone (it holds the sharer weakly)."""
    stop = threading.Event()
    threading.Thread(target=_heartbeat, args=(weakref.ref(sharer), stop, every), daemon=True,
                     name="llmframe-redis-lease").start()  # fmt: skip
    return stop


def _heartbeat(ref: weakref.ref[Sharer], stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        sharer = ref()
        if sharer is None:
            return
        with contextlib.suppress(Exception):  # a bad reply: the next beat tries again
            sharer.tick()
        del sharer


_LIVE: weakref.WeakSet[Sharer] = weakref.WeakSet()


def track(sharer: Sharer) -> None:
    """Call ``sharer.after_fork()`` in forked children, and ``close()`` at exit."""
    _LIVE.add(sharer)


def untrack(sharer: Sharer) -> None:
    _LIVE.discard(sharer)


def _after_fork_in_child() -> None:
    for sharer in list(_LIVE):
        sharer.after_fork()


def close_all() -> None:
    """Every sharer of this process leaves (at exit; or before its Redis is stopped on purpose)."""
    for sharer in list(_LIVE):
        with contextlib.suppress(Exception):  # Redis gone at exit: the lease runs out instead
            sharer.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(close_all)
