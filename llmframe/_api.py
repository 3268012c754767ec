"""The typed function API: ``apply`` and ``aapply``. The accessors call these."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

from . import _engine
from ._config import UNSET, Errors, resolve
from ._frames import columns_of, field_columns, kind_of, with_answers
from ._report import RunReport
from ._sync import run_sync
from ._template import parse_template

__all__ = ["aapply", "apply"]

Frame = TypeVar("Frame")


async def aapply(
    df: Frame,
    template: str,
    *,
    output: str = "answer",
    model: str | None = UNSET,
    system: str | None = UNSET,
    base_url: str | None = UNSET,
    api_key: str | None = UNSET,
    client: Any = UNSET,
    params: Mapping[str, Any] | None = UNSET,
    max_concurrency: int = UNSET,
    errors: Errors = UNSET,
    progress: bool = UNSET,
    rpm: float | None = UNSET,
    tpm: float | None = UNSET,
    max_attempts: int = UNSET,
    timeout: float = UNSET,
    batch_size: int | str | None = UNSET,
    max_batch_tokens: int | None = UNSET,
    cache: bool | str | os.PathLike[str] = UNSET,
    max_cost_usd: float | None = UNSET,
    prices: Mapping[str, tuple[float, float]] | None = UNSET,
    response_format: str = UNSET,
) -> Frame:
    """Answer ``template`` for every row of ``df``; return a new frame with column ``output``.

    >>> out = await llmframe.aapply(df, "Sentiment of: {review}", output="sentiment",
    ...                             model="gpt-4o-mini")

    The same options as :func:`apply`.
    """
    kind_of(df)
    if not isinstance(output, str) or not output:
        from ._errors import ConfigError

        raise ConfigError(f"output must be a non-empty column name, got {output!r}")
    tpl = parse_template(template, columns_of(df))
    opts = resolve(
        model=model, system=system, base_url=base_url, api_key=api_key, client=client,
        params=params, max_concurrency=max_concurrency, errors=errors, progress=progress,
        rpm=rpm, tpm=tpm, max_attempts=max_attempts, timeout=timeout, batch_size=batch_size,
        max_batch_tokens=max_batch_tokens, cache=cache, max_cost_usd=max_cost_usd,
        prices=prices, response_format=response_format,
    )  # fmt: skip
    n_rows = len(df)  # type: ignore[arg-type]
    columns = field_columns(df, tpl.fields)
    result = await _engine.run(columns, n_rows, tpl, opts)
    out = with_answers(df, output, result.answers)
    _attach(out, result.report)
    return out  # type: ignore[no-any-return]


def _attach(out: Any, report: RunReport) -> None:
    attrs = getattr(out, "attrs", None)
    if isinstance(attrs, dict):
        attrs["llmframe_report"] = report


def apply(
    df: Frame,
    template: str,
    *,
    output: str = "answer",
    model: str | None = UNSET,
    system: str | None = UNSET,
    base_url: str | None = UNSET,
    api_key: str | None = UNSET,
    client: Any = UNSET,
    params: Mapping[str, Any] | None = UNSET,
    max_concurrency: int = UNSET,
    errors: Errors = UNSET,
    progress: bool = UNSET,
    rpm: float | None = UNSET,
    tpm: float | None = UNSET,
    max_attempts: int = UNSET,
    timeout: float = UNSET,
    batch_size: int | str | None = UNSET,
    max_batch_tokens: int | None = UNSET,
    cache: bool | str | os.PathLike[str] = UNSET,
    max_cost_usd: float | None = UNSET,
    prices: Mapping[str, tuple[float, float]] | None = UNSET,
    response_format: str = UNSET,
) -> Frame:
    """Answer ``template`` for every row of ``df``; return a new frame with column ``output``.

    >>> import llmframe
    >>> out = llmframe.apply(df, "Classify the sentiment of: {review}",
    ...                      output="sentiment", model="gpt-4o-mini")

    Works in scripts and inside a running event loop (Jupyter). See the README's
    API reference for every option; unset options come from
    :func:`llmframe.configure`, then the environment, then the defaults.
    """
    options = {k: v for k, v in locals().items() if k not in ("df", "template")}
    return run_sync(lambda: aapply(df, template, **options))
