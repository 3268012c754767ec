"""The claim store: which run is asking for which key, shared by every process using a cache folder.

Two processes enriching the same rows into one cache folder at once (two
kernels, a cell re-run while the first still goes) would each pay for every
row. Before a run sends a row it *claims* the row's key here; a run that finds
a key claimed by another waits for its answer to land in the cache instead of
paying for it (:mod:`._claims_run`).

The store is one SQLite database in the cache folder, ``.claims.sqlite``, in WAL
mode (the dot keeps it, and its ``-wal``/``-shm`` files, out of every parquet
glob and of pyarrow's dataset discovery). Two tables::

    runs    run (a random id), host, pid, proc (boot id and start time of the
            process: tells a live pid from a reused one), expires (wall clock)
    claims  key -> run (keyed by key alone: see below)

The claims have no index by run. Every claim and release writes each key's row
once to the table's b-tree and, with an index by run, once more to the index's:
without it, 100k keys claimed 2,048 at a time and released 20,000 at a time cost
~5.3 us a key instead of ~6.3 (medians of six, the store's own methods). What
looks a run's claims up by run (a stale run's dropped, a run's own at close beside
other runs, ``held``) scans the table instead, once per run, not once per key.
Opening a store drops the index an older version made (one that opens the store
again makes it again: the tables are the same either way).

A claim is a lease held by its run: the run refreshes one row (``runs.expires``),
not one per key, every :data:`REFRESH_SECONDS`. A claim is *stale*, and the next
run that asks for its key takes it over, when its run's lease has expired, or its
run is on this host and its process is gone (pid not alive, or alive with another
start time: the pid was reused), or its run row is missing. Taking over never
gives a wrong answer: at worst a row is paid twice.

:data:`LEASE_SECONDS` is 60: a process killed on this host is seen dead at once
(pid check), so the lease only matters where that check cannot tell: another host
on a shared folder, a process stopped (SIGSTOP, a debugger) or whose event loop is
blocked (a large compaction, a slow disk). 60 s is six missed refreshes, so a busy
loop does not lose its claims, and it bounds how long a waiter waits for a dead
owner it cannot see die.

``releases`` counts the times any run gave keys back (finished or failed) or had
them taken over: a run that sees it change since it looked the cache up knows that
keys it now claims may have been answered meanwhile, and looks again.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = [
    "CLAIMS_FILE",
    "LEASE_SECONDS",
    "REFRESH_SECONDS",
    "STORE_ERRORS",
    "ClaimStore",
    "Claimed",
    "Claims",
    "Owner",
    "StoreUnavailable",
    "process_alive",
    "this_process",
]

CLAIMS_FILE = ".claims.sqlite"
#: How long a claim lives without a refresh (see the module docstring for why 60).
LEASE_SECONDS = 60.0
#: How often a live run refreshes its lease, and gives back the keys it is done with.
REFRESH_SECONDS = 10.0
#: Seconds a connection waits for another process's transaction (each is a few ms).
BUSY_SECONDS = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (run TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
                                 proc TEXT, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, run TEXT NOT NULL);
DROP INDEX IF EXISTS claims_by_run;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('releases', 0);
"""


@dataclass(frozen=True)
class Owner:
    """Who holds a run's claims: a random run id, and the process it runs in."""

    run: str
    host: str
    pid: int
    proc: str | None  # boot id and process start time; None where unknown


def _proc_identity(pid: int) -> str | None:
    """The boot id and start time (clock ticks since boot) of ``pid``, on Linux; else None."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the name may hold spaces and parentheses
    return f"{boot}:{fields[19]}" if len(fields) > 19 else None


def this_process() -> Owner:
    """A new owner for a run in this process."""
    pid = os.getpid()
    return Owner(uuid.uuid4().hex, socket.gethostname(), pid, _proc_identity(pid))


def process_alive(pid: int, proc: str | None) -> bool:
    """Whether the process ``pid`` of this host, started as ``proc`` says, still runs."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate it on Windows: trust the lease there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # it exists (e.g. another user's)
    if proc is None:
        return True
    now = _proc_identity(pid)
    return now is None or now == proc


@dataclass(frozen=True)
class Claimed:
    """What :meth:`ClaimStore.claim` found."""

    theirs: set[str]  # keys held by another live run: wait for them
    taken: set[str]  # keys this run took over from a stale claim (theirs no longer)
    releases: int  # the store's release counter, read in the same transaction


class StoreUnavailable(Exception):
    """A claim store other than SQLite (:mod:`._claims_redis`) could not be reached."""


#: What a failing claim store raises: a run then goes on without claims.
STORE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, StoreUnavailable)


class Claims(Protocol):
    """What a run needs of a claim store: :class:`ClaimStore` (SQLite, in a folder) or
    :class:`~llmframe._claims_redis.RedisClaimStore` (every machine using one Redis)."""

    @property
    def path(self) -> object: ...  # where it is, for messages

    @property
    def releases_at_open(self) -> int: ...

    def claim(self, keys: Iterable[str], *, force: bool = False) -> Claimed: ...

    def refresh(self) -> None: ...

    def release(self, keys: Iterable[str], *, seen: int = -1) -> int: ...

    def held(self) -> int: ...

    def close(self) -> None: ...


def _set_up(db: sqlite3.Connection) -> None:
    """WAL mode and the tables. Switching to WAL takes a lock that SQLite's busy timeout
    does not wait for: two processes opening the store at once saw "database is locked"
    at once (and the second then ran without claims), so the switch is tried again for up
    to :data:`BUSY_SECONDS`."""
    deadline = time.monotonic() + BUSY_SECONDS
    for attempt in itertools.count():
        try:
            db.execute("PRAGMA journal_mode=WAL")  # falls back to a rollback journal where WAL cannot work
            break
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() >= deadline:
                raise
            time.sleep(min(0.2, 0.005 * 2**attempt) * (0.5 + random.random()))
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
    db.execute("CREATE TEMP TABLE wanted (key TEXT PRIMARY KEY)")


class ClaimStore:
    """The claims of one run in the folder's store. Every method is one short transaction.

    ``lease`` defaults to :data:`LEASE_SECONDS`; ``clock`` is the wall clock (leases are
    compared across processes); ``alive`` tells whether a process of this host lives. Example::

        store = ClaimStore(folder)
        store.claim(keys).theirs     # keys another live run is answering
        store.release(done_keys)     # others may take them now
        store.close()                # releases all, ends the lease
    """

    __slots__ = ("_alive", "_clock", "_closed", "_db", "_lock", "lease", "owner", "path", "releases_at_open")

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        owner: Owner | None = None,
        lease: float | None = None,
        clock: Callable[[], float] = time.time,
        alive: Callable[[int, str | None], bool] = process_alive,
    ) -> None:
        self.path = Path(os.fspath(folder)) / CLAIMS_FILE
        self.owner = owner or this_process()
        self.lease = LEASE_SECONDS if lease is None else lease
        self._clock = clock
        self._alive = alive
        self._lock = threading.Lock()
        db = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False)
        try:
            _set_up(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        self._closed = False
        with self._transaction():
            self._drop_stale(None)  # what killed runs left behind, so the tables stay small
            self._renew()
            #: The release counter when this run began: read before the run looks the cache up.
            self.releases_at_open = self._releases()

    def __repr__(self) -> str:
        return f"ClaimStore({str(self.path)!r}, run={self.owner.run[:8]})"

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")  # the write lock now: no upgrade deadlock between readers
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _renew(self) -> None:
        o = self.owner
        self._db.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?) ON CONFLICT (run) DO UPDATE SET expires = excluded.expires",
            (o.run, o.host, o.pid, o.proc, self._clock() + self.lease),
        )

    def _stale(self, host: str | None, pid: int | None, proc: str | None, expires: float | None) -> bool:
        if expires is None:  # a claim without a run row
            return True
        if expires < self._clock():
            return True
        return host == self.owner.host and pid is not None and not self._alive(pid, proc)

    def _drop_stale(self, runs: list[tuple[str, str | None, int | None, str | None, float | None]] | None) -> int:
        """Delete stale runs and their claims (of ``runs``, or of every run); how many were dropped."""
        if runs is None:
            runs = self._db.execute("SELECT run, host, pid, proc, expires FROM runs").fetchall()
        dropped = 0
        for run, host, pid, proc, expires in runs:
            if run != self.owner.run and self._stale(host, pid, proc, expires):
                self._db.execute("DELETE FROM claims WHERE run = ?", (run,))
                self._db.execute("DELETE FROM runs WHERE run = ?", (run,))
                dropped += 1
        if dropped:
            self._db.execute("UPDATE meta SET value = value + 1 WHERE name = 'releases'")
        return dropped

    def _want(self, keys: Iterable[str]) -> None:
        self._db.execute("DELETE FROM wanted")
        self._db.executemany("INSERT OR IGNORE INTO wanted VALUES (?)", ((k,) for k in keys))

    def claim(self, keys: Iterable[str], *, force: bool = False) -> Claimed:
        """Claim ``keys`` for this run, taking over stale claims; with ``force``, take
        them from live runs too (a waiter that waited too long)."""
        me = self.owner.run
        wanted = list(dict.fromkeys(keys))
        with self._transaction() as db:
            self._renew()
            if not force:
                # Most keys are claimed by no one: insert them at once. Only when some were
                # not inserted (held already, by this run or another) is the whole check run.
                inserted = db.executemany("INSERT OR IGNORE INTO claims VALUES (?, ?)", ((k, me) for k in wanted))
                if inserted.rowcount == len(wanted):
                    return Claimed(set(), set(), self._releases())
            self._want(wanted)
            owners = db.execute(
                "SELECT DISTINCT c.run, r.host, r.pid, r.proc, r.expires FROM wanted w CROSS JOIN claims c USING (key) "
                "LEFT JOIN runs r ON r.run = c.run WHERE c.run != ?", (me,),
            ).fetchall()  # fmt: skip
            stale = {o[0] for o in owners if self._stale(*o[1:])}
            taken: set[str] = set()
            if stale or force:
                held = db.execute("SELECT key, run FROM wanted CROSS JOIN claims USING (key) WHERE run != ?", (me,))
                taken = {k for k, run in held.fetchall() if force or run in stale}
            if force:
                db.execute("DELETE FROM claims WHERE key IN (SELECT key FROM wanted) AND run != ?", (me,))
                db.execute("UPDATE meta SET value = value + 1 WHERE name = 'releases'")
            self._drop_stale([o for o in owners if o[0] in stale])
            db.execute("INSERT OR IGNORE INTO claims SELECT key, ? FROM wanted", (me,))
            theirs = {k for (k,) in db.execute("SELECT key FROM wanted CROSS JOIN claims USING (key) WHERE run != ?", (me,))}
            releases = self._releases()
        return Claimed(theirs, taken, releases)

    def _releases(self) -> int:
        (n,) = self._db.execute("SELECT value FROM meta WHERE name = 'releases'").fetchone()
        return int(n)

    def refresh(self) -> None:
        """Extend this run's lease (its claims live as long as it does)."""
        with self._transaction():
            self._renew()

    def release(self, keys: Iterable[str], *, seen: int = -1) -> int:
        """Give ``keys`` back: finished (their answers are in the cache) or failed (another
        run may try them). Returns ``seen``, the release counter last seen, moved past this
        release when no other came between (this run need not look again for its own)."""
        with self._transaction() as db:
            self._want(keys)
            db.execute("DELETE FROM claims WHERE run = ? AND key IN (SELECT key FROM wanted)", (self.owner.run,))
            db.execute("UPDATE meta SET value = value + 1 WHERE name = 'releases'")
            now = self._releases()
        return now if now == seen + 1 else seen

    def held(self) -> int:
        """How many keys this run holds."""
        with self._lock:
            (n,) = self._db.execute("SELECT count(*) FROM claims WHERE run = ?", (self.owner.run,)).fetchone()
        return int(n)

    def close(self) -> None:
        """Release every claim of this run and end its lease. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            me = (self.owner.run,)
            # Alone in the store (the usual case), its claims go as one truncation instead of
            # key by key through every index (~5 us a key).
            alone = db.execute("SELECT 1 FROM claims WHERE run < ? OR run > ? LIMIT 1", me * 2).fetchone() is None
            if db.execute("DELETE FROM claims" if alone else "DELETE FROM claims WHERE run = ?", () if alone else me).rowcount:
                db.execute("UPDATE meta SET value = value + 1 WHERE name = 'releases'")
            db.execute("DELETE FROM runs WHERE run = ?", (self.owner.run,))
            db.execute("COMMIT")
        finally:
            db.close()
