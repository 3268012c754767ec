"""The answer log: every answer on disk the moment it arrives, before any segment.

A writer (:class:`~llmframe._cache.AnswerCache`) appends the records of each
reply to its own log in the cache folder, one write per reply, and folds the
log into a parquet segment every couple of seconds and at close. A process
killed at any instant therefore loses only the requests it had in flight: what
arrived is in its log, and the next :class:`AnswerCache` that opens the folder
folds the logs whose writer is gone. Lookups, in this process and in every
other, read the logs as well as the segments::

    ~/.cache/llmframe/
        seg-1732896000123456789-4242-1f2e3d4c.parquet
        .log-4242-9a8b7c6d-build01.arrows     # .log-<pid>-<uuid8>-<host>.arrows, locked by pid 4242

The name starts with ``.`` and does not end in ``.parquet``, so pyarrow's dataset
discovery (``pd.read_parquet(folder)``), ``*.parquet`` globs (polars, DuckDB) and
:data:`~llmframe._cache_segments.SEGMENT_NAME` all pass it by.

Format: an Arrow IPC *stream* of :data:`~llmframe._cache_schema.SCHEMA`, the
schema message first and then one record-batch message per append, each
written with a single ``os.write``. Arrow and not JSON lines because the
records are Arrow data already (a bulk ``add_columns`` table is logged in one
write, about a memcpy, where JSON would encode every value), because reading
needs no parsing or type casts (a log is read zero-copy, ~1M records in 0.1 s),
and because the buffer that is folded into a segment can keep the very batches
that were logged. Building a 10-row batch from Python objects costs about as
much as encoding the same rows as JSON (~50 us on the reference machine).
Every message carries its own length, so a torn last message (a write cut short
by ``kill -9``) is recognised and skipped: everything before it is intact,
because the file only ever grows by appends.

Durable against the death of the process, not of the machine: appends are
handed to the OS (``os.write``) but not fsynced, which would cost a disk flush
per reply. The segments a log is folded into are fsynced.

Who owns a log: its writer holds an exclusive ``flock`` on it for as long as it
is open, and the OS drops the lock when the process dies, however it dies. A log
whose lock can be taken is orphaned; taking the lock is also what makes one
process, and only one, fold it. This survives pid reuse, which a pid check
(``os.kill(pid, 0)``) would not. A log is created under a temporary name and
renamed into place only once it is locked, so no one can take a new log for an
orphan. Without ``fcntl`` (Windows) there is no such lock, so there is no log
(:data:`LOGS_SUPPORTED` is false): the cache keeps answers in memory until its
next segment, as it did before logs.

Logs of other records: the log is schema-generic. :class:`AnswerLog` writes any
one schema given to :meth:`AnswerLog.create`, and the readers and the folder take
a :class:`LogFormat` (which schemas to accept, where folded records go); the
defaults are the answer cache's (:data:`ANSWERS`). The embedding cache keeps its
own logs this way, in its own folder (``_embed_cache``).

Folding writes the segment (atomically) first and deletes the log after, so a
crash in between leaves duplicates, never a loss: a lookup takes the newest ok
answer per key, and compaction folds duplicates away. A writer never truncates
its log; it starts a new one and deletes the old once its records are in a
segment, so a reader that opened the old one reads a consistent file.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from ._cache_schema import SCHEMA
from ._cache_segments import write_segment
from ._cache_temps import TEMP_PREFIX
from ._warn import warn_user

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ANSWERS",
    "LOGS_SUPPORTED",
    "LOG_NAME",
    "AnswerLog",
    "LogFormat",
    "LogRead",
    "fold_orphans",
    "list_logs",
    "log_is_live",
    "log_tables",
    "read_log",
    "read_logs",
    "remove_orphans",
]

#: Whether this platform has the lock a log needs (``fcntl.flock``: every POSIX system).
LOGS_SUPPORTED = fcntl is not None
LOG_NAME = re.compile(r"\.log-(\d+)-([0-9a-f]{8})-([A-Za-z0-9._-]*)\.arrows")
_HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64]


@dataclass(frozen=True, slots=True)
class LogFormat:
    """What one kind of log holds, for its readers: the schemas its logs may be written
    with, the schema of "no records", and how an orphan's records become a segment."""

    accepts: Callable[[pa.Schema], bool]
    empty: pa.Schema
    write_segment: Callable[[Path, pa.Table], object]


#: The answer cache's logs: :data:`~llmframe._cache_schema.SCHEMA`, folded into parquet.
ANSWERS = LogFormat(SCHEMA.equals, SCHEMA, write_segment)


class AnswerLog:
    """One writer's open log: locked, appended to, and deleted once folded.

    Not thread-safe on its own: :class:`~llmframe._cache.AnswerCache` calls it
    under its lock. Example::

        log = AnswerLog.create(folder)
        log.append(records_to_table(records))   # on disk (in the OS) when this returns
        log.discard()                           # once the records are in a segment
    """

    __slots__ = ("_fd", "name", "path", "size")

    def __init__(self, fd: int, path: Path, size: int) -> None:
        self._fd: int | None = fd
        self.path = path
        self.name = path.name
        self.size = size  # bytes written, all of them whole messages

    def __repr__(self) -> str:
        return f"AnswerLog({str(self.path)!r})"

    @classmethod
    def create(cls, folder: Path, schema: pa.Schema = SCHEMA) -> AnswerLog:
        """A new, locked log in ``folder``, holding only ``schema`` (of every record appended)."""
        header = schema.serialize().to_pybytes()
        name = f".log-{os.getpid()}-{uuid.uuid4().hex[:8]}-{_HOST}.arrows"
        temp = folder / f"{TEMP_PREFIX}{name}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new: no one else has it
            _write_all(fd, header)
            os.replace(temp, folder / name)  # visible under its name only once locked
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        return cls(fd, folder / name, len(header))

    def append(self, table: pa.Table) -> None:
        """Append ``table``'s records in one write. On an error (a full disk) the log is
        cut back to its last whole record and the error raised: no torn record stays
        in a log whose writer goes on."""
        if self._fd is None:
            raise ValueError(f"{self!r} is closed")
        messages = [batch.serialize() for batch in table.to_batches() if batch.num_rows]
        if not messages:
            return
        # One write: a reply is one batch, written from Arrow's buffer without a copy.
        data = messages[0] if len(messages) == 1 else b"".join(m.to_pybytes() for m in messages)
        try:
            _write_all(self._fd, data)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.size)
            raise
        self.size += len(data)

    def discard(self) -> None:
        """Delete the log (its records are in a segment now) and let go of its lock."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)  # before the lock goes: no one folds it a second time
        self.close()

    def close(self) -> None:
        """Let go of the file and its lock, leaving it on disk: an orphan, folded by the
        next cache that opens the folder."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _write_all(fd: int, data: bytes | pa.Buffer) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class LogRead:
    """What one log holds: its whole records, and how many bytes at its end were not
    a whole record (a write under way, or one cut short by a crash)."""

    records: pa.Table
    torn_bytes: int


def list_logs(folder: Path) -> dict[str, int]:
    """Log names in the folder, with their sizes."""
    found: dict[str, int] = {}
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return found
    for entry in entries:
        if LOG_NAME.fullmatch(entry.name):
            with contextlib.suppress(FileNotFoundError):
                found[entry.name] = entry.stat().st_size
    return dict(sorted(found.items()))


def parse_log(data: bytes, kind: LogFormat = ANSWERS) -> LogRead:
    """The whole records at the start of ``data`` (a log's bytes); never raises.

    Reading stops at the first message that is incomplete or unreadable: for a log
    only ever appended to, that is its torn tail, if it has one.
    """
    stream = pa.BufferReader(pa.py_buffer(data))
    batches: list[pa.RecordBatch] = []
    good = 0
    schema = kind.empty
    try:
        read = pa.ipc.read_schema(pa.ipc.read_message(stream))
        if not kind.accepts(read):
            raise ValueError("not the schema of this version's cache")
        schema = read
        good = stream.tell()
        while True:
            batch = pa.ipc.read_record_batch(pa.ipc.read_message(stream), schema)
            batch.validate(full=True)
            batches.append(batch)
            good = stream.tell()
    except EOFError:
        pass  # the end of the last whole message
    except Exception:  # a torn or garbled tail, whatever pyarrow calls it
        pass
    return LogRead(pa.Table.from_batches(batches, schema=schema), len(data) - good)


def read_log(path: Path, kind: LogFormat = ANSWERS) -> LogRead | None:
    """The records of the log at ``path``, or ``None`` if it is gone (folded since it
    was listed)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return parse_log(data, kind)


def read_logs(folder: Path, skip: Iterable[str] = ()) -> pa.Table:
    """The records of every answer log in the folder but those named in ``skip``, as one
    table (see :func:`log_tables`)."""
    tables = log_tables(folder, skip)
    if not tables:
        return SCHEMA.empty_table()
    return pa.concat_tables(tables)


def log_tables(folder: Path, skip: Iterable[str] = (), kind: LogFormat = ANSWERS) -> list[pa.Table]:
    """The records of every log in the folder but those named in ``skip``: one table a
    log that holds any, each of the schema it was written with.

    A torn tail is left out without a word: in a live log it is an append under way.
    Read these *before* listing the segments: a log folded in between is then found
    in its segment, which is written before the log is deleted.
    """
    skipped = set(skip)
    tables = []
    for name in list_logs(folder):
        if name in skipped:
            continue
        try:
            read = read_log(folder / name, kind)
        except OSError:  # unreadable (permissions): its writer folds it
            continue
        if read is not None and read.records.num_rows:
            tables.append(read.records)
    return tables


# --------------------------------------------------------------------------- orphans


@contextlib.contextmanager
def _claimed(path: Path) -> Iterator[int | None]:
    """The log's file descriptor, locked by this process, or ``None`` if its writer
    lives (or it is gone, or locks are not available)."""
    if fcntl is None:
        yield None
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            now, held = os.stat(path), os.fstat(fd)
        except OSError:  # locked: its writer lives (or another process is folding it); or gone
            yield None
            return
        # Still the file of that name: not one folded, deleted and replaced meanwhile.
        yield fd if (now.st_ino, now.st_dev) == (held.st_ino, held.st_dev) else None
    finally:
        os.close(fd)


def log_is_live(path: Path) -> bool:
    """Whether a process holds the log ``path`` open (without ``fcntl``: always)."""
    with _claimed(path) as fd:
        return fd is None and path.exists()


def _read_fd(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def fold_orphans(folder: Path, skip: Iterable[str] = (), kind: LogFormat = ANSWERS) -> int:
    """Fold every orphaned log in the folder into a segment and delete it; return how
    many records were folded. A torn tail is warned about once (the log is then gone).

    Logs of live writers, and those named in ``skip``, are left alone. An orphan that
    cannot be folded (a read-only folder) stays, and lookups still read it.
    """
    skipped = set(skip)
    folded = 0
    for name in list_logs(folder):
        if name in skipped:
            continue
        path = folder / name
        with _claimed(path) as fd:
            if fd is None:
                continue
            try:
                read = parse_log(_read_fd(fd), kind)
                if read.records.num_rows:
                    kind.write_segment(folder, read.records)
                os.remove(path)  # the lock is still held: no one else folds it meanwhile
            except OSError:
                continue
            folded += read.records.num_rows
            if read.torn_bytes:
                warn_user(
                    f"llmframe cache: the log {path} of a process that died ended in an "
                    f"incomplete record ({read.torn_bytes} bytes, a write the process did not "
                    f"finish); its {read.records.num_rows} whole records were kept.",
                    RuntimeWarning,
                )
    return folded


def remove_orphans(folder: Path) -> int:
    """Delete every orphaned log in the folder, unread; return how many (``clear``)."""
    removed = 0
    for name in list_logs(folder):
        path = folder / name
        with _claimed(path) as fd:
            if fd is None:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed += 1
    return removed
