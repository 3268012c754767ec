"""What one cached answer is: the columns of every segment, :class:`CacheRecord`,
and records (or columns) turned into an Arrow table of exactly those columns.

Apart from the files and the index so that what a cache row may hold is
defined in one short place: there is no column for an API key or a request
header, and :func:`columns_to_table` refuses any column outside :data:`SCHEMA`,
so nothing else can reach the disk.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from ._warn import warn_user

__all__ = [
    "COLUMNS",
    "POLARS_SCHEMA",
    "SCHEMA",
    "TIMESTAMP",
    "CacheRecord",
    "columns_to_table",
    "micros",
    "records_to_table",
    "records_to_table_skipping_bad",
    "rows_to_table_skipping_bad",
]

TIMESTAMP = pa.timestamp("us", tz="UTC")

#: Column order and types of every segment. Only the nullable columns may hold nulls.
SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("template_hash", pa.string(), nullable=False),
        pa.field("answer", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("prompt_tokens", pa.int64(), nullable=False),
        pa.field("completion_tokens", pa.int64(), nullable=False),
        pa.field("cost_usd", pa.float64()),
        pa.field("created", TIMESTAMP, nullable=False),
        pa.field("request_id", pa.string()),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
POLARS_SCHEMA: dict[str, pl.DataType] = {
    "key": pl.String(),
    "model": pl.String(),
    "template_hash": pl.String(),
    "answer": pl.String(),
    "status": pl.String(),
    "error": pl.String(),
    "prompt_tokens": pl.Int64(),
    "completion_tokens": pl.Int64(),
    "cost_usd": pl.Float64(),
    "created": pl.Datetime("us", "UTC"),
    "request_id": pl.String(),
}
_STATUSES = ("ok", "error")


@dataclass(frozen=True, slots=True)
class CacheRecord:
    """One row's answer (or failure), as stored in the cache.

    ``key`` is the row's cache key (32 hex characters, see the keys module);
    ``created`` must be timezone-aware. Example::

        CacheRecord(key="9f0c...", model="gpt-4o-mini", template_hash="1a2b...",
                    answer="positive", status="ok", error=None, prompt_tokens=41,
                    completion_tokens=3, cost_usd=8.0e-06,
                    created=datetime.now(timezone.utc), request_id="req_123")
    """

    key: str
    model: str
    template_hash: str
    answer: str | None
    status: str  # "ok" | "error"
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    created: datetime  # UTC, tz-aware
    request_id: str | None

    def __post_init__(self) -> None:
        # Checked here, where the caller can see which record is wrong, not at
        # flush time, where one bad record would hold up everyone else's.
        if self.status not in _STATUSES:
            raise ValueError(
                f"status must be 'ok' or 'error', got {self.status!r} (key {self.key})"
            )
        if self.created.tzinfo is None:
            raise ValueError(
                f"created must be timezone-aware, e.g. datetime.now(timezone.utc) (key {self.key})"
            )


_FIELD_GETTERS = tuple(operator.attrgetter(name) for name in COLUMNS)


_ROW_GETTER = operator.attrgetter(*COLUMNS)
_ROW_TYPE = pa.struct(list(SCHEMA))
#: Up to this many records, one struct array is built from row tuples: a reply's
#: records become a table in about a third of the time that eleven arrays take.
_FEW_RECORDS = 64


def records_to_table(records: Sequence[CacheRecord]) -> pa.Table:
    if len(records) <= _FEW_RECORDS:
        rows = pa.array(list(map(_ROW_GETTER, records)), type=_ROW_TYPE)
        return pa.Table.from_struct_array(rows)
    # Column by column: zip(*rows) over a million tuples is several times slower.
    return pa.Table.from_arrays(
        [
            pa.array(list(map(getter, records)), type=field.type)
            for getter, field in zip(_FIELD_GETTERS, SCHEMA, strict=True)
        ],
        schema=SCHEMA,
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def micros(when: datetime) -> int:
    """``when`` (timezone-aware) in microseconds since the epoch: a row's ``created``."""
    return (when - _EPOCH) // _MICROSECOND


def rows_to_table(rows: Sequence[tuple[Any, ...]]) -> pa.Table:
    """Records given as tuples of their values in :data:`COLUMNS` order, ``created`` in
    microseconds since the epoch (:func:`micros`), as a table: what a run stores per
    reply, without a :class:`CacheRecord` per row (whose checks the run needs not: it
    makes ``status`` and ``created`` itself). Arrow reads the tuples as one struct array;
    a timestamp given as an integer skips a time-zone lookup per value (~35% of the
    conversion for a 20-row reply)."""
    return pa.Table.from_struct_array(pa.array(rows, type=_ROW_TYPE))


Item = TypeVar("Item")


def _skipping_bad(
    items: Sequence[Item], to_table: Callable[[Sequence[Item]], pa.Table], key: Callable[[Item], str]
) -> pa.Table:
    try:
        return to_table(items)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        pass
    good: list[Item] = []
    for item in items:
        try:
            to_table([item])
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            warn_user(
                f"llmframe cache: not caching the record for key {key(item)!r}: {exc}",
                RuntimeWarning
            )
            continue
        good.append(item)
    if not good:
        return SCHEMA.empty_table()
    return to_table(good)


def records_to_table_skipping_bad(records: Sequence[CacheRecord]) -> pa.Table:
    """Like :func:`records_to_table`, but a record whose values do not fit the
    schema (a number where text belongs, say) is dropped with a warning instead
    of keeping every other record out of the cache."""
    return _skipping_bad(records, records_to_table, operator.attrgetter("key"))


def rows_to_table_skipping_bad(rows: Sequence[tuple[Any, ...]]) -> pa.Table:
    """:func:`rows_to_table`, dropping with a warning a row whose values do not fit."""
    return _skipping_bad(rows, rows_to_table, operator.itemgetter(0))


def _column_to_arrow(name: str, values: Any, length: int | None) -> pa.Array | pa.ChunkedArray:
    target = SCHEMA.field(name).type
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        array = values
    elif isinstance(values, pl.Series):
        array = values.to_arrow()
    else:
        # Let pyarrow infer timestamps so that naive ones can be refused below.
        try:
            array = pa.array(values, type=None if name == "created" else target)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise ValueError(
                f"add_columns: column {name!r} cannot be stored as {target}: {exc}"
            ) from exc
    if name == "created" and pa.types.is_timestamp(array.type) and array.type.tz is None:
        raise ValueError("add_columns: 'created' must be timezone-aware (UTC)")
    if array.type != target:
        try:
            array = array.cast(target)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise ValueError(
                f"add_columns: column {name!r} cannot be stored as {target}: {exc}"
            ) from exc
    if length is not None and len(array) != length:
        raise ValueError(
            f"add_columns: column {name!r} has {len(array)} values, 'key' has {length}"
        )
    if not SCHEMA.field(name).nullable and array.null_count:
        raise ValueError(f"add_columns: column {name!r} has {array.null_count} null values")
    return array


def columns_to_table(columns: Mapping[str, Any], now: datetime) -> pa.Table:
    unknown = sorted(set(columns) - set(COLUMNS))
    if unknown:
        # Also the guard that keeps API keys and headers out of the cache.
        raise ValueError(
            f"add_columns: unknown columns {unknown}; the cache stores only {list(COLUMNS)}"
        )
    missing = [name for name in ("key", "model", "template_hash", "status") if name not in columns]
    if missing:
        raise ValueError(f"add_columns: missing required columns {missing}")
    key = _column_to_arrow("key", columns["key"], None)
    length = len(key)
    defaults: dict[str, Any] = {
        "prompt_tokens": pa.repeat(pa.scalar(0, pa.int64()), length),
        "completion_tokens": pa.repeat(pa.scalar(0, pa.int64()), length),
        "created": pa.repeat(pa.scalar(now, TIMESTAMP), length),
    }
    arrays: list[pa.Array | pa.ChunkedArray] = []
    for field in SCHEMA:
        if field.name == "key":
            arrays.append(key)
        elif field.name in columns:
            arrays.append(_column_to_arrow(field.name, columns[field.name], length))
        elif field.name in defaults:
            arrays.append(defaults[field.name])
        else:
            arrays.append(pa.nulls(length, field.type))
    status = arrays[COLUMNS.index("status")]
    if length and not pc.all(pc.is_in(status, value_set=pa.array(_STATUSES))).as_py():
        raise ValueError("add_columns: 'status' must be 'ok' or 'error' in every row")
    chunked = [a if isinstance(a, pa.ChunkedArray) else pa.chunked_array([a]) for a in arrays]
    return pa.Table.from_arrays(chunked, schema=SCHEMA)
