"""The body of one ``apply``, under the public API.

``_api`` checks the call and resolves the options; this runs it on a frame and
returns the new frame with its report attached. ``_calibrate`` and
``_estimate`` call it too, with options changed by ``dataclasses.replace``, so
every import among llmframe's modules points down.

The result frame carries its own report (an attribute set on the very frame
returned), so ``df.llm.report`` behaves the same on pandas and polars, and two
runs at once each get their own; a frame derived from it (``out.head()``) has
none, rather than a report that no longer describes it.
"""

from __future__ import annotations

from typing import Any, TypeVar

from . import _engine
from ._config import Options
from ._frames import rendered_columns, with_answers
from ._report import RunReport
from ._template import Template

__all__ = ["report_of", "run_frame"]

Frame = TypeVar("Frame")

_REPORT = "_llmframe_report"


async def run_frame(df: Frame, template: Template, opts: Options, output: str) -> tuple[Frame, RunReport]:
    """Answer ``template`` for every row of ``df``; the new frame and its report."""
    columns = rendered_columns(df, template.fields)
    result = await _engine.run(columns, len(df), template, opts)  # type: ignore[arg-type]
    out = with_answers(df, output, result.answers)
    if opts.error_column:
        messages: list[str | None] = [None] * len(result.answers)
        for e in result.errors:
            messages[e.row] = f"{e.kind}: {e.message}"
        out = with_answers(out, opts.error_column, messages)
    object.__setattr__(out, _REPORT, result.report)  # plain attribute: no column, no attrs
    return out, result.report


def report_of(df: Any) -> RunReport | None:
    """The report of the run that returned ``df``, if ``df`` is such a frame."""
    found = getattr(df, "__dict__", {}).get(_REPORT)
    return found if isinstance(found, RunReport) else None
