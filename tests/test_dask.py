"""ddf.llm on Dask: the synchronous scheduler and a real LocalCluster of 4 worker processes,
against the fake server over real HTTP (the server runs in this process; workers reach it on loopback)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pydantic
import pytest

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

import llmframe  # noqa: E402
import llmframe.dask  # noqa: E402
from llmframe._lazy import LazyCall  # noqa: E402
from llmframe.testing import FakeServer, expected_answer  # noqa: E402

TEMPLATE = "Classify the sentiment of: {review}"
ROWS = 120


class Review(pydantic.BaseModel):
    stars: int
    summary: str
    tags: list[str]


def opts(server: FakeServer, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "base_url": server.base_url, "api_key": server.api_key, **extra}


def frame(n: int = ROWS, partitions: int = 4) -> Any:
    pdf = pd.DataFrame({"review": [f"review number {i}" for i in range(n)], "n": range(n)},
                       index=pd.Index(range(100, 100 + n), name="rid"))  # fmt: skip
    return dd.from_pandas(pdf, npartitions=partitions)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """4 worker processes forked from one server that imported llmframe and Dask once (4 cold
    imports of each take ~10 s of CPU); a worker process then starts in well under a second."""
    import dask
    from distributed.utils import get_mp_context

    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        context = get_mp_context()  # distributed's preload list, set once, before the server starts
        context.set_forkserver_preload(["distributed", "dask.dataframe", "llmframe", "llmframe.dask",
                                        "llmframe.testing"])  # fmt: skip
        with _local_cluster() as client:
            yield client


@contextlib.contextmanager
def _local_cluster() -> Iterator[Any]:
    with distributed.LocalCluster(n_workers=4, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_dashboard_address=None) as local, distributed.Client(local) as client:  # fmt: skip
        client.wait_for_workers(4)  # under load they may register after the cluster returns
        client.run(_warm)  # each worker's imports and tokenizer, once, all at the same time
        yield client


def _warm() -> None:
    from llmframe._tokens import get_tokenizer

    get_tokenizer("gpt-4o-mini")


@pytest.fixture(params=["sync", "cluster"])
def scheduler(request: pytest.FixtureRequest) -> Any:
    """A ``compute`` keyword set: the synchronous scheduler, or the LocalCluster's client."""
    if request.param == "sync":
        return {"scheduler": "sync"}
    return {"scheduler": request.getfixturevalue("cluster")}


def test_apply_is_lazy_and_equals_the_pandas_path_row_for_row(fake_server: FakeServer, scheduler: Any,
                                                              tmp_path: Path) -> None:  # fmt: skip
    ddf = frame()
    out = ddf.llm.apply(TEMPLATE, output="sentiment", cache=str(tmp_path / "c"), **opts(fake_server))
    assert fake_server.stats.requests == 0  # building the graph sends nothing
    assert out.llm.report is None  # nor has any partition run
    got = out.compute(**scheduler)
    sent = fake_server.stats.requests
    assert sent > 0
    assert got["sentiment"].tolist() == [expected_answer(TEMPLATE.format(review=f"review number {i}"))
                                         for i in range(ROWS)]  # fmt: skip
    assert dict(got.dtypes) == dict(out.dtypes)  # meta is what the partitions return
    eager = ddf.compute().llm.apply(TEMPLATE, output="sentiment", cache=False, progress=False, **opts(fake_server))
    pd.testing.assert_frame_equal(got, eager)
    report = out.llm.report
    assert (report.rows, report.answered_rows, report.cached_rows, report.failed_rows) == (ROWS, ROWS, 0, 0)
    assert report.requests == sent and report.rate_limited == 0
    assert report.prompt_tokens > 0 and report.cost_usd is not None and report.cost_usd > 0
    # A cached re-run: a new graph over the same cache sends nothing and its report says why.
    fake_server.reset_stats()
    again = ddf.llm.apply(TEMPLATE, output="sentiment", cache=str(tmp_path / "c"), **opts(fake_server))
    pd.testing.assert_frame_equal(again.compute(**scheduler), got)
    assert fake_server.stats.requests == 0
    assert (again.llm.report.cached_rows, again.llm.report.requests) == (ROWS, 0)


def test_schema_classify_and_embed_meta_is_the_computed_dtypes(fake_server: FakeServer, cluster: Any) -> None:
    ddf = frame(40, partitions=3)
    local = ddf.compute()
    common = opts(fake_server, progress=False, cache=False)
    cases = [
        (ddf.llm.apply("Review {review}", schema=Review, error_column="why", **common),
         local.llm.apply("Review {review}", schema=Review, error_column="why", **common)),
        (ddf.llm.classify("Topic of {review}", labels=["bug", "billing"], **common),
         local.llm.classify("Topic of {review}", labels=["bug", "billing"], **common)),
        (ddf.llm.embed("review", dimensions=16, **{**common, "model": "text-embedding-3-small"}),
         local.llm.embed("review", dimensions=16, **{**common, "model": "text-embedding-3-small"})),
    ]  # fmt: skip
    for lazy, eager in cases:
        got = lazy.compute(scheduler=cluster)
        assert dict(lazy.dtypes) == dict(got.dtypes) == dict(eager.dtypes)
        pd.testing.assert_frame_equal(got, eager)
    assert cases[0][0].dtypes["stars"] == pd.Int64Dtype() and cases[1][0].dtypes["label"] == "category"


def test_configured_defaults_and_the_driver_cache_reach_the_workers(fake_server: FakeServer, cluster: Any,
                                                                    tmp_path: Path) -> None:  # fmt: skip
    """Worker processes never saw this configure() call nor this test's cache folder (set after
    the cluster started): the call is resolved on the driver and sent whole."""
    llmframe.configure(model="gpt-4o-mini", base_url=fake_server.base_url, api_key=fake_server.api_key)
    out = frame(30, partitions=3).llm.apply(TEMPLATE).compute(scheduler=cluster)
    assert out["answer"].tolist() == [expected_answer(TEMPLATE.format(review=f"review number {i}"))
                                      for i in range(30)]  # fmt: skip
    assert len(llmframe.read_cache(tmp_path / "cache")) == 30  # the driver's cache folder ($LLMFRAME_CACHE_DIR)


def test_a_url_cache_reaches_the_workers_as_the_url(fake_server: FakeServer, cluster: Any, tmp_path: Path) -> None:
    """cache= a URL: each worker process opens the URL itself, so every answer lands there
    (not in the driver's local folder for it) and a second compute is all cache hits."""
    pytest.importorskip("fsspec")
    url = (tmp_path / "shared").as_uri()  # file://...: the one file system a LocalCluster shares
    out = frame(30, partitions=3).llm.apply(TEMPLATE, **opts(fake_server, cache=url)).compute(scheduler=cluster)
    assert out["answer"].tolist() == [expected_answer(TEMPLATE.format(review=f"review number {i}"))
                                      for i in range(30)]  # fmt: skip
    assert len(llmframe.read_cache(url)) == 30
    assert any((tmp_path / "shared").glob("*.parquet"))  # segments written at the URL by the workers
    fake_server.reset_stats()
    again = frame(30, partitions=3).llm.apply(TEMPLATE, **opts(fake_server, cache=url))
    assert again.compute(scheduler=cluster)["answer"].tolist() == out["answer"].tolist()
    assert fake_server.stats.requests == 0


def test_limiter_machine_shares_one_quota_among_the_worker_processes(fake_server_factory: Any,
                                                                     cluster: Any) -> None:  # fmt: skip
    """4 worker processes, each its own limiter by default, would each allow the whole quota;
    limiter="machine" reaches every partition and makes them share it."""
    server = fake_server_factory(rpm=1200, burst_seconds=1.0)
    out = frame(80, partitions=4).llm.apply(TEMPLATE, batch_size=1, rpm=1200, limiter="machine", cache=False,
                                            **opts(server))  # fmt: skip
    got = out.compute(scheduler=cluster)
    assert got["answer"].tolist() == [expected_answer(TEMPLATE.format(review=f"review number {i}"))
                                      for i in range(80)]  # fmt: skip
    assert server.stats.requests - server.stats.rate_limited == 80
    assert server.stats.rate_limited <= 3 and out.llm.report.rate_limited == server.stats.rate_limited


def test_failed_rows_are_counted_and_placed_in_the_whole_frame(fake_server_factory: Any, cluster: Any) -> None:
    server = fake_server_factory(model_context=400)
    pdf = pd.DataFrame({"review": [f"review {i}" for i in range(24)]})
    pdf.loc[[3, 17], "review"] = "long " * 600  # cannot fit the context window: those rows fail alone
    pdf.loc[9, "review"] = None  # a null field: a null answer, no request
    out = dd.from_pandas(pdf, npartitions=3).llm.apply(TEMPLATE, error_column="error", cache=False,
                                                       **opts(server))  # fmt: skip
    got = out.compute(scheduler=cluster)
    assert got["answer"].isna().tolist() == [i in (3, 9, 17) for i in range(24)]
    assert got["error"].notna().tolist() == [i in (3, 17) for i in range(24)]
    report = out.llm.report
    assert (report.rows, report.failed_rows, report.null_rows) == (24, 2, 1)
    assert sorted(e.row for e in report.errors) == [3, 17]  # positions in the whole frame, not the partition


def test_errors_raise_reaches_the_caller_whole(fake_server_factory: Any, cluster: Any) -> None:
    server = fake_server_factory(model_context=400)
    pdf = pd.DataFrame({"review": ["short", "long " * 600, "short too", "fine"]})
    out = dd.from_pandas(pdf, npartitions=2).llm.apply(TEMPLATE, errors="raise", cache=False, **opts(server))
    with pytest.raises(llmframe.RunError, match="1 of 2 rows failed") as caught:
        out.compute(scheduler=cluster)
    assert [e.row for e in caught.value.errors] == [1]  # pickled back from the worker with its errors
    assert out.llm.report.failed_rows == 1


def test_mistakes_are_found_when_the_graph_is_built(fake_server: FakeServer) -> None:
    ddf = frame(8, partitions=2)
    with pytest.raises(llmframe.TemplateError, match="revew"):
        ddf.llm.apply("Sentiment of {revew}", **opts(fake_server))
    with pytest.raises(llmframe.ConfigError, match="pass base_url= and api_key="):
        ddf.llm.apply(TEMPLATE, client=object(), **opts(fake_server))
    with pytest.raises(llmframe.ConfigError, match="unknown option"):
        ddf.llm.apply(TEMPLATE, temprature=0, **opts(fake_server))
    with pytest.raises(llmframe.ConfigError, match="calibrate on a sample first"):
        ddf.llm.apply(TEMPLATE, batch_size="calibrated", **opts(fake_server))
    with pytest.raises(llmframe.ConfigError, match="does not pickle"):
        ddf.llm.apply(TEMPLATE, params={"seed": threading.Lock()}, **opts(fake_server))
    with pytest.raises(llmframe.ConfigError, match="dimensions="):
        ddf.llm.embed("review", dimensions=None, **opts(fake_server))
    assert fake_server.stats.requests == 0
    # What Dask shows of a task (its logs of a failed one print the arguments) holds no key.
    call = LazyCall("apply", TEMPLATE, opts(fake_server))
    assert repr(call) == f"LazyCall(kind='apply', template={TEMPLATE!r})"


def test_a_worker_killed_mid_run_loses_no_row(fake_server_factory: Any, cluster: Any, tmp_path: Path) -> None:
    """SIGKILL the worker process running a partition while its requests are in flight: Dask
    runs the partition again elsewhere, every row has its own answer, and the only rows paid
    twice are those the dead worker had in flight (what had arrived was in its answer log)."""
    asked: list[str] = []  # every prompt the server answered, in order (the server's own thread)

    def answer(prompt: str) -> str:
        asked.append(prompt)
        return expected_answer(prompt)

    server = fake_server_factory(latency=0.05, answer_fn=answer)
    ddf = frame(80, partitions=4)  # partition p holds reviews 20p .. 20p + 19
    batch_size, concurrency = 1, 2
    out = ddf.llm.apply(TEMPLATE, batch_size=batch_size, max_concurrency=concurrency, cache=str(tmp_path / "c"),
                        **opts(server))  # fmt: skip
    future = cluster.compute(out)

    def answered(partition: int) -> int:
        return sum(20 * partition <= int(p.rsplit(" ", 1)[1]) < 20 * partition + 20 for p in list(asked))

    # The victim: a worker whose partition the server has answered 3 rows of, so (2 in flight at
    # most) at least one answer reached the worker's log before it dies.
    victim, deadline = None, time.monotonic() + 20
    while victim is None and time.monotonic() < deadline:
        for address, keys in cluster.processing().items():
            parts = [k[1] for k in keys if isinstance(k, tuple) and str(k[0]).startswith("run_partition")]
            if len(parts) == 1 and 3 <= answered(parts[0]) < 20:
                victim = address
                break
        time.sleep(0.005)
    assert victim is not None, "no partition was mid-run long enough to kill its worker"
    pids = cluster.run(os.getpid, workers=[victim])
    os.kill(next(iter(pids.values())), signal.SIGKILL)
    answered_before_the_kill = server.stats.items
    got = future.result(timeout=60)
    assert got["answer"].tolist() == [expected_answer(TEMPLATE.format(review=f"review number {i}"))
                                      for i in range(80)]  # fmt: skip
    assert answered_before_the_kill < 80  # killed mid-run, not after it
    paid_twice = server.stats.items - 80  # rows the server answered, against the frame's rows
    assert 0 <= paid_twice <= concurrency * batch_size  # at most the dead worker's rows in flight
    report = out.llm.report
    assert report.rows == 80  # the partition run again replaced its own report
    assert report.cached_rows >= 1  # it found in the cache what the dead worker had been answered


def _python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(Path(llmframe.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)  # a hang guard: cold Dask imports are slow on a busy machine
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_import_llmframe_does_not_import_dask_and_says_what_to_install_without_it() -> None:
    code = ("import sys, llmframe; print('dask' in sys.modules)\n"
            "sys.modules['dask.dataframe'] = None  # as if Dask were not installed\n"
            "try:\n    import llmframe.dask\nexcept ImportError as e:\n    print(e)")  # fmt: skip
    assert _python(code).splitlines() == [
        "False", "llmframe.dask needs Dask: pip install 'llmframe[dask]' (dask[dataframe] and distributed)",
    ]  # fmt: skip
    # With Dask imported first, `import llmframe` registers ddf.llm by itself.
    code = "import dask.dataframe as dd, llmframe, pandas as pd; print(hasattr(dd.from_pandas(pd.DataFrame({'a': [1]}), 1), 'llm'))"
    assert _python(code) == "True"
