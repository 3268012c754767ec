"""``embed`` end to end: the real ``openai`` client over HTTP to the fake server's embeddings endpoint."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import llmframe
from llmframe import _retry
from llmframe._embed_texts import cut_to_tokens
from llmframe._tokens import get_tokenizer
from llmframe.testing import FakeServer, Faults
from llmframe.testing._embeddings import vectors

MODEL = "text-embedding-3-small"


def opts(server: FakeServer, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": MODEL, "base_url": server.base_url, "api_key": server.api_key,
                            "progress": False}  # fmt: skip
    base.update(extra)
    return base


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries without the real backoff (the server's retry-after still paces 429s)."""
    monkeypatch.setattr(_retry, "retry_delay", lambda attempt, headers: 0.01)


def matrix_of(out: Any, name: str = "vec") -> np.ndarray:
    return llmframe.embedding_matrix(out[name])


def rows_of(out: Any, name: str = "vec") -> list[list[float] | None]:
    """The column as lists of floats, ``None`` for a null, from either backend."""
    if isinstance(out, pl.DataFrame):
        return [None if v is None else list(v) for v in out[name].to_list()]
    nulls = out[name].isna().tolist()
    return [None if null else list(v) for v, null in zip(out[name].tolist(), nulls, strict=True)]


def test_ten_thousand_texts_go_in_five_requests_and_every_vector_is_exact(
    fake_server: FakeServer, make_frame: Any, backend: str
) -> None:
    texts = [f"short text number {i}" for i in range(10_000)]
    out = make_frame({"t": texts}).llm.embed("t", output="vec", dimensions=16, **opts(fake_server))
    assert fake_server.embedding_stats.requests <= 5
    assert fake_server.embedding_stats.items == 10_000
    X = matrix_of(out)
    assert X.shape == (10_000, 16) and X.dtype == np.float32
    assert np.array_equal(X, vectors(texts, 16))
    report = out.llm.report
    assert (report.rows, report.answered_rows, report.cached_rows, report.requests) == (10_000, 10_000, 0, 5)
    assert report.prompt_tokens == fake_server.embedding_stats.prompt_tokens
    assert report.cost_usd == pytest.approx(report.prompt_tokens * 0.02 / 1e6)
    if backend == "polars":
        assert out.schema["vec"] == pl.Array(pl.Float32, 16)
    else:
        assert out["vec"].dtype == pd.ArrowDtype(pa.list_(pa.float32(), 16))


def test_no_vector_is_lost_or_misplaced_under_429s_5xx_and_shuffled_replies(
    fake_server_factory: Any, no_backoff: None
) -> None:
    # The server holds 5 requests at a time (RPM 1,200 over 0.25 s), the client's limiter a
    # second's worth (20): it learns the limit from the headers and still meets 429s.
    server = fake_server_factory(rpm=1_200, burst_seconds=0.25, embeddings_shuffled=True,
                                 faults=Faults(error_rate=0.25), seed=3)  # fmt: skip
    texts = [f"review {i}: {'good ' * (i % 7)}product" for i in range(1_200)]
    out = llmframe.embed(pl.DataFrame({"t": texts}), "Embed: {t}", output="vec", dimensions=8,
                         max_batch_items=40, max_concurrency=8, **opts(server))  # fmt: skip
    stats = server.embedding_stats
    assert stats.server_errors > 0 and stats.rate_limited > 0, stats
    report = out.llm.report
    assert report.errors == [] and report.retries > 0
    assert np.array_equal(matrix_of(out), vectors([f"Embed: {t}" for t in texts], 8))


def test_nulls_get_a_null_vector_and_equal_texts_go_once(fake_server: FakeServer, make_frame: Any) -> None:
    df = make_frame({"title": ["a", None, "b", "a", "b", "c"], "body": ["x", "y", "y", "x", "y", None]})
    out = df.llm.embed("{title}/{body}", output="vec", dimensions=4, **opts(fake_server))
    assert fake_server.embedding_stats.items == 2  # "a/x" and "b/y"; the nulls send nothing
    column = rows_of(out)
    assert column[1] is None and column[5] is None
    expected = vectors(["a/x", "b/y"], 4)
    for row, want in ((0, 0), (3, 0), (2, 1), (4, 1)):
        assert np.array_equal(np.asarray(column[row], dtype=np.float32), expected[want])
    report = out.llm.report
    assert (report.null_rows, report.duplicate_rows, report.answered_rows, report.errors) == (2, 2, 4, [])


def test_a_text_over_the_input_limit_fails_alone_or_is_cut_with_truncate(fake_server: FakeServer) -> None:
    long = "word " * 400  # ~400 tokens, over a limit of 100
    df = pl.DataFrame({"t": ["short one", long, "short two"]})
    out = df.llm.embed("t", output="vec", dimensions=4, max_input_tokens=100, **opts(fake_server, cache=False))
    assert out["vec"].is_null().to_list() == [False, True, False]
    [error] = out.llm.report.errors
    assert (error.row, error.kind) == (1, "too_large") and "truncate=True" in error.message
    assert fake_server.embedding_stats.items == 2  # the long text was never sent

    cut = df.llm.embed("t", output="vec", dimensions=4, max_input_tokens=100, truncate=True,
                       **opts(fake_server, cache=False))  # fmt: skip
    shortened = cut_to_tokens(long, 100, get_tokenizer(MODEL))
    assert 0 < len(shortened) < len(long) and get_tokenizer(MODEL).count(shortened) <= 100
    assert np.array_equal(matrix_of(cut), vectors(["short one", shortened, "short two"], 4))
    assert cut.llm.report.errors == []


def test_errors_raise_after_the_rest_and_error_column_says_why(fake_server: FakeServer) -> None:
    df = pl.DataFrame({"t": ["fine", "word " * 400]})
    out = df.llm.embed("t", output="vec", dimensions=4, max_input_tokens=100, error_column="why",
                       **opts(fake_server))  # fmt: skip
    assert out["why"].to_list()[0] is None and out["why"].to_list()[1].startswith("too_large: ")
    with pytest.raises(llmframe.RunError, match="1 of 2 rows failed") as caught:
        df.llm.embed("t", output="vec", dimensions=4, max_input_tokens=100, errors="raise", **opts(fake_server))
    assert caught.value.report.cached_rows == 1  # the other row was embedded and kept


def test_an_input_the_endpoint_refuses_fails_alone(fake_server: FakeServer) -> None:
    # The client's limit is raised above the server's 8,192 tokens: the server's 400 is
    # about one input, so the batch is split until that input goes alone and fails.
    huge = "token " * 9_000
    texts = [f"t{i}" for i in range(6)]
    texts[4] = huge
    out = pl.DataFrame({"t": texts}).llm.embed("t", output="vec", dimensions=4, max_input_tokens=20_000,
                                                **opts(fake_server, cache=False))  # fmt: skip
    assert out["vec"].is_null().to_list() == [False, False, False, False, True, False]
    [error] = out.llm.report.errors
    assert error.row == 4 and error.kind == "too_large" and error.status == 400


def test_vectors_that_change_length_between_replies_stop_the_run(fake_server_factory: Any) -> None:
    server = fake_server_factory(embedding_length=lambda n: 8 if n == 1 else 16)
    df = pl.DataFrame({"t": [f"t{i}" for i in range(30)]})
    with pytest.raises(llmframe.EndpointError, match="changed length: 8 values, then 16"):
        df.llm.embed("t", output="vec", max_batch_items=10, max_concurrency=1, **opts(server))
    assert server.embedding_stats.requests == 2


def test_a_cached_rerun_sends_nothing_and_gives_the_same_vectors(fake_server: FakeServer, make_frame: Any) -> None:
    df = make_frame({"t": [f"text {i % 50}" for i in range(120)] + [None]})
    first = df.llm.embed("t", output="vec", dimensions=8, **opts(fake_server))
    sent = fake_server.embedding_stats.requests
    again = df.llm.embed("t", output="vec", dimensions=8, **opts(fake_server))
    assert fake_server.embedding_stats.requests == sent
    report = again.llm.report
    assert (report.requests, report.cached_rows, report.null_rows) == (0, 120, 1)
    assert rows_of(first) == rows_of(again) and rows_of(again)[-1] is None
    # Other dimensions, or another model, are other keys: nothing cached for them.
    other = df.llm.embed("t", output="vec", dimensions=4, **opts(fake_server))
    assert other.llm.report.cached_rows == 0


def test_the_cache_is_its_own_record_kind_beside_the_answer_cache(fake_server: FakeServer, tmp_path: Path) -> None:
    folder = tmp_path / "shared-cache"
    pl.DataFrame({"t": ["a", "b"]}).llm.embed("t", output="vec", dimensions=4, **opts(fake_server, cache=folder))
    table = llmframe.read_embeddings(folder)
    assert table.num_rows == 2 and table.schema.field("vector").type == pa.list_(pa.float32(), 4)
    assert table.schema.field("key").type == pa.binary(16)
    assert set(table.column("model").to_pylist()) == {MODEL}
    assert llmframe.read_cache(folder).height == 0  # the answer cache does not see the vectors
    assert pd.read_parquet(folder).shape[0] == 0 if list(folder.glob("seg-*.arrow")) else True


def test_embedding_matrix_is_a_view_of_the_column(fake_server: FakeServer, make_frame: Any) -> None:
    out = make_frame({"t": ["a", "b", "c"]}).llm.embed("t", output="vec", dimensions=5, **opts(fake_server))
    X = llmframe.embedding_matrix(out["vec"])
    assert X.shape == (3, 5) and X.dtype == np.float32
    assert np.shares_memory(X, llmframe.embedding_matrix(out["vec"]))  # both views of one buffer
    as_list = llmframe.embedding_matrix([np.asarray(v) for v in X])
    assert np.array_equal(as_list, X)


def test_failures_that_hit_every_row_stop_with_one_error(fake_server_factory: Any) -> None:
    server = fake_server_factory(api_keys=["right-key"], models=[MODEL])
    df = pl.DataFrame({"t": [f"t{i}" for i in range(5_000)]})
    with pytest.raises(llmframe.AuthenticationError, match="401"):
        df.llm.embed("t", **opts(server, api_key="wrong-key", cache=False, max_batch_items=100))
    assert server.embedding_stats.requests <= 2
    with pytest.raises(llmframe.EndpointError, match="404") as caught:
        df.llm.embed("t", **opts(server, api_key="right-key", model="no-such-model", cache=False,
                                 max_batch_items=100))  # fmt: skip
    assert len(caught.value.errors) == 5_000
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    with pytest.raises(llmframe.EndpointError, match=r"reach the endpoint|connect"):
        df.llm.embed("t", model=MODEL, base_url=dead, api_key="k", progress=False, cache=False)


def test_estimate_embed_counts_the_requests_the_run_sends(fake_server: FakeServer) -> None:
    df = pl.DataFrame({"t": [f"text {i}" for i in range(5_000)] + ["text 1"]})
    est = llmframe.estimate_embed(df, "t", max_batch_items=1_000, **opts(fake_server))
    assert (est.rows, est.cached_rows, est.requests, est.output_tokens) == (5_001, 0, 5, 0)
    assert est.one_row is not None and est.one_row.requests == 5_000
    out = df.llm.embed("t", output="vec", max_batch_items=1_000, **opts(fake_server))
    assert out.llm.report.requests == est.requests and out.llm.report.prompt_tokens == est.input_tokens
    assert est.cost_usd == pytest.approx(est.input_tokens * 0.02 / 1e6)
    assert llmframe.estimate_embed(df, "t", max_batch_items=1_000, **opts(fake_server)).cached_rows == 5_001


def test_aembed_and_sync_embed_inside_a_running_loop(fake_server: FakeServer) -> None:
    df = pl.DataFrame({"t": ["a", "b"]})

    async def main() -> tuple[Any, Any]:
        awaited = await llmframe.aembed(df, "t", output="vec", dimensions=4, **opts(fake_server, cache=False))
        inside = llmframe.embed(df, "t", output="vec", dimensions=4, **opts(fake_server, cache=False))  # as Jupyter
        return awaited, inside

    awaited, inside = asyncio.run(main())
    assert np.array_equal(matrix_of(awaited), vectors(["a", "b"], 4))
    assert np.array_equal(matrix_of(inside), vectors(["a", "b"], 4))


def test_options_that_do_not_apply_are_refused(fake_server: FakeServer) -> None:
    df = pl.DataFrame({"t": ["a"]})
    with pytest.raises(llmframe.ConfigError, match="do not apply to embed"):
        df.llm.embed("t", **opts(fake_server), batch_size=5)
    with pytest.raises(llmframe.ConfigError, match="dimensions"):
        df.llm.embed("t", dimensions=0, **opts(fake_server))
    with pytest.raises(llmframe.TemplateError):
        df.llm.embed("{nope}", **opts(fake_server))
