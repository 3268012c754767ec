"""lf.llm on polars LazyFrames: the eager answers, sent only at collect, composing with the plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pydantic
import pytest

import llmframe
from llmframe.testing import FakeServer, expected_answer

TEMPLATE = "Classify the sentiment of: {review}"


class Review(pydantic.BaseModel):
    stars: int
    summary: str


def opts(server: FakeServer, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "base_url": server.base_url, "api_key": server.api_key, "progress": False,
            **extra}  # fmt: skip


def frame(n: int = 60) -> pl.DataFrame:
    return pl.DataFrame({"review": [f"review number {i}" for i in range(n)], "n": list(range(n)),
                         "extra": [float(i) for i in range(n)]})  # fmt: skip


def answers(rows: range) -> list[str]:
    return [expected_answer(TEMPLATE.format(review=f"review number {i}")) for i in rows]


def test_lazy_until_collect_and_equal_to_the_eager_call(fake_server: FakeServer, tmp_path: Path) -> None:
    df = frame()
    out = df.lazy().llm.apply(TEMPLATE, output="sentiment", cache=str(tmp_path / "c"), **opts(fake_server))
    assert isinstance(out, pl.LazyFrame)
    assert out.collect_schema() == pl.Schema({"review": pl.String, "n": pl.Int64, "extra": pl.Float64,
                                              "sentiment": pl.String})  # fmt: skip
    assert fake_server.stats.requests == 0 and out.llm.report is None
    got = out.collect()
    assert got.equals(df.llm.apply(TEMPLATE, output="sentiment", cache=False, **opts(fake_server)))
    report = out.llm.report
    assert (report.rows, report.answered_rows, report.cached_rows) == (60, 60, 0)
    # A cached re-run sends nothing.
    fake_server.reset_stats()
    again = df.lazy().llm.apply(TEMPLATE, output="sentiment", cache=str(tmp_path / "c"), **opts(fake_server))
    assert again.collect().equals(got) and fake_server.stats.requests == 0
    assert again.llm.report.cached_rows == 60


def test_composes_with_filter_select_and_with_columns(fake_server: FakeServer) -> None:
    out = frame().lazy().llm.apply(TEMPLATE, batch_size=1, cache=False, **opts(fake_server))
    # A filter on another column runs first: only those rows are sent.
    got = out.filter(pl.col("n") % 3 == 0).with_columns(loud=pl.col("answer").str.to_uppercase()).collect()
    assert got["answer"].to_list() == answers(range(0, 60, 3))
    assert got["loud"].to_list() == [a.upper() for a in answers(range(0, 60, 3))]
    assert fake_server.stats.requests == 20
    # A select without the answer never asks for it.
    assert out.select("n", "extra").collect().height == 60 and fake_server.stats.requests == 20
    # A filter on the answer itself needs every answer first.
    positive = out.filter(pl.col("answer") == answers(range(1))[0]).collect()
    assert positive.height == sum(a == answers(range(1))[0] for a in answers(range(60)))


def test_streaming_collect_answers_every_batch(fake_server: FakeServer) -> None:
    df = frame(300)
    out = df.lazy().llm.apply(TEMPLATE, cache=False, **opts(fake_server))
    got = out.collect(engine="streaming")
    assert got["answer"].to_list() == answers(range(300)) and got["n"].to_list() == list(range(300))
    assert out.llm.report.rows == 300 and out.llm.report.answered_rows == 300


def test_schema_classify_embed_and_error_column_match_the_eager_types(fake_server: FakeServer) -> None:
    df = frame(30)
    common = opts(fake_server, cache=False)
    cases = [
        (df.lazy().llm.apply("Review {review}", schema=Review, error_column="why", **common),
         df.llm.apply("Review {review}", schema=Review, error_column="why", **common)),
        (df.lazy().llm.apply("Review {review}", schema=Review, unnest=False, output="r", **common),
         df.llm.apply("Review {review}", schema=Review, unnest=False, output="r", **common)),
        (df.lazy().llm.classify("Topic {review}", labels=["bug", "billing"], multi=True, **common),
         df.llm.classify("Topic {review}", labels=["bug", "billing"], multi=True, **common)),
        (df.lazy().llm.embed("review", dimensions=8, **{**common, "model": "text-embedding-3-small"}),
         df.llm.embed("review", dimensions=8, **{**common, "model": "text-embedding-3-small"})),
    ]  # fmt: skip
    for lazy, eager in cases:
        assert lazy.collect_schema() == eager.schema
        assert lazy.collect().equals(eager)
    assert cases[0][1].schema["stars"] == pl.Int64 and cases[0][1].columns[-1] == "why"


def test_an_existing_output_column_is_replaced_in_place(fake_server: FakeServer) -> None:
    df = frame(5).with_columns(answer=pl.lit("old"))
    lazy = df.lazy().llm.apply(TEMPLATE, cache=False, **opts(fake_server)).collect()
    assert lazy.equals(df.llm.apply(TEMPLATE, cache=False, **opts(fake_server)))
    assert lazy.columns == ["review", "n", "extra", "answer"]


def test_mistakes_are_found_before_collect(fake_server: FakeServer) -> None:
    lf = frame(4).lazy()
    with pytest.raises(llmframe.TemplateError, match="revew"):
        lf.llm.apply("Sentiment of {revew}", **opts(fake_server))
    with pytest.raises(llmframe.ConfigError, match="unknown option"):
        lf.llm.apply(TEMPLATE, temprature=0, **opts(fake_server))
    with pytest.raises(llmframe.ConfigError, match="labels="):
        lf.llm.classify(TEMPLATE, labels=None, **opts(fake_server))
    assert fake_server.stats.requests == 0


def test_errors_raise_at_collect_after_the_other_rows_are_cached(fake_server_factory: Any, tmp_path: Path) -> None:
    server = fake_server_factory(model_context=400)
    df = pl.DataFrame({"review": ["short one", "long " * 600, "short two"]})
    out = df.lazy().llm.apply(TEMPLATE, errors="raise", cache=str(tmp_path / "c"), **opts(server))
    with pytest.raises(llmframe.RunError, match=r"1 of [23] rows failed \(too_large: 1\)"):
        out.collect()
    report = out.llm.report  # the errors and counts, which polars' re-raise drops
    assert report.failed_rows == 1 and report.errors[0].kind == "too_large"
    stored = llmframe.read_cache(tmp_path / "c").filter(pl.col("status") == "ok")
    assert len(stored) == report.answered_rows >= 1  # what was answered before the raise is cached
