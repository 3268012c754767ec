"""The Dask run folders (``<cache>/_runs/<run>/``): gone once read whole, pruned a day on, in
cache_info and clear_cache. The end-to-end tests use the synchronous scheduler: where the
partitions run does not matter here, the folder's life does."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from test_merge_reports import part

import llmframe
from llmframe._dask_report import clear_runs, prune_runs, runs_info, take_run, write_part
from llmframe.testing import FakeServer, expected_answer

dd = pytest.importorskip("dask.dataframe")
import llmframe.dask  # noqa: E402

TEMPLATE = "Sentiment of {review}"


def test_a_run_read_whole_takes_its_folder_with_it(tmp_path: Path) -> None:
    run = tmp_path / "_runs" / "r1"
    write_part(run, 0, part(4, [], 0.1, 1.0, []), 100.0, 101.0)
    report, whole = take_run(run, 2)
    assert report is not None and report.rows == 4 and not whole and run.is_dir()  # partition 1 still to come
    (run / ".part-1-x.tmp").write_text("{}")  # a report being written when the run was read
    write_part(run, 1, part(6, [], 0.1, 1.0, []), 101.0, 103.0)
    report, whole = take_run(run, 2)
    assert report is not None and report.rows == 10 and whole
    assert not run.exists()
    assert take_run(run, 2) == (None, False)


def test_folders_nobody_read_are_pruned_a_day_after_their_last_write(tmp_path: Path) -> None:
    runs = tmp_path / "_runs"
    old, fresh, touched = runs / "old", runs / "fresh", runs / "touched"
    for folder in (old, fresh, touched):
        write_part(folder, 0, part(2, [], 0.1, 1.0, []), 0.0, 1.0)
    day_ago = time.time() - 86_400 - 60
    for path in (old, old / "part-0.json", touched):
        os.utime(path, (day_ago, day_ago))
    assert prune_runs(runs) == 1  # "touched": its folder is old, but a partition wrote a report since
    assert sorted(p.name for p in runs.iterdir()) == ["fresh", "touched"]
    assert prune_runs(runs, now=time.time() + 86_400 + 60) == 2 and list(runs.iterdir()) == []
    assert prune_runs(tmp_path / "missing") == 0


def test_cache_info_counts_them_and_clear_cache_removes_them(tmp_path: Path) -> None:
    write_part(tmp_path / "_runs" / "a", 0, part(2, [], 0.1, 1.0, []), 0.0, 1.0)
    write_part(tmp_path / "_runs" / "a", 1, part(2, [], 0.1, 1.0, []), 0.0, 1.0)
    write_part(tmp_path / "_runs" / "b", 0, part(2, [], 0.1, 1.0, []), 0.0, 1.0)
    size = sum(p.stat().st_size for p in tmp_path.glob("_runs/*/part-*.json"))
    assert runs_info(tmp_path) == {"dask_runs": 2, "dask_run_bytes": size}
    info = llmframe.cache_info(tmp_path)
    assert (info["dask_runs"], info["dask_run_bytes"]) == (2, size)
    (tmp_path / "_runs" / "a" / "notes.txt").write_text("not ours")  # left alone, with its folder
    assert llmframe.clear_cache(tmp_path) == 3
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")] == ["_runs", "_runs/a",
                                                                                "_runs/a/notes.txt"]  # fmt: skip
    assert clear_runs(tmp_path / "missing") == 0


def _apply(server: FakeServer, cache: Path, rows: int = 12, partitions: int = 3) -> Any:
    pdf = pd.DataFrame({"review": [f"review {i}" for i in range(rows)]})
    return dd.from_pandas(pdf, npartitions=partitions).llm.apply(
        TEMPLATE, model="gpt-4o-mini", base_url=server.base_url, api_key=server.api_key, cache=str(cache),
        progress=False)  # fmt: skip


def test_the_report_read_after_compute_removes_the_run_folder(fake_server: FakeServer, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    out = _apply(fake_server, cache)
    got = out.compute(scheduler="sync")
    assert got["answer"].tolist() == [expected_answer(TEMPLATE.format(review=f"review {i}")) for i in range(12)]
    assert llmframe.cache_info(cache)["dask_runs"] == 1  # computed, not read yet
    assert out.llm.report.rows == 12
    assert not (cache / "_runs").exists() or list((cache / "_runs").iterdir()) == []
    assert llmframe.cache_info(cache)["dask_runs"] == 0
    assert out.llm.report.rows == 12  # read again: the merged report was kept
    # A partial compute leaves the folder for the rest of the run.
    partial = _apply(fake_server, cache)
    partial.partitions[0].compute(scheduler="sync")
    assert partial.llm.report.rows == 4 and llmframe.cache_info(cache)["dask_runs"] == 1
    partial.compute(scheduler="sync")
    assert partial.llm.report.rows == 12 and llmframe.cache_info(cache)["dask_runs"] == 0


def test_a_new_run_prunes_the_folders_of_runs_nobody_read(fake_server: FakeServer, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    unread = _apply(fake_server, cache)
    unread.compute(scheduler="sync")
    [folder] = (cache / "_runs").iterdir()
    day_ago = time.time() - 86_400 - 60
    for path in (folder, *folder.iterdir()):
        os.utime(path, (day_ago, day_ago))
    fresh = _apply(fake_server, cache)  # building the graph prunes; nothing is sent
    assert not folder.exists()
    fresh.compute(scheduler="sync")
    assert fresh.llm.report.cached_rows == 12
