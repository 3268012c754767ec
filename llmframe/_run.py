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
from ._frames import kind_of, rendered_columns, with_answers, with_columns
from ._report import RunReport
from ._template import Template

__all__ = ["frame_out", "report_of", "run_frame"]

Frame = TypeVar("Frame")

_REPORT = "_llmframe_report"


async def run_frame(
    df: Frame, template: Template, opts: Options, output: str, *, unnest: bool = True, prefix: str = "",
    raw: bool = False,
) -> tuple[Frame, RunReport]:  # fmt: skip
    """Answer ``template`` for every row of ``df``; the new frame and its report.

    With a schema (``opts.schema``) the answers become typed columns: one per field
    (``prefix`` + name) when ``unnest`` and the answer is an object, else one column
    ``output``. ``raw=True`` keeps the validated JSON text in ``output`` instead.
    """
    columns = rendered_columns(df, template.fields)
    result = await _engine.run(columns, len(df), template, opts)  # type: ignore[arg-type]
    return frame_out(df, result, opts, output, unnest=unnest, prefix=prefix, raw=raw), result.report


def frame_out(
    df: Frame, result: _engine.RunResult, opts: Options, output: str, *, unnest: bool = True, prefix: str = "",
    raw: bool = False,
) -> Frame:  # fmt: skip
    """``df`` with a run's answers (and errors, with ``error_column``) as new columns, and its
    report attached: what :func:`run_frame` returns, for a run made another way (the Batch API)."""
    if opts.schema is not None and not raw:
        from ._typed import typed_columns

        typed = typed_columns(kind_of(df), result.answers, opts.schema, output, unnest=unnest, prefix=prefix)
        out = with_columns(df, typed)
    else:
        out = with_answers(df, output, result.answers)
    if opts.error_column:
        messages: list[str | None] = [None] * len(result.answers)
        for e in result.errors:
            messages[e.row] = f"{e.kind}: {e.message}"
        out = with_answers(out, opts.error_column, messages)
    object.__setattr__(out, _REPORT, result.report)  # plain attribute: no column, no attrs
    return out


def report_of(df: Any) -> RunReport | None:
    """The report of the run that returned ``df``, if ``df`` is such a frame."""
    found = getattr(df, "__dict__", {}).get(_REPORT)
    return found if isinstance(found, RunReport) else None
