"""What a cache row holds: the schema, records checked where they are made, columns refused."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from _cache_helpers import (
    BASE,
    key,
    record,
)

from llmframe._cache_schema import SCHEMA, CacheRecord, columns_to_table


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
