"""A segment written in small parquet pages reads back record for record."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from _cache_helpers import record, segments

from llmframe import _cache_segments
from llmframe._cache import AnswerCache
from llmframe._cache_reader import CacheReader


def test_a_segment_of_many_pages_reads_back_whole(tmp_path: Path) -> None:
    # 40,000 records: each column is several of the writer's pages (its keys alone ~1.3 MB).
    records = [record(n, answer=f"answer {n} " + "x" * (n % 50), seconds=n / 1000) for n in range(40_000)]
    with AnswerCache(tmp_path) as cache:
        cache.add(records)
    (name,) = segments(tmp_path)
    meta = pq.ParquetFile(tmp_path / name).metadata
    assert meta.num_rows == len(records) and meta.num_row_groups == 1
    keys = meta.row_group(0).column(meta.schema.names.index("key"))
    assert keys.total_uncompressed_size > 4 * _cache_segments.DATA_PAGE_BYTES
    table = pq.read_table(tmp_path / name)
    assert table.column("key").to_pylist() == [r.key for r in records]
    assert table.column("answer").to_pylist() == [r.answer for r in records]
    assert table.column("created").to_pylist() == [r.created for r in records]
    found = CacheReader(tmp_path).lookup([r.key for r in records[::997]])
    assert found == [r.answer for r in records[::997]]
