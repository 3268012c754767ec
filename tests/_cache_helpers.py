"""Records, folders and child processes shared by the cache tests (``tests/test_cache*.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import llmframe
from llmframe import _cache_reader
from llmframe._cache import AnswerCache
from llmframe._cache_schema import CacheRecord

BASE = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def key(n: int) -> str:
    return f"{n:032x}"


def record(
    n: int,
    answer: str | None = "yes",
    *,
    status: str = "ok",
    seconds: float = 0.0,
    request_id: str | None = None,
) -> CacheRecord:
    return CacheRecord(
        key=key(n),
        model="gpt-4o-mini",
        template_hash="t" * 32,
        answer=answer if status == "ok" else None,
        status=status,
        error=None if status == "ok" else "server: 503 after 5 attempts",
        prompt_tokens=40,
        completion_tokens=3,
        cost_usd=1.5e-05,
        created=BASE + timedelta(seconds=seconds),
        request_id=request_id,
    )


def segments(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("seg-*.parquet"))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


def write_segment(folder: Path, records: list[CacheRecord]) -> Path:
    with AnswerCache(folder) as cache:
        cache.add(records)
    return folder / segments(folder)[-1]


def folder_state(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file in ``folder``: size, modification time and contents."""
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.iterdir())
    }


#: The columns of a cache folder as polars reads them.
EXPECTED_SCHEMA = {
    "key": pl.String,
    "model": pl.String,
    "template_hash": pl.String,
    "answer": pl.String,
    "status": pl.String,
    "error": pl.String,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "cost_usd": pl.Float64,
    "created": pl.Datetime("us", "UTC"),
    "request_id": pl.String,
}


def child_command(code: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``code`` in a fresh interpreter importing
    this same llmframe, with llmframe's RuntimeWarnings (a corrupt segment) as errors."""
    package_root = str(Path(llmframe.__file__).absolute().parent.parent)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])
    )
    return [sys.executable, "-W", "error::RuntimeWarning", "-c", textwrap.dedent(code), *args], env


def run_child(code: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports this same llmframe."""
    command, env = child_command(code, *args)
    done = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def reads_from_disk(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """From now on, the names of the segments each lookup reads, one list per read."""
    reads: list[list[str]] = []
    real = _cache_reader.read_ok_rows

    def spy(folder: Path, names: Any) -> Any:
        reads.append(list(names))
        return real(folder, names)

    monkeypatch.setattr(_cache_reader, "read_ok_rows", spy)
    return reads
