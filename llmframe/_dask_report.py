"""The report of a run done in partitions: one small JSON file per partition, merged on read.

A Dask partition runs in a worker that may be another process or machine, and
the graph returns frames, not reports. So each partition writes its
:class:`~llmframe.RunReport` as ``part-<number>.json`` into the run's folder
(``<cache>/_runs/<run id>/``, shared by every worker that shares the cache),
atomically (a temp file, then a rename). A partition computed again (a retry
after a lost worker, or a second ``compute``) replaces its own file, so it is
never counted twice. :func:`read_run` merges the files in partition order,
giving each error its row's position in the whole frame.

A run's folder goes once its report is whole: :func:`take_run` merges it and,
when every partition has stored its own, removes the folder (the caller keeps
the merged report). Folders of runs whose report nobody read go when a later
Dask run starts, a day after their last write (:func:`prune_runs`).
``cache_info`` counts them (:func:`runs_info`) and ``clear_cache`` removes them
(:func:`clear_runs`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ._errors import RowError
from ._report import RunReport, merge_reports

__all__ = ["RUNS", "clear_runs", "prune_runs", "read_run", "runs_info", "take_run", "write_part"]

_TIMES = "_llmframe_times"
#: The folder of the run folders, in the cache folder.
RUNS = "_runs"
#: A run folder not written for this long is a run whose report nobody read.
KEEP_SECONDS = 24 * 3600


def write_part(folder: str | os.PathLike[str], number: int, report: RunReport, started: float,
               finished: float) -> None:  # fmt: skip
    """Store partition ``number``'s report (and when it ran) in the run's folder."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    body = dataclasses.asdict(report)
    body[_TIMES] = [started, finished]
    fd, temp = tempfile.mkstemp(dir=path, prefix=f".part-{number}-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(body, file)
    os.replace(temp, path / f"part-{number}.json")


def _report(body: dict[str, Any]) -> RunReport:
    body = dict(body)
    body.pop(_TIMES, None)
    body["errors"] = [RowError(**e) for e in body.get("errors", [])]
    body["packing_agreement"] = {int(k): v for k, v in body.get("packing_agreement", {}).items()}
    known = {f.name for f in dataclasses.fields(RunReport)}
    return RunReport(**{k: v for k, v in body.items() if k in known})


def _parts(path: Path) -> list[tuple[int, Path]]:
    if not path.is_dir():
        return []
    return sorted((int(p.stem.split("-", 1)[1]), p) for p in path.glob("part-*.json"))


def read_run(folder: str | os.PathLike[str]) -> RunReport | None:
    """The merged report of every partition stored in ``folder``; None if none has finished.

    Error rows are positions in the whole frame when every partition before theirs
    was computed too (partitions left out of a partial compute have no file).
    """
    found = _parts(Path(folder))
    parts: list[RunReport] = []
    spans: list[list[float]] = []
    offset = 0
    for _, file in found:
        body = json.loads(file.read_text(encoding="utf-8"))
        spans.append(body.get(_TIMES, [0.0, 0.0]))
        part = _report(body)
        part.errors = [dataclasses.replace(e, row=e.row + offset) for e in part.errors]
        offset += part.rows
        parts.append(part)
    if not parts:
        return None
    return merge_reports(parts, seconds=max(s[1] for s in spans) - min(s[0] for s in spans))


def take_run(folder: str | os.PathLike[str], partitions: int) -> tuple[RunReport | None, bool]:
    """The merged report of the run in ``folder`` (as :func:`read_run`), and whether all
    ``partitions`` had stored theirs: then the folder is gone, and the report is the run's."""
    path = Path(folder)
    report = read_run(path)
    whole = report is not None and [n for n, _ in _parts(path)] == list(range(partitions))
    if whole:
        _remove(path)
    return report, whole


def _remove(path: Path) -> int:
    """Remove one run folder (its reports and the temp files of reports being written): files removed."""
    removed = 0
    for file in [*path.glob("part-*.json"), *path.glob(".part-*.tmp")]:
        try:
            file.unlink()
        except FileNotFoundError:
            continue
        removed += 1
    with contextlib.suppress(OSError):  # gone already, or a partition run again is writing into it
        path.rmdir()
    return removed


def _last_write(path: Path) -> float:
    times = [path.stat().st_mtime]
    for file in path.iterdir():
        try:
            times.append(file.stat().st_mtime)
        except FileNotFoundError:
            continue
    return max(times)


def _run_folders(runs: Path) -> list[Path]:
    return [p for p in runs.iterdir() if p.is_dir()] if runs.is_dir() else []


def prune_runs(runs: str | os.PathLike[str], *, older_than: float = KEEP_SECONDS,
               now: float | None = None) -> int:  # fmt: skip
    """Remove the run folders in ``runs`` not written for ``older_than`` seconds: how many."""
    now = time.time() if now is None else now
    pruned = 0
    for path in _run_folders(Path(runs)):
        try:
            stale = now - _last_write(path) > older_than
        except FileNotFoundError:
            continue
        if stale:
            _remove(path)
            pruned += 1
    return pruned


def runs_info(cache: str | os.PathLike[str]) -> dict[str, int]:
    """``cache_info``'s keys for the cache folder ``cache``: ``dask_runs`` (run folders whose
    report was not read yet) and ``dask_run_bytes``."""
    folders = _run_folders(Path(cache) / RUNS)
    sizes = [f.stat().st_size for path in folders for f in path.glob("part-*.json")]
    return {"dask_runs": len(folders), "dask_run_bytes": sum(sizes)}


def clear_runs(cache: str | os.PathLike[str]) -> int:
    """Remove every run folder of the cache folder ``cache``: the files removed."""
    removed = 0
    for path in _run_folders(Path(cache) / RUNS):
        removed += _remove(path)
    with contextlib.suppress(OSError):  # not empty (a run started meanwhile), or gone
        (Path(cache) / RUNS).rmdir()
    return removed
