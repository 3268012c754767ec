"""``apply``, ``classify`` and ``embed`` on a polars LazyFrame: a LazyFrame back, run at ``collect``.

The call becomes one expression: ``pl.struct(<template fields>).map_batches(...)``
with the output's dtype, marked elementwise (a row's answer depends on that row
alone, as its cache key does). So it composes like any polars expression: only
the template's columns are read for it, a filter on other columns runs before
it (fewer rows are sent), a ``select`` that leaves its columns out never sends a
request, and ``collect(engine="streaming")`` feeds it batch by batch. Each batch
runs the eager polars call (:meth:`LazyCall.run`) in this process, under the
same limiter and cache as any other call.

Several new columns (a schema's fields, ``error_column``) come out of the one
expression as a struct, then are taken apart into columns where the eager call
puts them. The reports of the batches are kept on the returned LazyFrame
(:class:`Reports`), and merged by ``out.llm.report``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import polars as pl

from ._errors import RunError
from ._lazy import Kind, LazyCall, plan_call
from ._report import RunReport, merge_reports
from ._run import report_of
from ._template import parse_template

__all__ = ["REPORTS", "Reports", "lazy_call"]

#: The attribute of the returned LazyFrame holding its :class:`Reports`.
REPORTS = "_llmframe_reports"
_STRUCT = "__llmframe_answers"


class Reports:
    """The reports of every batch a lazy call answered, in the order they finished."""

    __slots__ = ("_lock", "_parts")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: list[RunReport] = []

    def add(self, report: RunReport | None) -> None:
        if report is not None:
            with self._lock:
                self._parts.append(report)

    def merged(self) -> RunReport | None:
        with self._lock:
            parts = list(self._parts)
        return merge_reports(parts, seconds=sum(p.seconds for p in parts)) if parts else None


def lazy_call(lf: pl.LazyFrame, kind: Kind, template: str, arguments: Mapping[str, Any]) -> pl.LazyFrame:
    """The LazyFrame of ``kind`` (``"apply"``, ``"classify"``, ``"embed"``) on ``lf``."""
    schema = lf.collect_schema()
    empty = pl.DataFrame(schema=schema)
    _, result, added = plan_call(empty, kind, template, arguments)
    text = f"{{{template}}}" if kind == "embed" and "{" not in template and template in schema else template
    fields = parse_template(text, schema.names()).fields
    call = LazyCall(kind, template, dict(arguments))
    reports = Reports()

    def answer(rows: pl.Series) -> pl.Series:
        try:
            out = call.run(rows.struct.unnest())  # a template always names a column
        except RunError as error:  # polars re-raises it by its message alone: its report is kept here
            reports.add(error.report if isinstance(error.report, RunReport) else None)
            raise
        reports.add(report_of(out))
        if len(added) == 1:
            return out.get_column(added[0])
        return out.select(added).to_struct(_STRUCT)

    dtypes = {name: result.schema[name] for name in added}
    single = len(added) == 1
    expr = pl.struct(fields).map_batches(answer, return_dtype=dtypes[added[0]] if single else pl.Struct(dtypes),
                              is_elementwise=True)  # fmt: skip
    if single:
        out = lf.with_columns(expr.alias(added[0]))
    else:
        out = (lf.with_columns(expr.alias(_STRUCT))
               .with_columns(pl.col(_STRUCT).struct.field(name).alias(name) for name in added)
               .drop(_STRUCT))  # fmt: skip
    object.__setattr__(out, REPORTS, reports)
    return out


def reports_of(lf: Any) -> RunReport | None:
    """The merged report of the batches ``lf`` (a LazyFrame a lazy call returned) has answered."""
    found = getattr(lf, "__dict__", {}).get(REPORTS)
    return found.merged() if isinstance(found, Reports) else None
