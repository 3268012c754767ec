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
from ._schema import answer_form
from ._sync import run_sync
from ._template import parse_template
from ._typed import output_columns

__all__ = [
    "ApplyOptions", "aapply", "aclassify", "aestimate", "apply", "classify", "estimate", "report_of",
]  # fmt: skip

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
    limiter: str | None


def _prepare(df: Any, template: str, options: Mapping[str, Any], schema: Any = None) -> tuple[Any, Any, Any]:
    kind_of(df)
    tpl = parse_template(template, columns_of(df))
    if "labels" in options or "multi" in options:
        raise ConfigError("labels= and multi= belong to classify: df.llm.classify(template, labels=[...])")
    opts = resolve(**options, schema=answer_form(schema))
    return tpl, opts, rendered_columns(df, tpl.fields)


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return value


def _check_output(df: Any, opts: Any, output: str, unnest: bool, prefix: str) -> None:
    """Column names: valid, and a schema's fields free in ``df``, before any request."""
    if not isinstance(output, str) or not output:
        raise ConfigError(f"output must be a non-empty column name, got {output!r}")
    if not isinstance(prefix, str):
        raise ConfigError(f"prefix must be a string, got {prefix!r}")
    _flag(unnest, "unnest")
    names = [output] if opts.schema is None else output_columns(opts.schema, output, unnest=unnest, prefix=prefix)
    if opts.error_column in names:
        raise ConfigError(f"error_column {opts.error_column!r} is also an output column; choose another name")
    if opts.schema is not None and unnest and opts.schema.is_object:
        taken = [n for n in names if n in set(columns_of(df))]
        if taken:
            raise ConfigError(
                f"the schema's field(s) {taken} are columns of the frame already; pass prefix='...' "
                "to name the new columns apart, or unnest=False for one struct column"
            )


async def aapply(
    df: Frame, template: str, *, output: str = "answer", schema: Any = None, unnest: bool = True,
    prefix: str = "", **options: Unpack[ApplyOptions],
) -> Frame:  # fmt: skip
    """Answer ``template`` for every row of ``df``; return a new frame with column ``output``.

    >>> out = await llmframe.aapply(df, "Sentiment of: {review}", output="sentiment",
    ...                             model="gpt-4o-mini")

    The same options as :func:`apply`.
    """
    tpl, opts, _ = _prepare(df, template, options, schema)
    _check_output(df, opts, output, unnest, prefix)
    if opts.max_cost_usd is not None and price_for(opts.model or "", opts.prices) is None:
        raise ConfigError(
            f"max_cost_usd needs a price for model {opts.model!r}, which llmframe does not know; "
            f"pass prices={{{opts.model!r}: (usd_per_1m_input, usd_per_1m_output)}}"
        )
    if opts.batch_size == "calibrated":
        # Calibration needs the frame, so it is resolved here, not in the engine.
        size = await acalibrated_batch_size(df, template, schema=opts.schema, **options)
        opts = dataclasses.replace(opts, batch_size=size)
    out, _ = await run_frame(df, tpl, opts, output, unnest=unnest, prefix=prefix)
    return out


def apply(
    df: Frame, template: str, *, output: str = "answer", schema: Any = None, unnest: bool = True,
    prefix: str = "", **options: Unpack[ApplyOptions],
) -> Frame:  # fmt: skip
    """Answer ``template`` for every row of ``df``; return a new frame with column ``output``.

    >>> import llmframe
    >>> out = llmframe.apply(df, "Classify the sentiment of: {review}",
    ...                      output="sentiment", model="gpt-4o-mini")

    ``schema=`` (a pydantic model, a ``{field: type}`` dict, a JSON Schema dict, or a
    type such as ``int`` or ``list[str]``) makes each answer a validated value in
    typed columns: one per field (named ``prefix + field``) for an object, unless
    ``unnest=False`` asks for one struct column ``output``.

    Works in scripts and inside a running event loop (Jupyter). Every option is
    listed in the README's API reference; unset options come from
    :func:`llmframe.configure`, then the environment, then the defaults.
    """
    return run_sync(lambda: aapply(df, template, output=output, schema=schema, unnest=unnest, prefix=prefix,
                                   **options))  # fmt: skip


async def aclassify(
    df: Frame, template: str, *, labels: Any, multi: bool = False, output: str | None = None,
    **options: Unpack[ApplyOptions],
) -> Frame:  # fmt: skip
    """The async form of :func:`classify`."""
    if "schema" in options:
        raise ConfigError("classify makes its schema from labels=; pass schema= to apply instead")
    if labels is None:
        raise ConfigError("classify needs labels=[...], the answers it may give")
    schema = answer_form(labels=labels, multi=multi)
    name = output if output is not None else ("labels" if multi else "label")
    return await aapply(df, template, output=name, schema=schema, **options)


def classify(
    df: Frame, template: str, *, labels: Any, multi: bool = False, output: str | None = None,
    **options: Unpack[ApplyOptions],
) -> Frame:  # fmt: skip
    """One of ``labels`` per row (``multi=True``: a list of them), as a category column.

    >>> out = llmframe.classify(df, "Topic of: {text}", labels=["billing", "bug", "other"],
    ...                         output="topic", model="gpt-4o-mini")

    The answer must be one of the labels (case, spaces and quotes aside); any other
    is asked again, then becomes a null with an error of kind ``validation``. The
    column is ``category`` in pandas and ``Enum`` in polars (``labels``: a list of
    them). Takes :func:`apply`'s options.
    """
    return run_sync(lambda: aclassify(df, template, labels=labels, multi=multi, output=output, **options))


async def aestimate(
    df: Any, template: str, *, output: str = "answer", sample: int = 0, schema: Any = None,
    labels: Any = None, multi: bool = False, unnest: bool = True, prefix: str = "",
    **options: Unpack[ApplyOptions],
) -> Estimate:  # fmt: skip
    """The async form of :func:`estimate`. ``output``, ``unnest`` and ``prefix`` are accepted
    (and ignored) so that an ``apply`` line becomes an estimate by changing one word;
    ``labels``/``multi`` estimate a :func:`classify`."""
    schema = answer_form(schema, labels, multi)
    tpl, opts, columns = _prepare(df, template, options, schema)
    take = (lambda rows: take_rows(df, rows)) if sample else None
    return await estimate_run(columns, len(df), tpl, opts, sample=sample, take_rows=take)


def estimate(
    df: Any, template: str, *, output: str = "answer", sample: int = 0, schema: Any = None,
    labels: Any = None, multi: bool = False, unnest: bool = True, prefix: str = "",
    **options: Unpack[ApplyOptions],
) -> Estimate:  # fmt: skip
    """What ``apply`` with the same options would send and cost, without paying for it.

    >>> est = llmframe.estimate(df, "Classify: {review}", model="gpt-4o-mini",
    ...                         params={"max_tokens": 3})
    >>> print(est)              # packed vs one row per request, side by side

    Input tokens are exact (tiktoken over the messages as they would be sent).
    Output tokens come from ``params["max_tokens"]``, or, with ``sample=n``, from
    ``n`` real (paid, cached) calls; otherwise they are a guess, and say so.
    """
    return run_sync(lambda: aestimate(df, template, sample=sample, schema=schema, labels=labels, multi=multi,
                                      **options))  # fmt: skip
