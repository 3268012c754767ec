"""What a cache row holds: the schema, records checked where they are made, columns refused."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from _cache_helpers import (
    BASE,
    key,
    record,
)

from llmframe._cache_schema import (
    SCHEMA,
    CacheRecord,
    columns_to_table,
    micros,
    records_to_table,
    rows_to_table_skipping_bad,
)


def test_records_are_validated_where_they_are_made() -> None:
    with pytest.raises(ValueError, match="status"):
        record(1, status="maybe")
    with pytest.raises(ValueError, match="timezone-aware"):
        CacheRecord(key(1), "m", "t", "a", "ok", None, 1, 1, None, datetime(2024, 1, 1), None)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"api_key": ["sk-secret"]}, "unknown columns"),
        ({"headers": ["Authorization: Bearer x"]}, "unknown columns"),
        ({}, "missing required columns"),
        ({"status": ["done"]}, "'ok' or 'error'"),
        ({"status": [None]}, "null"),
        ({"answer": ["a", "b"]}, "has 2 values"),
        ({"created": [datetime(2024, 1, 1)]}, "timezone-aware"),
        ({"prompt_tokens": ["many"]}, "prompt_tokens"),
    ],
)
def test_columns_outside_the_schema_or_unfit_are_refused(
    columns: dict[str, Any], message: str
) -> None:
    base: dict[str, Any] = {
        "key": [key(1)],
        "model": ["m"],
        "template_hash": ["t"],
        "status": ["ok"],
    }
    if columns:
        base.update(columns)
    else:
        del base["model"]
    with pytest.raises(ValueError, match=message):
        columns_to_table(base, BASE)


def test_no_place_for_secrets() -> None:
    fields = set(CacheRecord.__dataclass_fields__)
    assert fields == set(SCHEMA.names)
    assert not {"api_key", "authorization", "headers", "base_url"} & fields


def as_row(r: CacheRecord) -> tuple[Any, ...]:
    values = [getattr(r, name) for name in SCHEMA.names]
    values[SCHEMA.names.index("created")] = micros(r.created)
    return tuple(values)


def test_rows_make_the_table_records_make() -> None:
    records = [record(i, f"answer {i}", seconds=i * 1.5, request_id=f"req-{i}") for i in range(3)]
    records.append(record(3, status="error"))
    rows = [as_row(r) for r in records]
    assert rows_to_table_skipping_bad(rows).equals(records_to_table(records))
    assert rows_to_table_skipping_bad(rows).to_pylist() == [
        {name: getattr(r, name) for name in SCHEMA.names} for r in records
    ]
    many = [record(i, seconds=i / 1000) for i in range(100)]  # past the struct path's size
    assert rows_to_table_skipping_bad([as_row(r) for r in many]).equals(records_to_table(many))


def test_micros_is_exact() -> None:
    assert micros(datetime(1970, 1, 1, tzinfo=timezone.utc)) == 0
    when = datetime(2026, 12, 2, 1, 2, 3, 456789, tzinfo=timezone.utc)
    assert micros(when) == 1_796_173_323_456_789
    assert micros(when.astimezone(timezone(timedelta(hours=5)))) == micros(when)


def test_a_row_that_does_not_fit_is_dropped_with_a_warning_the_rest_kept() -> None:
    good, bad = as_row(record(1)), as_row(record(2))
    bad = (*bad[:6], "many", *bad[7:])  # prompt_tokens as text
    with pytest.warns(RuntimeWarning, match=f"not caching the record for key '{key(2)}'"):
        table = rows_to_table_skipping_bad([good, bad])
    assert table.column("key").to_pylist() == [key(1)]
    with pytest.warns(RuntimeWarning):
        assert rows_to_table_skipping_bad([bad]).num_rows == 0
