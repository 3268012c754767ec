"""Looking answers up in a cache folder, without ever writing to it.

A :class:`CacheReader` builds a :class:`~llmframe._cache_index.KeyIndex` from
the folder's segments and answers lookups from it, together with the records
in the folder's answer logs (the writers' answers not folded into a segment
yet, from this process and from any other, read afresh on every lookup). A
lookup changes nothing on disk: merging small segments is done by the writer
when it flushes and by :func:`~llmframe.compact_cache`, and records a writer
holds in memory are handed to the lookup (``unwritten=``) instead of being
flushed by it.

Whether the index stays in memory between lookups is the caller's choice, not
a cleanup step it must remember: ``keep_index=True`` suits a notebook that
looks up again and again (later lookups read only the segments not seen yet);
a run looks up once with ``keep_index=False`` and holds no answers afterwards
but the ones it got.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import polars as pl
import pyarrow as pa

from ._cache_admin import cache_location
from ._cache_fs import CacheLocation
from ._cache_index import KeyIndex, ok_rows_of, read_ok_rows, release_memory
from ._cache_log import read_logs

__all__ = ["CacheReader"]


class CacheReader:
    """Answers lookups from the cache folder ``path`` (or URL, opened with ``options``, or
    :class:`~llmframe._cache_fs.CacheLocation`); never writes to it.

    Errors are never served: each key gets its newest ``"ok"`` answer, or ``None``.
    With ``keep_index`` (the default) the index is kept and brought up to date
    on each lookup; without it, each lookup reads the folder and frees what it
    read before returning. Example::

        reader = CacheReader(tmp_path / "cache")
        reader.lookup([record.key, "0" * 32])   # -> ["positive", None]
    """

    __slots__ = ("_index", "_keep_index", "_lock", "_seen", "corrupt", "folder", "location")

    def __init__(
        self,
        path: str | os.PathLike[str] | CacheLocation,
        *,
        keep_index: bool = True,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        location = path if isinstance(path, CacheLocation) else cache_location(path, options)
        assert location is not None
        self.location = location
        self.folder = location.logs  # the folder itself, or this machine's for a URL
        self._keep_index = keep_index
        self._lock = threading.Lock()  # the index and what it has seen
        self._index: KeyIndex | None = None  # None until a lookup needs it
        self._seen: set[str] = set()  # segments folded into the index
        #: Segments found unreadable: warned about once, never read again.
        self.corrupt: set[str] = set()

    def __repr__(self) -> str:
        return f"CacheReader({self.location.name!r})"

    def lookup(
        self,
        keys: Sequence[str] | pl.Series,
        *,
        unwritten: pa.Table | None = None,
        skip_logs: Collection[str] = (),
    ) -> list[str | None]:
        """The cached answer for each key, in the order given (duplicates included),
        or ``None`` where there is no successful answer.

        ``keys`` is any sequence of strings or a polars Series. ``unwritten`` holds
        records (:data:`~llmframe._cache_schema.SCHEMA`) the caller has not written
        yet, found as if they were in the folder (the newest ``created`` wins; on a
        tie, the unwritten record) for this lookup only; ``skip_logs`` names answer
        logs not to read (the caller's own, whose records it passes as ``unwritten``).

        >>> reader.lookup(["9f0c...", "0000..."])   # doctest: +SKIP
        ['positive', None]
        """
        if len(keys) == 0:
            return []
        index = self._current_index(unwritten, skip_logs)
        answers = index.answers_text(keys)
        del index  # so that _done() can give its memory back
        self._done()
        return answers

    def lookup_binary(
        self,
        keys: bytes | bytearray | memoryview,
        *,
        unwritten: pa.Table | None = None,
        skip_logs: Collection[str] = (),
    ) -> pa.ChunkedArray:
        """:meth:`lookup` for keys in binary: 16 bytes each, concatenated
        (``bytes.fromhex(key)`` per key, as :func:`llmframe._keys.row_digests` gives
        them). Returns an Arrow ``string`` chunked array, null where there is no answer.

        How a re-run looks up a million rows without a million key strings::

            reader.lookup_binary(bytes.fromhex(key1 + key2)).to_pylist()  # ["positive", None]
        """
        if len(keys) % 16:
            raise ValueError(f"lookup_binary: keys are 16 bytes each, got {len(keys)} bytes")
        index = self._current_index(unwritten, skip_logs)
        answers = index.answers_binary(keys)
        del index
        self._done()
        return answers

    def drop_index(self) -> None:
        """Free the index; the next lookup reads the folder again."""
        with self._lock:
            self._index = None
            self._seen.clear()
        release_memory()

    def _done(self) -> None:
        if not self._keep_index:
            self.drop_index()

    def _current_index(self, unwritten: pa.Table | None, skip_logs: Collection[str]) -> KeyIndex:
        # The logs before the segments: a log folded in between is in a segment by the
        # time the segments are listed (the segment is written before the log goes).
        logged = read_logs(self.location.logs, skip_logs)
        with self._lock:
            self._refresh()
            index = self._index
        assert index is not None
        extra = [t for t in (logged, unwritten) if t is not None and t.num_rows]
        if extra:
            # Folded into a copy, for this lookup only: logs are read afresh every time.
            index = index.folded(ok_rows_of(pa.concat_tables(extra)))
        return index

    def _refresh(self) -> None:
        """Fold segments not seen before into the index (``_lock`` held)."""
        if self._index is None:
            self._index = KeyIndex()
        sizes = self.location.segments.sizes()
        new = [n for n in sizes if n not in self._seen and n not in self.corrupt]
        if not new and not self._seen.issubset(sizes):
            # Segments vanished and no compaction wrote their records elsewhere:
            # someone cleared the cache. Forget those answers too.
            self._index = KeyIndex()
            self._seen.clear()
            return
        self._seen.intersection_update(sizes)  # forget what was compacted away
        if not new:
            return
        rows, read, corrupt = read_ok_rows(self.location.segments, new)
        self.corrupt.update(corrupt)
        self._index = self._index.folded(rows)
        self._seen.update(read)
        del rows
        release_memory()
