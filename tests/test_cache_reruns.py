"""Cached re-runs end to end: keyed a slice at a time they find what they found whole, and a
fully cached re-run builds no client and no tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pytest

from llmframe._cache import AnswerCache


def eager_rendering(df: Any, fields: list[str]) -> dict[str, list[str | None]]:
    """How every row was rendered before columns were rendered a slice at a time."""
    out: dict[str, list[str | None]] = {}
    for f in fields:
        if isinstance(df, pd.DataFrame):
            nulls = df[f].isna().tolist()
            out[f] = [None if n else (v if type(v) is str else str(v))
                      for v, n in zip(df[f].tolist(), nulls, strict=True)]  # fmt: skip
        else:
            series = df.get_column(f)
            if series.dtype.is_float():
                series = series.fill_nan(None)
            out[f] = [None if v is None else str(v) for v in series.to_list()]
    return out


def mixed_frame(backend: str) -> Any:
    data: dict[str, Any] = {
        "text": ["a", None, "c", "a", "é🙂", None, "g", "é🙂"],
        "real": [1.5, None, float("nan"), 1.5, 1.5, 3.0, 0.1, 1.5],
        "whole": [1, 2, 3, 1, 1, 6, 7, 1],
    }
    if backend == "polars":
        return pl.DataFrame(data)
    frame = pd.DataFrame(data)
    frame["nullable"] = pd.array([1, None, 3, 1, 1, 6, 7, 1], dtype="Int64")
    frame["mixed"] = pd.Series([1, "x", None, 1, True, float("nan"), pd.NaT, 2.5], dtype=object)
    frame["when"] = pd.to_datetime(["2024-01-01", None, "2024-01-03", "2024-01-01",
                                    "2024-01-01", "2024-01-06", "2024-01-07", "2024-01-08"])  # fmt: skip
    return frame


def test_columns_render_a_slice_at_a_time_as_they_rendered_whole(backend: str) -> None:
    from llmframe._frames import rendered_columns

    df = mixed_frame(backend)
    fields = [str(c) for c in df.columns]
    expected = eager_rendering(df, fields)
    for f, column_ in rendered_columns(df, fields).items():
        want = expected[f]
        assert len(column_) == len(want)
        assert column_[:] == list(column_) == [column_[i] for i in range(len(want))] == want
        assert column_[2:5] == want[2:5] and column_[5:2] == [] and column_[::-2] == want[::-2]
        assert column_[-1] == want[-1] and column_.count(None) == want.count(None)
        with pytest.raises(IndexError):
            column_[len(want)]


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 100_000])
def test_a_rerun_keyed_a_slice_at_a_time_finds_what_it_found_whole(
    tmp_path: Path, backend: str, chunk_rows: int
) -> None:
    from llmframe import _engine
    from llmframe._config import resolve
    from llmframe._frames import rendered_columns
    from llmframe._keys import call_prefix, row_digests, row_keys
    from llmframe._template import parse_template

    df = mixed_frame(backend)
    template = parse_template("{text} costs {real}, {whole} times", [str(c) for c in df.columns])
    opts = resolve(model="gpt-4o-mini", cache=str(tmp_path / "c"), progress=False)
    eager = eager_rendering(df, list(template.fields))
    prefix = call_prefix(model="gpt-4o-mini", template=template.text, system=None, params=None)
    keys = row_keys(prefix, [eager[f] for f in template.fields])
    digests, nulls = row_digests(prefix, [eager[f] for f in template.fields])
    assert [None if k is None else bytes.fromhex(k) for k in keys] == [
        None if r in nulls else digests[16 * r : 16 * r + 16] for r in range(len(keys))
    ]
    assert keys[3] == keys[0] and keys[7] == keys[4] != keys[0]
    assert keys[1] is keys[2] is keys[5] is None
    # Rows 0 and 3 (one key) are cached; so is the all-zero key null rows stand in for.
    with AnswerCache(tmp_path / "c") as cache:
        cache.add_columns(
            {"key": [keys[0], "0" * 32], "model": ["m"] * 2, "template_hash": ["t"] * 2,
             "status": ["ok"] * 2, "answer": ["zero", "never served"]}
        )  # fmt: skip
    for _ in range(2):  # the second run sees the same folder afresh
        prepared = _engine.prepare(
            rendered_columns(df, template.fields), len(df), template, opts, chunk_rows=chunk_rows
        )
        assert prepared.cache is not None
        prepared.cache.close()
        assert list(prepared.answers) == ["zero", None, None, "zero", None, None, None, None]
        assert [(job.key, job.values, job.rows) for job in prepared.todo] == [
            (keys[rows[0]], {f: eager[f][rows[0]] for f in template.fields}, rows)
            for rows in ([4, 7], [6])
        ]
        report = prepared.report
        assert (report.cached_rows, report.null_rows, report.duplicate_rows) == (2, 3, 1)


def test_a_fully_cached_rerun_builds_no_client_and_no_tokenizer(
    fake_server: Any, make_frame: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import llmframe
    from llmframe import _engine

    options: dict[str, Any] = {
        "model": "gpt-4o-mini", "base_url": fake_server.base_url, "api_key": fake_server.api_key,
        "progress": False, "cache": str(tmp_path / "c"),
    }  # fmt: skip
    df = make_frame({"review": ["good", "bad", None, "good"]})
    first = df.llm.apply("Sentiment of: {review}", **options)
    requests = fake_server.stats.requests

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("built although no row was left to send")

    monkeypatch.setattr(_engine, "ChatClient", refuse)
    monkeypatch.setattr(_engine, "get_tokenizer", refuse)
    again = df.llm.apply("Sentiment of: {review}", **options)
    assert fake_server.stats.requests == requests
    if isinstance(df, pd.DataFrame):
        pd.testing.assert_frame_equal(again, first)
    else:
        assert again.equals(first) and again.schema == first.schema
    report = llmframe.last_report()
    assert report is not None and report.rows == 4 and report.requests == 0
    assert (report.cached_rows, report.null_rows, report.batch_size_final) == (3, 1, 20)
