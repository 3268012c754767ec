"""The cache at an fsspec URL (``_cache_fs``), through fsspec's pure-Python file systems:
``memory://`` and ``file://``. The same paths against S3 are in test_remote_cache_s3.py.

Runs go through ``df.llm.apply`` and the real ``openai`` client over HTTP to the fake
server; every answer is checked against :func:`expected_answer`.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pytest
from _cache_helpers import key, record

import llmframe
from llmframe._cache import AnswerCache
from llmframe._cache_admin import cache_location, default_cache_dir, resolve_cache_dir
from llmframe._cache_fs import local_folder, redact
from llmframe._cache_log import AnswerLog, list_logs
from llmframe._cache_reader import CacheReader
from llmframe._cache_schema import records_to_table
from llmframe._cache_segments import AUTO_COMPACT_SEGMENTS
from llmframe._config import resolve
from llmframe._errors import ConfigError
from llmframe.testing import FakeServer, expected_answer

TEMPLATE = "Classify the sentiment of: {review}"


@pytest.fixture(params=["memory", "file"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh cache URL: in fsspec's in-memory store, or a local folder as ``file://``."""
    if request.param == "memory":
        root = f"/llmframe-test-{uuid.uuid4().hex[:8]}"
        yield f"memory://{root}/cache/"
        memory = fsspec.filesystem("memory")
        if memory.exists(root):
            memory.rm(root, recursive=True)
    else:
        yield f"file://{tmp_path}/remote-cache/"


def remote_names(url: str) -> list[str]:
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)) if fs.exists(root) else []


def apply(server: FakeServer, url: str, rows: range, **extra: Any) -> pd.DataFrame:
    df = pd.DataFrame({"review": [f"review {n}" for n in rows]})
    return df.llm.apply(TEMPLATE, output="sentiment", model="gpt-4o-mini", base_url=server.base_url,
                        api_key=server.api_key, progress=False, cache=url, **extra)  # fmt: skip


def answers_ok(out: pd.DataFrame, rows: range) -> bool:
    return out["sentiment"].tolist() == [expected_answer(TEMPLATE.format(review=f"review {n}")) for n in rows]


def test_apply_writes_segments_at_the_url_and_a_rerun_is_all_hits(fake_server: FakeServer, url: str) -> None:
    first = apply(fake_server, url, range(40), batch_size=8)
    assert answers_ok(first, range(40)) and first.llm.report.requests > 0
    names = remote_names(url)
    assert names and all(n.startswith("seg-") and n.endswith(".parquet") for n in names)  # segments only
    local = local_folder(url, default_cache_dir())
    assert not list_logs(local / "logs")  # folded at close
    assert not list(local.rglob("*.parquet"))  # no segment on this machine
    sent = fake_server.stats.requests
    again = apply(fake_server, url, range(40), batch_size=8)
    assert answers_ok(again, range(40))
    assert again.llm.report.cached_rows == 40 and fake_server.stats.requests == sent
    # Ten new rows among the forty: only they are sent.
    more = apply(fake_server, url, range(30, 50), batch_size=8)
    assert answers_ok(more, range(30, 50)) and more.llm.report.cached_rows == 10


def test_an_orphaned_local_log_is_folded_into_a_remote_segment_on_open(url: str) -> None:
    where = cache_location(url)
    assert where is not None and where.remote
    log = AnswerLog.create(where.logs)  # a process that died with answers in its log
    log.append(records_to_table([record(1, "logged"), record(2, "logged")]))
    log.close()
    assert remote_names(url) == []
    with AnswerCache(url) as cache:
        assert not list_logs(where.logs)
        assert len(remote_names(url)) == 1
        assert cache.lookup([key(1), key(2), key(3)]) == ["logged", "logged", None]


def test_a_reader_lists_again_and_finds_segments_written_after_its_first_lookup(url: str) -> None:
    reader = CacheReader(url)  # keeps its index, as the claims' poll does
    assert reader.lookup([key(1)]) == [None]
    with AnswerCache(url) as writer:
        writer.add([record(1, "later")])
    assert reader.lookup([key(1)]) == ["later"]


def test_many_remote_segments_are_compacted_by_a_flush(url: str) -> None:
    where = cache_location(url)
    assert where is not None
    for n in range(AUTO_COMPACT_SEGMENTS + 1):
        where.segments.write(records_to_table([record(n, f"a{n}")]))
    with AnswerCache(url) as cache:
        cache.add([record(1000, "new")])
    assert len(remote_names(url)) < AUTO_COMPACT_SEGMENTS
    assert AnswerCache(url).lookup([key(0), key(AUTO_COMPACT_SEGMENTS), key(1000)]) == [
        "a0", f"a{AUTO_COMPACT_SEGMENTS}", "new"
    ]  # fmt: skip


def test_the_admin_functions_take_a_url(url: str) -> None:
    with AnswerCache(url) as cache:
        cache.add([record(1, "one"), record(2, "two")])
    with AnswerCache(url) as cache:
        cache.add([record(1, "one again", seconds=5)])
    info = llmframe.cache_info(url)
    assert (info["folder"], info["segments"], info["records"], info["keys"]) == (url, 2, 3, 2)
    assert sorted(llmframe.read_cache(url)["answer"].to_list()) == ["one", "one again", "two"]
    done = llmframe.compact_cache(url)
    assert (done["segments_before"], done["segments_after"], done["records_after"]) == (2, 1, 2)
    assert CacheReader(url).lookup([key(1), key(2)]) == ["one again", "two"]
    assert llmframe.clear_cache(url) == 1
    assert remote_names(url) == [] and llmframe.cache_info(url)["records"] == 0


def test_without_fsspec_a_url_is_a_config_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)  # import fsspec raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'llmframe\[remote\]'"):
        AnswerCache("s3://bucket/llm-cache/")


def test_an_unknown_scheme_is_a_config_error_without_the_credentials() -> None:
    with pytest.raises(ConfigError, match="cannot open the cache nope://bucket/x") as caught:
        llmframe.cache_info("nope://user:hunter2-pw@bucket/x?token=hunter2-token",
                            cache_options={"secret": "hunter2-secret"})  # fmt: skip
    assert "hunter2" not in str(caught.value)


def test_urls_are_redacted_and_name_one_local_folder_without_their_credentials() -> None:
    assert redact("s3://AKIA:se-cret@bucket/cache/?token=abc#x") == "s3://bucket/cache/"
    root = Path("/home/u/.cache/llmframe")
    assert local_folder("s3://k:s@bucket/cache/", root) == local_folder("s3://bucket/cache", root)
    assert local_folder("s3://bucket/cache", root) != local_folder("s3://bucket/other", root)
    assert resolve_cache_dir("s3://k:s@bucket/cache/") == local_folder("s3://bucket/cache", default_cache_dir())


def test_embed_refuses_a_url_cache_with_a_config_error(fake_server: FakeServer) -> None:
    df = pd.DataFrame({"text": ["a", "b"]})
    with pytest.raises(ConfigError, match="embed cannot keep its cache at a URL"):
        df.llm.embed("{text}", model="text-embedding-3-small", base_url=fake_server.base_url,
                     api_key=fake_server.api_key, progress=False, cache="memory://x/cache/")  # fmt: skip


def test_cache_options_are_checked_and_never_in_the_options_repr() -> None:
    with pytest.raises(ConfigError, match="cache_options must be a dict"):
        resolve(model="m", cache_options="key=x")
    opts = resolve(model="m", cache="s3://bucket/c/", cache_options={"secret": "hunter2-secret"})
    assert opts.cache_options == {"secret": "hunter2-secret"} and "hunter2" not in repr(opts)


def test_the_remote_cache_benchmark_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:  # plain `pytest` does not put the repository on sys.path
        sys.path.insert(0, root)
    from benchmarks import remote_cache

    assert remote_cache.main(["--scale", "0.001", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "command: python -m benchmarks.remote_cache --scale 0.001" in printed
    [saved] = tmp_path.glob("remote_cache*.json")
    results = json.loads(saved.read_text())["results"]
    assert {r["cache"] for r in results} >= {"local folder", "file://", "memory://"}
    assert all(r["requests"] == 0 and r["cached_rows"] == r["rows"] for r in results if r["call"] == "cached")
