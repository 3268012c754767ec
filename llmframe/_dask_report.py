"""The report of a run done in partitions: one small JSON file per partition, merged on read.

A Dask partition runs in a worker that may be another process or machine, and
the graph returns frames, not reports. So each partition writes its
:class:`~llmframe.RunReport` as ``part-<number>.json`` into the run's folder
(``<cache>/_runs/<run id>/``, shared by every worker that shares the cache),
atomically (a temp file, then a rename). A partition computed again (a retry
after a lost worker, or a second ``compute``) replaces its own file, so it is
never counted twice. :func:`read_run` merges the files in partition order,
giving each error its row's position in the whole frame.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ._errors import RowError
from ._report import RunReport, merge_reports

__all__ = ["read_run", "write_part"]

_TIMES = "_llmframe_times"


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


def read_run(folder: str | os.PathLike[str]) -> RunReport | None:
    """The merged report of every partition stored in ``folder``; None if none has finished.

    Error rows are positions in the whole frame when every partition before theirs
    was computed too (partitions left out of a partial compute have no file).
    """
    path = Path(folder)
    found = sorted((int(p.stem.split("-", 1)[1]), p) for p in path.glob("part-*.json")) if path.is_dir() else []
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
