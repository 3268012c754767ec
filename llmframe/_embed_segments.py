"""The embedding segment store: ``<cache folder>/_embeddings/`` as a set of immutable Arrow IPC files.

One row per vector::

    key      fixed_size_binary(16)          blake2b-128 of (model, dimensions) and the text
    model    string
    dims     int32                          the vector's length
    vector   fixed_size_list<float32>[dims]
    created  timestamp[us, UTC]

Segments (``seg-<time_ns>-<pid>-<uuid8>.arrow``) are written as the answer
cache's parquet segments are: a new uniquely named file, written to a temporary
name, fsynced and ``os.replace``-d into place, never changed afterwards (so a
memory mapping of it stays valid, even once it is deleted). The folder's logs
(``.log-*.arrows``, :mod:`~llmframe._cache_log`) hold the same schema, one
vector length a log, and are folded into a segment here (:data:`VECTOR_LOGS`).

Compaction merges small segments into one per vector length, in the order the
rows were written (a re-run's vectors stay in long runs of the merged file, so
they are still used where they lie), keeping one vector per key. It writes the
merged segment first and deletes the files it merged after, so a crash in
between leaves duplicates, never a loss; the policy is the answer cache's
(:func:`~llmframe._cache_segments.auto_compact_plan`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from ._cache_log import LogFormat
from ._cache_segments import list_segments as segment_sizes
from ._cache_segments import new_segment, warn_corrupt

__all__ = [
    "FOLDER",
    "SEGMENT_NAME",
    "VECTOR_LOGS",
    "VectorCompaction",
    "compact_vectors",
    "dims_of",
    "halves",
    "key_pairs",
    "list_segments",
    "read_segment",
    "read_segments",
    "schema_of",
    "vectors_table",
    "write_vectors",
]

#: The subfolder of the cache folder that holds the embedding segments and logs.
FOLDER = "_embeddings"
SEGMENT_NAME = re.compile(r"seg-\d+-\d+-[0-9a-f]{8}\.arrow")
#: Rows a record batch of a compacted segment holds (its chunks: where a run of slices is cut).
_COMPACT_BATCH_ROWS = 1 << 18


def schema_of(dims: int) -> pa.Schema:
    return pa.schema([
        pa.field("key", pa.binary(16)), pa.field("model", pa.string()), pa.field("dims", pa.int32()),
        pa.field("vector", pa.list_(pa.float32(), dims)), pa.field("created", pa.timestamp("us", tz="UTC")),
    ])  # fmt: skip


def _is_vector_schema(schema: pa.Schema) -> bool:
    vector = schema.field("vector").type if "vector" in schema.names else None
    return isinstance(vector, pa.FixedSizeListType) and schema.equals(schema_of(vector.list_size))


def halves(keys: bytes | pa.Buffer, n: int | None = None) -> np.ndarray:
    """16-byte keys, concatenated, as an (n, 2) uint64 array (no copy)."""
    return np.frombuffer(keys, dtype="<u8", count=-1 if n is None else 2 * n).reshape(-1, 2)


def vectors_table(keys: bytes, model: str, vectors: np.ndarray) -> pa.Table:
    """One reply's rows (``keys``: 16 bytes a row, in the rows' order)."""
    n, dims = vectors.shape
    raw = np.ascontiguousarray(vectors, dtype="<f4")
    return pa.table({
        "key": pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(keys)]),
        "model": pa.array([model] * n, pa.string()),
        "dims": pa.array(np.full(n, dims, dtype=np.int32)),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(raw.reshape(-1)), dims),
        "created": pa.array(np.full(n, int(datetime.now(timezone.utc).timestamp() * 1e6), dtype="int64"),
                            pa.timestamp("us", tz="UTC")),
    }, schema=schema_of(dims))  # fmt: skip


def dims_of(table: pa.Table) -> int:
    return int(table.schema.field("vector").type.list_size)


def list_segments(folder: Path) -> dict[str, int]:
    """The segment names of ``folder``, oldest first (the name starts with time_ns), with their sizes."""
    return segment_sizes(folder, SEGMENT_NAME)


def write_vectors(folder: Path, table: pa.Table, *, durable_rename: bool = False) -> str:
    """Write ``table`` as a new segment, atomically (as the answer cache's are); return its name."""
    with new_segment(folder, ".arrow", durable_rename=durable_rename) as (name, sink), \
            pa.ipc.new_file(sink, table.schema) as writer:  # fmt: skip
        writer.write_table(table, max_chunksize=1 << 20)
    return name


#: The embedding logs: one vector length a log, folded into an Arrow IPC segment.
VECTOR_LOGS = LogFormat(_is_vector_schema, schema_of(1), write_vectors)


def read_segment(folder: Path, name: str, columns: list[str] | None = None) -> pa.Table | None:
    """A segment, memory-mapped (no copy); None if it is gone, or unreadable (with a warning)."""
    path = folder / name
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        return table if columns is None else table.select(columns)
    except Exception as exc:
        if path.exists():
            warn_corrupt(path, exc)
        return None


def read_segments(folder: Path, columns: list[str] | None = None) -> list[pa.Table]:
    """Every readable segment of the folder, oldest first. A segment compacted away
    between the listing and its reading makes the listing start again (its rows are
    in the merged segment, written before it was deleted), up to a few times."""
    tables: list[pa.Table] = []
    for _ in range(4):
        tables, gone = [], False
        for name in list_segments(folder):
            table = read_segment(folder, name, columns)
            if table is not None:
                tables.append(table)
            elif not (folder / name).exists():
                gone = True
                break
        if not gone:
            break
    return tables


# --------------------------------------------------------------------------- compaction


@dataclass(frozen=True, slots=True)
class VectorCompaction:
    """What :func:`compact_vectors` did."""

    records_read: int
    records_written: int
    corrupt: list[str]  # unreadable segments, left where they are


def key_pairs(table: pa.Table) -> np.ndarray:
    """``table``'s keys as one structured (hi, lo) uint64 pair a row, which numpy sorts."""
    keys = table.column("key").combine_chunks()
    return halves(keys.buffers()[1], len(keys)).copy().view([("hi", "<u8"), ("lo", "<u8")]).reshape(-1)


def _first_of_each_key(table: pa.Table) -> pa.Table:
    """``table`` with one row per key (its first), in the order the rows were."""
    _, first = np.unique(key_pairs(table), return_index=True)
    return table if len(first) == table.num_rows else table.take(np.sort(first))


def compact_vectors(folder: Path, names: Sequence[str]) -> VectorCompaction:
    """Merge the named segments into one per vector length, one vector per key."""
    read: list[str] = []
    corrupt: list[str] = []
    tables: list[pa.Table] = []
    for name in sorted(names):
        table = read_segment(folder, name)
        if table is not None:
            read.append(name)
            tables.append(table)
        elif (folder / name).exists():
            corrupt.append(name)
    records = sum(t.num_rows for t in tables)
    if len(read) < 2:
        return VectorCompaction(records, records, corrupt)
    written = 0
    for dims in sorted({dims_of(t) for t in tables}):
        merged = _first_of_each_key(pa.concat_tables([t for t in tables if dims_of(t) == dims]))
        written += merged.num_rows
        # Few, long chunks: a re-run's vectors come out of them as a few slices.
        batches = [merged.slice(lo, _COMPACT_BATCH_ROWS).combine_chunks()
                   for lo in range(0, merged.num_rows, _COMPACT_BATCH_ROWS)]  # fmt: skip
        write_vectors(folder, pa.concat_tables(batches), durable_rename=True)
    for old in read:
        with contextlib.suppress(OSError):  # gone (another compactor), or held open (Windows)
            os.remove(folder / old)
    return VectorCompaction(records, written, corrupt)
