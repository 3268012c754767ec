"""The typed function API: ``apply``, ``aapply``, ``estimate``. The accessors call these."""

from __future__ import annotations

import dataclasses
import os
import weakref
from collections.abc import Mapping
from typing import Any, TypedDict, TypeVar

from typing_extensions import Unpack

from . import _engine
from ._config import Errors, resolve
from ._errors import ConfigError
from ._estimate import Estimate
from ._frames import columns_of, kind_of, rendered_columns, with_answers
from ._pricing import price_for
from ._report import RunReport
from ._sync import run_sync
from ._template import parse_template

__all__ = ["ApplyOptions", "aapply", "aestimate", "apply", "estimate", "report_of"]

Frame = TypeVar("Frame")


class ApplyOptions(TypedDict, total=False):
    """Every option of :func:`apply` besides ``output``; each falls back to ``configure()``."""

    model: str | None
    system: str | None
    base_url: str | None
    api_key: str | None
    client: Any
    params: Mapping[str, Any] | None
    max_concurrency: int
    errors: Errors
    progress: bool
    rpm: float | None
    tpm: float | None
    max_attempts: int
    timeout: float
    batch_size: int | str | None
    max_batch_tokens: int | None
    cache: bool | str | os.PathLike[str]
    max_cost_usd: float | None
    prices: Mapping[str, tuple[float, float]] | None
    response_format: str
    canaries: int | None
    error_column: str | None


# Reports by result frame, for polars (which has no attrs) and pandas alike.
_reports: dict[int, tuple[weakref.ref[Any], RunReport]] = {}


def _remember(out: Any, report: RunReport) -> None:
    attrs = getattr(out, "attrs", None)
    if isinstance(attrs, dict):
        attrs["llmframe_report"] = report
    key = id(out)
    try:
        ref = weakref.ref(out, lambda _: _reports.pop(key, None))
    except TypeError:  # pragma: no cover - both frame types support weak references
        return
    _reports[key] = (ref, report)


def report_of(df: Any) -> RunReport | None:
    """The run report of the ``apply`` call that returned ``df`` (``df.llm.report``)."""
    entry = _reports.get(id(df))
    if entry is not None and entry[0]() is df:
        return entry[1]
    attrs = getattr(df, "attrs", None)
    found = attrs.get("llmframe_report") if isinstance(attrs, dict) else None
    return found if isinstance(found, RunReport) else None


def _prepare(df: Any, template: str, options: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    kind_of(df)
    tpl = parse_template(template, columns_of(df))
    opts = resolve(**options)
    return tpl, opts, rendered_columns(df, tpl.fields)


async def aapply(df: Frame, template: str, *, output: str = "answer", **options: Unpack[ApplyOptions]) -> Frame:
    """Answer ``template`` for every row of ``df``; return a new frame with column ``output``.

    >>> out = await llmframe.aapply(df, "Sentiment of: {review}", output="sentiment",
    ...                             model="gpt-4o-mini")

    The same options as :func:`apply`.
    """
    if not isinstance(output, str) or not output:
        raise ConfigError(f"output must be a non-empty column name, got {output!r}")
    tpl, opts, columns = _prepare(df, template, options)
    if opts.max_cost_usd is not None and price_for(opts.model or "", opts.prices) is None:
        raise ConfigError(
            f"max_cost_usd needs a price for model {opts.model!r}, which llmframe does not know; "
            f"pass prices={{{opts.model!r}: (usd_per_1m_input, usd_per_1m_output)}}"
        )
    if opts.error_column == output:
        raise ConfigError("error_column must differ from output")
    if opts.batch_size == "calibrated":
        # Calibration needs the frame, so it is resolved here, not in the engine; it calls
        # aapply only with integer batch sizes, so this cannot recurse.
        from ._calibrate import acalibrated_batch_size

        size = await acalibrated_batch_size(df, template, **options)
        opts = dataclasses.replace(opts, batch_size=size)
    result = await _engine.run(columns, len(df), tpl, opts)  # type: ignore[arg-type]
    out = with_answers(df, output, result.answers)
    if opts.error_column:
        messages: list[str | None] = [None] * len(result.answers)
        for e in result.errors:
            messages[e.row] = f"{e.kind}: {e.message}"
        out = with_answers(out, opts.error_column, messages)
    _remember(out, result.report)
    return out  # type: ignore[no-any-return]


def apply(df: Frame, template: str, *, output: str = "answer", **options: Unpack[ApplyOptions]) -> Frame:
    """Answer ``template`` for every row of ``df``; return a new frame with column ``output``.

    >>> import llmframe
    >>> out = llmframe.apply(df, "Classify the sentiment of: {review}",
    ...                      output="sentiment", model="gpt-4o-mini")

    Works in scripts and inside a running event loop (Jupyter). Every option is
    listed in the README's API reference; unset options come from
    :func:`llmframe.configure`, then the environment, then the defaults.
    """
    return run_sync(lambda: aapply(df, template, output=output, **options))


async def aestimate(
    df: Any, template: str, *, output: str = "answer", sample: int = 0, **options: Unpack[ApplyOptions]
) -> Estimate:
    """The async form of :func:`estimate`. ``output`` is accepted (and ignored) so that
    an ``apply`` line becomes an estimate by changing one word."""
    from ._estimate import estimate_run

    tpl, opts, columns = _prepare(df, template, options)
    take = (lambda rows: _take_rows(df, rows)) if sample else None
    return await estimate_run(columns, len(df), tpl, opts, sample=sample, take_rows=take, options=options)


def estimate(
    df: Any, template: str, *, output: str = "answer", sample: int = 0, **options: Unpack[ApplyOptions]
) -> Estimate:
    """What ``apply`` with the same options would send and cost, without paying for it.

    >>> est = llmframe.estimate(df, "Classify: {review}", model="gpt-4o-mini",
    ...                         params={"max_tokens": 3})
    >>> print(est)              # packed vs one row per request, side by side

    Input tokens are exact (tiktoken over the messages as they would be sent).
    Output tokens come from ``params["max_tokens"]``, or, with ``sample=n``, from
    ``n`` real (paid, cached) calls; otherwise they are a guess, and say so.
    """
    return run_sync(lambda: aestimate(df, template, sample=sample, **options))


def _take_rows(df: Any, rows: list[int]) -> Any:
    return df.iloc[rows] if kind_of(df) == "pandas" else df[rows]
