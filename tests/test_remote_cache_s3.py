"""The cache at ``s3://``, against a real S3-compatible server: moto's, started on a free
loopback port for the module, with s3fs as the client (the ``test`` extra installs both).

Runs go through ``df.llm.apply`` and the real ``openai`` client over HTTP to the fake
server, in this process and in child processes (``tests/_remote_child.py``) that share
the bucket and this machine's folder, as two processes on one machine would.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from _remote_child import TEMPLATE, review

from llmframe._cache_admin import default_cache_dir
from llmframe._cache_fs import local_folder
from llmframe._cache_log import list_logs, read_log
from llmframe._cache_reader import CacheReader
from llmframe._cache_segments import SEGMENT_NAME
from llmframe._keys import call_prefix, row_keys
from llmframe.testing import FakeServer, expected_answer

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")
pytestmark = pytest.mark.skipif(os.name != "posix", reason="kill -9 is POSIX")

KEY, SECRET = "test-key-7f3a", "test-secret-9c1e5d"  # moto takes any; neither may be written anywhere
CHILD = Path(__file__).with_name("_remote_child.py")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict[str, Any]]:
    """A new bucket's cache URL, and the ``cache_options`` that reach it."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    name = f"llmframe-{uuid.uuid4().hex[:10]}"
    options = {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}}
    s3fs.S3FileSystem(**options).call_s3("create_bucket", Bucket=name)
    return f"s3://{name}/cache/", options


def objects(url: str, options: dict[str, Any]) -> dict[str, bytes]:
    fs = s3fs.S3FileSystem(**options)
    root = url.removeprefix("s3://").rstrip("/")
    return {path.rsplit("/", 1)[-1]: fs.cat_file(path) for path in fs.find(root)}


def assert_no_secret(folders: Iterable[Path], blobs: Iterable[bytes], *secrets: str) -> None:
    """No file under ``folders`` and no blob holds any of ``secrets``."""
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert not any(s.encode() in data for s in secrets), path
    for blob in blobs:
        assert not any(s.encode() in blob for s in secrets)


def answer(n: int) -> str:
    return expected_answer(TEMPLATE.format(review=review(n)))


def keys_of(rows: Iterable[int]) -> list[str]:
    prefix = call_prefix(model="gpt-4o-mini", template=TEMPLATE, system=None, params=None)
    return [str(k) for k in row_keys(prefix, [[review(n) for n in rows]])]


def apply(server: FakeServer, url: str, options: dict[str, Any], rows: range) -> pd.DataFrame:
    df = pd.DataFrame({"review": [review(n) for n in rows]})
    return df.llm.apply(TEMPLATE, output="sentiment", model="gpt-4o-mini", base_url=server.base_url,
                        api_key=server.api_key, progress=False, cache=url, cache_options=options, batch_size=10)  # fmt: skip


def spawn(tmp_path: Path, name: str, server: FakeServer, url: str, options: dict[str, Any], rows: range,
          env: dict[str, str] | None = None, **extra: Any) -> tuple[subprocess.Popen[bytes], Path]:  # fmt: skip
    result = tmp_path / f"{name}.json"
    config = {"base_url": server.base_url, "api_key": server.api_key, "cache": url, "cache_options": options,
              "rows": list(rows), "batch_size": 10, "max_concurrency": 4, "result": str(result), **extra}  # fmt: skip
    path = tmp_path / f"{name}.config.json"
    path.write_text(json.dumps(config))
    stderr = open(tmp_path / f"{name}.stderr", "wb")  # noqa: SIM115  (the child writes it)
    return subprocess.Popen([sys.executable, str(CHILD), str(path)], stderr=stderr, env=env), result


def wait_until(condition: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def test_apply_on_s3_then_a_rerun_is_all_hits_and_no_credential_is_written(
    fake_server: FakeServer, bucket: tuple[str, dict[str, Any]]
) -> None:
    url, options = bucket
    first = apply(fake_server, url, options, range(60))
    assert first["sentiment"].tolist() == [answer(n) for n in range(60)]
    stored = objects(url, options)
    assert stored and all(SEGMENT_NAME.fullmatch(name) for name in stored)  # segments only, no temp files
    sent = fake_server.stats.requests
    again = apply(fake_server, url, options, range(60))
    assert again["sentiment"].tolist() == [answer(n) for n in range(60)]
    assert again.llm.report.cached_rows == 60 and fake_server.stats.requests == sent
    assert_no_secret([default_cache_dir()], stored.values(), KEY, SECRET)


def test_two_machines_sharing_an_s3_cache_write_their_own_segments_and_share_claims_in_redis(
    fake_server_factory: Any, bucket: tuple[str, dict[str, Any]], tmp_path: Path, redis_url: str
) -> None:
    """Two processes with their own local folders (two machines, as far as llmframe can
    tell: neither sees the other's logs or SQLite claims) fill one bucket with
    ``limiter="redis://..."``: each writes its own segments, and the claims in Redis keep
    the 40 rows both have from being paid twice (160 rows asked, 120 distinct)."""
    url, options = bucket
    server = fake_server_factory(latency=0.05)
    go = tmp_path / "go"
    rows = {"one": range(0, 80), "two": range(40, 120)}
    children = []
    for who, mine in rows.items():
        env = {**os.environ, "LLMFRAME_CACHE_DIR": str(tmp_path / f"machine-{who}")}
        children.append(spawn(tmp_path, who, server, url, options, mine, env=env, go=str(go), limiter=redis_url))
    wait_until(lambda: all(Path(str(result) + ".started").exists() for _, result in children), "both started")
    go.touch()
    for (child, result), mine in zip(children, rows.values(), strict=True):
        assert child.wait(timeout=120) == 0, (tmp_path / f"{result.stem}.stderr").read_text()
        assert json.loads(result.read_text())["answers"] == [answer(n) for n in mine]
    writers = {int(name.split("-")[2]) for name in objects(url, options)}
    assert writers == {child.pid for child, _ in children}  # each wrote its own segments, by name
    paid = sum(r.n_items for r in server.stats.snapshot()["log"] if r.status == 200)
    assert paid <= 120 + 20  # at most the rows in flight when a claim changed hands; 160 without
    assert CacheReader(url, options=options).lookup(keys_of(range(120))) == [answer(n) for n in range(120)]


def test_kill_9_mid_run_then_a_rerun_on_this_machine_loses_nothing(
    fake_server_factory: Any, bucket: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    url, options = bucket
    server = fake_server_factory(latency=0.05)
    # No flush before the kill: every answer it got is in its local log only.
    child, _ = spawn(tmp_path, "killed", server, url, options, range(400), flush_seconds=3600)
    logs = local_folder(url, default_cache_dir()) / "logs"

    def logged() -> int:
        return sum(read.records.num_rows for name in list_logs(logs) if (read := read_log(logs / name)) is not None)

    wait_until(lambda: logged() >= 50, "the child has logged 50 answers")
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    kept = logged()
    assert objects(url, options) == {}  # nothing reached S3: the answers are on this disk only
    rerun = apply(server, url, options, range(400))
    assert rerun["sentiment"].tolist() == [answer(n) for n in range(400)]
    assert rerun.llm.report.cached_rows >= kept  # every answer the dead process logged, folded and found
    assert not list_logs(logs) and objects(url, options)
