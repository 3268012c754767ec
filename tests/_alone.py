"""Tests marked ``alone`` run while no other test does, when pytest-xdist runs the suite.

A test whose assertions depend on the machine's pace (a shared quota held by several
processes, a lease running out while a process is stopped) is marked
``@pytest.mark.alone``. Under xdist every test holds a shared lock on a file of the
run (in the folder the workers' temporary folders share) while it sets up, runs and
tears down; an ``alone`` test holds it exclusively. A gate taken before either gives
the exclusive holder precedence: once it waits, no new test starts beside it, so it
waits only for the tests already running. Without xdist nothing is locked.

Tests that share a module-scoped fixture (a Dask cluster, a Jupyter kernelspec) are
sent to one worker (``xdist_group`` by module, for ``--dist loadgroup``), so that each
expensive fixture is set up once per run, not once per worker.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    import fcntl
except ImportError:  # Windows: no locking; run `alone` tests without xdist there
    fcntl = None  # type: ignore[assignment]

SHARED_SCOPES = {"module", "class", "package"}


@contextlib.contextmanager
def turn(folder: Path, *, alone: bool) -> Iterator[None]:
    """Hold the run's test lock, shared or (``alone``) exclusive, for the block."""
    if fcntl is None:
        yield
        return
    with open(folder / "alone.gate", "a") as gate, open(folder / "alone.room", "a") as room:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            if not alone:
                fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(room, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(gate, fcntl.LOCK_UN)


def run_folder(config: pytest.Config) -> Path | None:
    """The folder all xdist workers of this run share (None outside xdist)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return None
    return config._tmp_path_factory.getbasetemp().parent  # type: ignore[attr-defined,no-any-return]


def group_by_shared_fixtures(items: list[pytest.Item]) -> None:
    """An ``xdist_group`` named after the module for each test using a module-scoped fixture."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None or item.get_closest_marker("xdist_group") is not None:
            continue
        scopes = {d.scope for defs in info.name2fixturedefs.values() for d in defs}
        if scopes & SHARED_SCOPES:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
