"""A batch job survives its process: ``kill -9`` after submit (in a child process), then the
same call in another process (the test's) waits for the job in flight instead of uploading
and creating it again; and ``kill -9`` in the middle of submitting (before the upload or the
create, or after either answered but before its id was written) leaves one file and one
batch on the server once the same call ran again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import column

import llmframe
from llmframe._batch_state import list_jobs
from llmframe.testing import FakeServer, expected_answer

CHILD = Path(__file__).with_name("_batch_child.py")
PACKAGE_ROOT = Path(llmframe.__file__).absolute().parent.parent
TEMPLATE = "Classify the sentiment of: {review}"


def child(server: FakeServer, cache: Path, tmp: Path, rows: list[int],
          crash: str | None = None) -> tuple[subprocess.Popen[bytes], Path]:  # fmt: skip
    result = tmp / "submitted.json"
    config = tmp / "config.json"
    config.write_text(json.dumps({"base_url": server.base_url, "api_key": server.api_key, "cache": str(cache),
                                  "rows": rows, "result": str(result), "crash": crash}))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    return subprocess.Popen([sys.executable, str(CHILD), str(config)], env=env), result


def wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None or path.exists(), f"the child exited with {proc.returncode}"
        assert time.monotonic() < deadline, "the child never wrote its result"
        time.sleep(0.02)
    return json.loads(path.read_text())


def test_kill_after_submit_then_the_same_call_waits_for_the_job(tmp_path: Path) -> None:
    rows = list(range(600))
    cache = tmp_path / "cache"
    with FakeServer(batch_seconds=1.5, batch_validate_seconds=0.05) as server:
        first, result = child(server, cache, tmp_path, rows)
        try:
            submitted = wait_for(result, first)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        assert first.returncode == -signal.SIGKILL
        (state,) = list_jobs(cache)
        assert state.id == submitted["job"] and state.status == "in_progress"
        assert server.stats.snapshot()["batches_created"] == 1
        # The same call in another process (this one): it finds the job and waits for it.
        df = pd.DataFrame({"review": [f"review {n}" for n in rows]})
        out = df.llm.apply(TEMPLATE, output="sentiment", mode="batch", model="gpt-4o-mini", base_url=server.base_url,
                           api_key=server.api_key, cache=str(cache), progress=False)  # fmt: skip
        stats = server.stats.snapshot()
    assert stats["files_uploaded"] == 1 and stats["batches_created"] == 1  # no second upload, no second batch
    assert column(out, "sentiment") == [expected_answer(TEMPLATE.format(review=f"review {n}")) for n in rows]
    report = out.llm.report
    assert report is not None and report.requests == 0 and report.answered_rows == len(rows)  # sent nothing itself
    (state,) = list_jobs(cache)
    assert state.status == "completed"


@pytest.mark.parametrize(("crash", "written"), [("after_create", "creating"), ("before_create", "creating"),
                                                ("after_upload", "uploading"), ("before_upload", "uploading")])  # fmt: skip
def test_a_kill_while_submitting_never_sends_a_batch_twice(tmp_path: Path, crash: str, written: str) -> None:
    rows = list(range(200))
    cache = tmp_path / "cache"
    with FakeServer(batch_seconds=0.3, batch_validate_seconds=0.02) as server:
        first, _ = child(server, cache, tmp_path, rows, crash=crash)
        first.wait(timeout=30)
        assert first.returncode == -signal.SIGKILL
        (state,) = list_jobs(cache)  # written down before anything was sent
        assert [(b.status, b.batch_id) for b in state.batches] == [(written, "")] and state.batches[0].token
        before = server.stats.snapshot()
        assert (before["files_uploaded"], before["batches_created"]) == {
            "after_create": (1, 1), "before_create": (1, 0), "after_upload": (1, 0), "before_upload": (0, 0)}[crash]  # fmt: skip
        df = pd.DataFrame({"review": [f"review {n}" for n in rows]})
        out = df.llm.apply(TEMPLATE, output="sentiment", mode="batch", model="gpt-4o-mini", base_url=server.base_url,
                           api_key=server.api_key, cache=str(cache), progress=False)  # fmt: skip
        stats = server.stats.snapshot()
        created = server.batches()
    assert stats["files_uploaded"] == 1 and stats["batches_created"] == 1  # found again, not sent again
    assert column(out, "sentiment") == [expected_answer(TEMPLATE.format(review=f"review {n}")) for n in rows]
    (state,) = list_jobs(cache)
    assert state.status == "completed" and [b.batch_id for b in state.batches] == [created[0]["id"]]
    assert created[0]["metadata"]["llmframe_batch"] == state.batches[0].token
