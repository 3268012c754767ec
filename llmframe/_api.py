"""The typed function API: ``apply``, ``aapply``, ``estimate``. The accessors call these."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, TypedDict, TypeVar

from typing_extensions import Unpack

from ._batch_job import BatchJob, start
from ._calibrate import acalibrated_batch_size
from ._config import BatchSize, Errors, Mode, OnExpired, ResponseFormat, resolve
from ._embed_frame import check_spec, embed_frame, embed_template, estimate_embed_frame
from ._embed_run import EmbedSpec
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
    "ApplyOptions", "EmbedOptions", "aapply", "aclassify", "aembed", "aestimate", "apply", "asubmit", "classify",
    "embed", "estimate", "estimate_embed", "report_of", "submit",
]  # fmt: skip

Frame = TypeVar("Frame")


class EmbedOptions(TypedDict, total=False):
    """The options of every call (:func:`embed`'s, besides its own); each falls back to ``configure()``."""

    model: str | None
    base_url: str | None
    api_key: str | None
    client: Any
    max_concurrency: int
    errors: Errors
    progress: bool
    rpm: float | None
    tpm: float | None
    max_attempts: int
    timeout: float
    cache: bool | str | os.PathLike[str]
    cache_options: Mapping[str, Any] | None
    max_cost_usd: float | None
    prices: Mapping[str, tuple[float, float]] | None
    error_column: str | None
    limiter: str | None


class ApplyOptions(EmbedOptions, total=False):
    """Every option of :func:`apply` besides ``output``; each falls back to ``configure()``."""

    system: str | None
    params: Mapping[str, Any] | None
    batch_size: BatchSize
    max_batch_tokens: int | None
    response_format: ResponseFormat
    canaries: int | None
    mode: Mode
    on_expired: OnExpired
    batch_prices: Mapping[str, tuple[float, float]] | None


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
    if opts.mode == "batch":
        job = await start(df, tpl, opts, output, unnest=unnest, prefix=prefix)
        return await job.aresult()  # type: ignore[no-any-return]
    out, _ = await run_frame(df, tpl, opts, output, unnest=unnest, prefix=prefix)
    return out


async def asubmit(
    df: Any, template: str, *, output: str = "answer", schema: Any = None, unnest: bool = True, prefix: str = "",
    **options: Unpack[ApplyOptions],
) -> BatchJob:  # fmt: skip
    """The async form of :func:`submit`."""
    tpl, opts, _ = _prepare(df, template, {**options, "mode": "batch"}, schema)
    _check_output(df, opts, output, unnest, prefix)
    if opts.batch_size == "calibrated":
        raise ConfigError("batch_size='calibrated' calibrates live; pass an int, or None, to submit")
    return await start(df, tpl, opts, output, unnest=unnest, prefix=prefix)


def submit(
    df: Any, template: str, *, output: str = "answer", schema: Any = None, unnest: bool = True, prefix: str = "",
    **options: Unpack[ApplyOptions],
) -> BatchJob:  # fmt: skip
    """Send :func:`apply`'s requests through the Batch API (half the price, answers within
    24 h); returns at once, once the batch is created.

    >>> job = llmframe.submit(df, "Classify: {review}", output="sentiment", model="gpt-4o-mini")
    >>> job.status()            # validating / in_progress 41% / completed
    >>> out = job.result()      # waits; the frame apply() would return

    The rows, cache, packing, schemas and validation are ``apply``'s; the job's state
    lives in the cache folder, so the same call in a new process waits for the job in
    flight instead of submitting again. ``apply(..., mode="batch")`` is submit + result.
    """
    return run_sync(lambda: asubmit(df, template, output=output, schema=schema, unnest=unnest, prefix=prefix,
                                    **options))  # fmt: skip


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



def _embed_call(df: Any, template: str, options: Mapping[str, Any], spec: EmbedSpec) -> tuple[Any, Any, EmbedSpec]:
    kind_of(df)
    unknown = set(options) - set(EmbedOptions.__annotations__)
    if unknown:
        raise ConfigError(f"option(s) {sorted(unknown)} do not apply to embed; it takes "
                          f"{sorted(EmbedOptions.__annotations__)}")  # fmt: skip
    return embed_template(df, template), resolve(**options), check_spec(spec)


async def aembed(
    df: Frame, template: str, *, output: str = "embedding", dimensions: int | None = None, truncate: bool = False,
    max_input_tokens: int = 8192, max_batch_items: int = 2048, max_batch_tokens: int = 300_000,
    **options: Unpack[EmbedOptions],
) -> Frame:  # fmt: skip
    """The async form of :func:`embed`."""
    spec = EmbedSpec(dimensions, truncate, max_input_tokens, max_batch_items, max_batch_tokens)
    tpl, opts, spec = _embed_call(df, template, options, spec)
    if not isinstance(output, str) or not output:
        raise ConfigError(f"output must be a non-empty column name, got {output!r}")
    if opts.error_column == output:
        raise ConfigError(f"error_column {output!r} is also the output column; choose another name")
    if opts.max_cost_usd is not None and price_for(opts.model or "", opts.prices) is None:
        raise ConfigError(f"max_cost_usd needs a price for model {opts.model!r}; pass prices={{{opts.model!r}: "
                          "(usd_per_1m_input, 0)}}")  # fmt: skip
    return await embed_frame(df, tpl, opts, spec, output)


def embed(
    df: Frame, template: str, *, output: str = "embedding", dimensions: int | None = None, truncate: bool = False,
    max_input_tokens: int = 8192, max_batch_items: int = 2048, max_batch_tokens: int = 300_000,
    **options: Unpack[EmbedOptions],
) -> Frame:  # fmt: skip
    """One embedding vector per row of ``template``'s text, as column ``output``.

    >>> out = llmframe.embed(df, "{title}: {abstract}", output="vec",
    ...                      model="text-embedding-3-small", dimensions=256)
    >>> X = llmframe.embedding_matrix(out["vec"])      # (rows, 256) float32, no copy

    ``template`` is a template or a bare column name. The column is
    ``fixed_size_list<float32>[dims]``: polars ``Array(Float32, dims)``, pandas
    ``pd.ArrowDtype`` of that type; null for a row with a null field or a failure
    (its :class:`RowError` is in the report). Requests carry up to
    ``max_batch_items`` texts and ``max_batch_tokens`` tokens (the API's 2,048 and
    300,000), under the endpoint's shared limiter; equal texts go once; every
    vector is cached. A text over ``max_input_tokens`` fails alone, or is cut to
    it with ``truncate=True``. Works inside a running event loop (Jupyter).
    """
    return run_sync(lambda: aembed(df, template, output=output, dimensions=dimensions, truncate=truncate,
                                   max_input_tokens=max_input_tokens, max_batch_items=max_batch_items,
                                   max_batch_tokens=max_batch_tokens, **options))  # fmt: skip


def estimate_embed(
    df: Any, template: str, *, output: str = "embedding", dimensions: int | None = None, truncate: bool = False,
    max_input_tokens: int = 8192, max_batch_items: int = 2048, max_batch_tokens: int = 300_000,
    **options: Unpack[EmbedOptions],
) -> Estimate:  # fmt: skip
    """What :func:`embed` with the same arguments would send and cost, without sending.

    >>> print(llmframe.estimate_embed(df, "{title}: {abstract}", model="text-embedding-3-small"))

    Rows, cached rows, requests (packed, and at one text per request), input tokens
    (tiktoken, exact), cost and the time at the rate limits; output tokens are 0.
    """
    spec = EmbedSpec(dimensions, truncate, max_input_tokens, max_batch_items, max_batch_tokens)
    tpl, opts, spec = _embed_call(df, template, options, spec)
    return estimate_embed_frame(df, tpl, opts, spec)
