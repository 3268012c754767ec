"""Structured outputs end to end: the real ``openai`` client over HTTP to the fake server,
whose model fills every field of every row deterministically (``expected_value``)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Literal

import pandas as pd
import polars as pl
import pytest
from pydantic import BaseModel, Field, TypeAdapter

import llmframe
from llmframe.testing import FakeServer, Faults, expected_value


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    score: int = Field(ge=1, le=5)
    topics: list[str]
    refund_asked: bool | None


REVIEW_SCHEMA = Review.model_json_schema()
TEMPLATE = "Read this review: {review}"


def frame(kind: str, n: int) -> Any:
    data = {"review": [f"review number {i}" for i in range(n)], "n": list(range(n))}
    return pd.DataFrame(data, index=[f"r{i}" for i in range(n)]) if kind == "pandas" else pl.DataFrame(data)


def options(server: FakeServer, tmp_path: Any = None, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "base_url": server.base_url, "api_key": server.api_key,
            "cache": tmp_path if tmp_path is not None else False, "progress": False, **extra}  # fmt: skip


def column(out: Any, name: str) -> list[Any]:
    values = out[name].tolist() if isinstance(out, pd.DataFrame) else out[name].to_list()
    return [None if v is None or (not isinstance(v, (list, dict, str)) and pd.isna(v)) else v for v in values]


def expected_rows(n: int, schema: dict[str, Any]) -> list[Any]:
    return [expected_value(TEMPLATE.format(review=f"review number {i}"), schema) for i in range(n)]


KINDS = ["pandas", "polars"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_field_of_every_row_is_right_packed_by_default(kind: str) -> None:
    n = 300
    with FakeServer() as server:
        out = llmframe.apply(frame(kind, n), TEMPLATE, schema=Review, **options(server))
    report = out.llm.report
    assert report is not None and report.failed_rows == 0
    assert report.requests < n / 5, "the default packs"
    want = expected_rows(n, REVIEW_SCHEMA)
    for name in ("sentiment", "score", "topics", "refund_asked"):
        assert column(out, name) == [w[name] for w in want], name
    assert any(w["refund_asked"] is None for w in want) and any(w["refund_asked"] is not None for w in want)
    if kind == "pandas":
        assert list(out.index[:2]) == ["r0", "r1"] and column(out, "n") == list(range(n))
        assert {str(out[c].dtype) for c in ("score", "refund_asked")} == {"Int64", "boolean"}
        assert isinstance(out["sentiment"].dtype, pd.CategoricalDtype)
        assert list(out["sentiment"].cat.categories) == ["positive", "negative", "neutral"]
    else:
        assert out.schema["score"] == pl.Int64 and out.schema["refund_asked"] == pl.Boolean
        assert out.schema["sentiment"] == pl.Enum(["positive", "negative", "neutral"])
        assert out.schema["topics"] == pl.List(pl.String)


@pytest.mark.parametrize("kind", KINDS)
def test_a_single_type_is_one_typed_column(kind: str) -> None:
    with FakeServer() as server:
        out = llmframe.apply(frame(kind, 60), TEMPLATE, schema=int, output="year", **options(server))
        dates = llmframe.apply(frame(kind, 5), TEMPLATE, schema=dt.date, output="day", batch_size=1,
                               **options(server))  # fmt: skip
    assert column(out, "year") == expected_rows(60, {"type": "integer"})
    want_days = [dt.date.fromisoformat(d) for d in expected_rows(5, {"type": "string", "format": "date"})]
    got_days = [d.date() if isinstance(d, pd.Timestamp) else d for d in column(dates, "day")]
    assert got_days == want_days
    if kind == "pandas":
        assert str(out["year"].dtype) == "Int64" and str(dates["day"].dtype).startswith("datetime64")
    else:
        assert out.schema["year"] == pl.Int64 and dates.schema["day"] == pl.Date


@pytest.mark.parametrize("kind", KINDS)
def test_unnest_false_gives_one_struct_column(kind: str) -> None:
    with FakeServer() as server:
        out = llmframe.apply(frame(kind, 50), TEMPLATE, schema=Review, output="info", unnest=False,
                             **options(server))  # fmt: skip
    assert "sentiment" not in out.columns
    got = column(out, "info")
    assert got == expected_rows(50, REVIEW_SCHEMA)
    if kind == "polars":
        assert isinstance(out.schema["info"], pl.Struct)


@pytest.mark.parametrize("kind", KINDS)
def test_classify_answers_only_from_the_labels(kind: str) -> None:
    labels = ["billing", "bug", "feature", "other"]
    with FakeServer() as server:
        out = llmframe.classify(frame(kind, 100), TEMPLATE, labels=labels, output="topic", **options(server))
        multi = llmframe.classify(frame(kind, 100), TEMPLATE, labels=labels, multi=True, **options(server))
    schema = {"type": "string", "enum": labels}
    assert column(out, "topic") == expected_rows(100, schema)
    lists = column(multi, "labels")
    assert lists == expected_rows(100, {"type": "array", "items": schema})
    assert all(set(v) <= set(labels) for v in lists)
    if kind == "polars":
        assert out.schema["topic"] == pl.Enum(labels)
    else:
        assert list(out["topic"].cat.categories) == labels


def test_labels_steered_by_the_model_and_matched_loosely() -> None:
    # A model that answers "  Bug." for label "bug": the same label, not an error.
    with FakeServer(answer_fn=lambda prompt: "  Bug." if "1" in prompt else "other") as server:
        out = llmframe.classify(frame("pandas", 30), TEMPLATE, labels=["bug", "other"], batch_size=1,
                                **options(server))  # fmt: skip
    assert column(out, "label") == ["bug" if "1" in f"review number {i}" else "other" for i in range(30)]


@pytest.mark.parametrize("kind", KINDS)
def test_a_field_that_collides_is_an_error_before_any_request(kind: str) -> None:
    df = frame(kind, 10)
    df = df.assign(score=1) if kind == "pandas" else df.with_columns(score=pl.lit(1))
    with FakeServer() as server:
        with pytest.raises(llmframe.ConfigError, match="prefix="):
            llmframe.apply(df, TEMPLATE, schema=Review, **options(server))
        assert server.stats.requests == 0
        out = llmframe.apply(df, TEMPLATE, schema=Review, prefix="llm_", batch_size=1, **options(server))
    assert column(out, "score") == [1] * 10
    assert column(out, "llm_score") == [w["score"] for w in expected_rows(10, REVIEW_SCHEMA)]


@pytest.mark.parametrize(
    ("schema", "labels", "match"),
    [
        (dict[str, int], None, "fixed field names"),
        ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, None, "'not'"),
        (None, [], "empty"),
        (None, ["a", "b", "a"], "repeat"),
        (None, ["Bug", "bug"], "repeat"),
        ("int", None, "schema must be"),
    ],
)
def test_bad_schemas_and_labels_fail_before_any_request(schema: Any, labels: Any, match: str) -> None:
    with FakeServer() as server:
        with pytest.raises(llmframe.ConfigError, match=match):
            if labels is not None:
                llmframe.classify(frame("pandas", 3), TEMPLATE, labels=labels, **options(server))
            else:
                llmframe.apply(frame("pandas", 3), TEMPLATE, schema=schema, **options(server))
        assert server.stats.requests == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_cached_rerun_reads_back_the_same_typed_columns(kind: str, tmp_path: Any) -> None:
    df = frame(kind, 120)
    with FakeServer() as server:
        first = llmframe.apply(df, TEMPLATE, schema=Review, **options(server, tmp_path))
        sent = server.stats.requests
        again = llmframe.apply(df, TEMPLATE, schema=Review, **options(server, tmp_path))
        assert server.stats.requests == sent, "all cache hits"
        changed = llmframe.apply(df, TEMPLATE, schema={"sentiment": str}, **options(server, tmp_path))
        assert server.stats.requests > sent, "another schema is another key"
    if kind == "pandas":
        pd.testing.assert_frame_equal(first, again)
    else:
        assert first.equals(again) and first.schema == again.schema
    assert column(changed, "sentiment") == [
        v["sentiment"] for v in expected_rows(120, {"type": "object", "properties": {"sentiment": {"type": "string"}}})
    ]
    cached = llmframe.read_cache(tmp_path)
    stored = [json.loads(a) for a in cached["answer"].to_list() if a and a.startswith('{"sentiment":"')]
    assert stored and all(set(a) >= {"sentiment"} for a in stored)


# Not "shuffle": two ids swapping valid answers keep every id and every type, so only a
# canary on that very pair sees it (tests/test_packing_e2e.py measures canaries on it).
@pytest.mark.parametrize("fault", ["drop", "wrong_id", "wrong_type", "bad_enum", "truncate", "duplicate", "prose"])
def test_packing_faults_never_give_a_wrong_row(fault: str) -> None:
    n = 200
    with FakeServer(faults=Faults(**{f"{fault}_rate": 0.2}), seed=3) as server:
        out = llmframe.apply(frame("polars", n), TEMPLATE, schema=Review, batch_size=10, canaries=1,
                             error_column="error", **options(server))  # fmt: skip
        assert server.stats.requests > n / 10
    want = expected_rows(n, REVIEW_SCHEMA)
    errors = column(out, "error")
    fields = ("sentiment", "score", "topics", "refund_asked")
    rows = [{f: column(out, f)[i] for f in fields} for i in range(n)]
    wrong = [i for i in range(n) if errors[i] is None and rows[i] != want[i]]
    assert not wrong, f"{len(wrong)} rows answered wrong under {fault}"
    answered = sum(e is None for e in errors)
    assert answered >= 0.95 * n, "resends recover nearly every row"


def test_json_schema_rejected_falls_back_and_stays_right() -> None:
    with FakeServer(json_schema=False, rejects_like="llama.cpp") as server:
        out = llmframe.apply(frame("pandas", 80), TEMPLATE, schema=Review, **options(server))
    report = out.llm.report
    assert report is not None and report.failed_rows == 0
    assert report.response_format != "json_schema" and report.endpoint_notes
    want = expected_rows(80, REVIEW_SCHEMA)
    assert column(out, "score") == [w["score"] for w in want]


def test_estimate_counts_the_schema() -> None:
    with FakeServer() as server:
        plain = llmframe.estimate(frame("pandas", 200), TEMPLATE, **options(server))
        typed = llmframe.estimate(frame("pandas", 200), TEMPLATE, schema=Review, **options(server))
        labels = llmframe.estimate(frame("pandas", 200), TEMPLATE, labels=["a", "b"], **options(server))
        assert server.stats.requests == 0
    assert typed.input_tokens > plain.input_tokens
    assert typed.output_tokens > plain.output_tokens > 0
    assert labels.input_tokens > plain.input_tokens


def test_a_pydantic_validation_error_names_the_field() -> None:
    adapter = TypeAdapter(Review)
    assert adapter.validate_python({"sentiment": "positive", "score": 1, "topics": [], "refund_asked": None})
    with FakeServer(faults=Faults(wrong_type_rate=1.0)) as server:
        out = llmframe.apply(frame("pandas", 60), TEMPLATE, schema=Review, batch_size=5, canaries=0,
                             error_column="error", **options(server))  # fmt: skip
    report = out.llm.report
    assert report is not None and report.resent_rows > 0
    # Every packed reply has one bad item; resent alone (no faults on one-row replies) it is right.
    assert report.failed_rows == 0
    assert column(out, "score") == [w["score"] for w in expected_rows(60, REVIEW_SCHEMA)]


def test_a_model_that_breaks_the_schema_only_packed_does_not_stop_the_run() -> None:
    """Every packed item has a wrong type, every one-row answer is right (a small local model
    that flattens nested objects when it packs). The first packed replies alone hold more than
    ten invalid answers: their rows go again alone, pass, and the run ends with every row."""
    with FakeServer(faults=Faults(wrong_type_items=1.0)) as server:
        out = llmframe.apply(frame("pandas", 40), TEMPLATE, schema=Review, batch_size=5, canaries=0,
                             error_column="error", **options(server))  # fmt: skip
    report = out.llm.report
    assert report is not None and report.failed_rows == 0 and report.answered_rows == 40
    assert column(out, "score") == [w["score"] for w in expected_rows(40, REVIEW_SCHEMA)]
    alone = [r for r in server.stats.log if r.status == 200 and r.n_items == 1]
    assert len(alone) == 40  # each row went again alone once, straight from its packed request


@pytest.mark.parametrize(("batch_size", "most"), [(None, 30), (5, 80)])
def test_answers_that_never_match_the_schema_stop_the_run_early(batch_size: int | None, most: int) -> None:
    # The fake ignores "pattern" (so does strict mode): every answer fails validation, as
    # with a model or endpoint that does not follow the schema. One error, a few requests:
    # packed, the first wave's rows go again alone at once, and ten of those tell; the bound
    # is a wave of packed requests and one of rows alone at max_concurrency=32 (69 measured).
    class Code(BaseModel):
        code: str = Field(pattern=r"^\d{3}$")

    with FakeServer() as server:
        with pytest.raises(llmframe.EndpointError, match="none of the first 10 rows asked alone matched") as caught:
            llmframe.apply(frame("pandas", 300), TEMPLATE, schema=Code, batch_size=batch_size, **options(server))
        assert server.stats.requests <= most
    assert len(caught.value.errors) == 300
    assert "code" in str(caught.value)


def test_calibrate_compares_structured_answers_field_by_field() -> None:
    from llmframe.testing import Degrade

    with FakeServer(degrade=Degrade(error_per_item=0.03)) as server:
        report = llmframe.calibrate(frame("pandas", 100), TEMPLATE, schema=Review, sample=40,
                                    batch_sizes=(1, 5, 20), **options(server))  # fmt: skip
    by_size = {r.batch_size: r for r in report.rows}
    assert by_size[1].fields == {}
    assert set(by_size[20].fields) == {"sentiment", "score", "topics", "refund_asked"}
    assert min(by_size[20].fields.values()) < 1.0, "the degrading model gets fields wrong at 20"
    assert "fields agreeing at batch_size 20" in str(report)
