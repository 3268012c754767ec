"""The typed function API: ``apply``, ``aapply``, ``estimate``. The accessors call these."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, TypedDict, TypeVar

from typing_extensions import Unpack

from ._calibrate import acalibrated_batch_size
from ._config import BatchSize, Errors, ResponseFormat, resolve
from ._errors import ConfigError
from ._estimate import Estimate, estimate_run
from ._frames import columns_of, kind_of, rendered_columns, take_rows
from ._pricing import price_for
from ._run import report_of, run_frame
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
    batch_size: BatchSize
    max_batch_tokens: int | None
    cache: bool | str | os.PathLike[str]
    max_cost_usd: float | None
    prices: Mapping[str, tuple[float, float]] | None
    response_format: ResponseFormat
    canaries: int | None
    error_column: str | None


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
    tpl, opts, _ = _prepare(df, template, options)
    if opts.max_cost_usd is not None and price_for(opts.model or "", opts.prices) is None:
        raise ConfigError(
            f"max_cost_usd needs a price for model {opts.model!r}, which llmframe does not know; "
            f"pass prices={{{opts.model!r}: (usd_per_1m_input, usd_per_1m_output)}}"
        )
    if opts.error_column == output:
        raise ConfigError("error_column must differ from output")
    if opts.batch_size == "calibrated":
        # Calibration needs the frame, so it is resolved here, not in the engine.
        size = await acalibrated_batch_size(df, template, **options)
        opts = dataclasses.replace(opts, batch_size=size)
    out, _ = await run_frame(df, tpl, opts, output)
    return out


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
    tpl, opts, columns = _prepare(df, template, options)
    take = (lambda rows: take_rows(df, rows)) if sample else None
    return await estimate_run(columns, len(df), tpl, opts, sample=sample, take_rows=take)


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
