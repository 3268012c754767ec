"""Fewer garbage collections while a run sends: what the process held before is frozen.

A run allocates a few container objects per row (jobs, replies, records) and keeps
few of them, while the process holds hundreds of thousands from before it (the
modules of pandas, polars, pyarrow, openai and pydantic, the frame, a notebook's
objects). CPython's collector walks all of those again at every full collection,
triggered as the run's allocations pile up: ~0.1 s each at 100k rows, ~7% of the
client's CPU in ``benchmarks/throughput.py``. :func:`fewer_collections` freezes
what exists when the run starts (``gc.freeze``: moved out of every collection, not
copied) and raises the youngest generation's threshold, and puts both back when
the run ends: the frozen objects return to the oldest generation, where the next
full collection finds any garbage among them.

Process-wide, as the collector is: runs at once in threads share one freeze,
undone when the last of them ends.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["YOUNG_THRESHOLD", "fewer_collections"]

#: Allocations (net, of container objects) between young collections during a run:
#: CPython's default is 700, a collection per few requests' rows.
YOUNG_THRESHOLD = 10_000

_lock = threading.Lock()
_runs = 0  # blocks running now
_saved: tuple[int, int, int] = (700, 10, 10)  # the thresholds before the first of them
_froze = False  # whether the first froze (and so the last unfreezes)


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Freeze the objects that exist now and collect the young ones less often, until
    the block (the last of the blocks running at once) ends."""
    global _runs, _saved, _froze
    with _lock:
        if _runs == 0:
            _saved = gc.get_threshold()
            # A process that turned collection off keeps it off; one that froze objects
            # itself (a server before it forks) keeps them frozen: unfreezing is all or none.
            _froze = gc.isenabled() and gc.get_freeze_count() == 0
            if _froze:
                gc.freeze()
            if _saved[0]:  # 0: collection off
                gc.set_threshold(max(_saved[0], YOUNG_THRESHOLD), *_saved[1:])
        _runs += 1
    try:
        yield
    finally:
        with _lock:
            _runs -= 1
            if _runs == 0:
                gc.set_threshold(*_saved)
                if _froze:
                    gc.unfreeze()
