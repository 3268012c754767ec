"""``embed`` and ``estimate_embed`` on a frame: texts out of it, a vector column into it.

``_api`` checks the call; this renders the texts (:mod:`._embed_texts`), runs
:func:`~llmframe._embed_run.embed_run` or plans the requests it would send, and
writes the vectors back as one column (:mod:`._embed_output`) with the run's
report attached, as ``apply`` does.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

from ._cache_admin import resolve_cache_dir
from ._config import Options
from ._embed_cache import lookup_vectors
from ._embed_plan import EmbedPlanner
from ._embed_run import EmbedSpec, embed_run
from ._embed_texts import EmbedTexts, embed_prefix, embed_texts, render_texts
from ._endpoint import Endpoint
from ._errors import ConfigError
from ._estimate import Estimate
from ._frames import columns_of, kind_of, rendered_columns, with_answers, with_columns
from ._pricing import price_for
from ._run import _REPORT
from ._template import Template, parse_template
from ._tokens import get_tokenizer

__all__ = ["embed_frame", "embed_template", "estimate_embed_frame"]

Frame = TypeVar("Frame")


def embed_template(df: Any, template: str) -> Template:
    """``template`` parsed against ``df``'s columns; a bare column name is ``{name}``."""
    if isinstance(template, str) and "{" not in template and template in columns_of(df):
        template = "{" + template + "}"
    return parse_template(template, columns_of(df))


def _prepared(df: Any, template: Template, opts: Options, spec: EmbedSpec) -> tuple[EmbedTexts, int]:
    texts = render_texts(template, rendered_columns(df, template.fields), len(df))
    nulls = texts.count(None)
    prefix = embed_prefix(opts.model or "", spec.dimensions)
    prepared = embed_texts(texts, prefix, limit=spec.max_input_tokens, truncate=spec.truncate,
                           tokenizer=get_tokenizer(opts.model))  # fmt: skip
    return prepared, nulls


async def embed_frame(df: Frame, template: Template, opts: Options, spec: EmbedSpec, output: str) -> Frame:
    """``df`` with the vectors of ``template``'s texts as column ``output``."""
    prepared, nulls = _prepared(df, template, opts, spec)
    result = await embed_run(prepared, opts, spec, null_rows=nulls)
    array = result.vectors
    if kind_of(df) == "polars":
        import polars as pl

        column: Any = pl.from_arrow(array, rechunk=False).alias(output)  # type: ignore[union-attr]
    else:
        import pandas as pd

        column = pd.arrays.ArrowExtensionArray(array)
    out = with_columns(df, [(output, column)])
    if opts.error_column:
        messages: list[str | None] = [None] * len(df)  # type: ignore[arg-type]
        for e in result.errors:
            messages[e.row] = f"{e.kind}: {e.message}"
        out = with_answers(out, opts.error_column, messages)
    object.__setattr__(out, _REPORT, result.report)
    return out  # type: ignore[no-any-return]


def estimate_embed_frame(df: Any, template: Template, opts: Options, spec: EmbedSpec) -> Estimate:
    """What :func:`embed_frame` would send and cost: the very batches it would pack."""
    prepared, _ = _prepared(df, template, opts, spec)
    folder = resolve_cache_dir(opts.cache, needs_local="embed")
    found = lookup_vectors(folder, prepared.digests, spec.dimensions) if folder is not None else None
    hit = found.positions >= 0 if found is not None else np.zeros(len(prepared.texts), dtype=bool)
    seen: set[bytes] = set()
    todo: list[str] = []
    for row in np.flatnonzero(~hit).tolist():
        key = prepared.digests[16 * row : 16 * row + 16]
        if row not in prepared.skipped and key not in seen:
            seen.add(key)
            todo.append(prepared.texts[row])  # type: ignore[arg-type]
    tokenizer = get_tokenizer(opts.model)
    tokens = [tokenizer.count(t) for t in todo]
    limiter = Endpoint.of(model=opts.model or "", base_url=opts.base_url, api_key=opts.api_key,
                          client=opts.client).limiter(opts.rpm, opts.tpm, opts.limiter)  # fmt: skip
    rpm, tpm = limiter.rpm, limiter.tpm
    price = price_for(opts.model or "", opts.prices)

    def plan(max_items: int) -> Estimate:
        budget = min(spec.max_batch_tokens, int(tpm)) if tpm else spec.max_batch_tokens
        planner = EmbedPlanner(tokens, max_items=max_items, max_tokens=lambda: budget)
        requests = sent = 0
        while (batch := planner.take()) is not None:
            requests += 1
            sent += batch.input_tokens
        times = [t for t in (requests * 60.0 / rpm if rpm else None, sent * 60.0 / tpm if tpm else None) if t]
        return Estimate(rows=len(prepared.texts), cached_rows=int(hit.sum()), requests=requests, input_tokens=sent,
                        output_tokens=0, cost_usd=None if price is None else price.cost(sent, 0),
                        seconds=max(times) if times else None, batch_size=max_items,
                        output_tokens_from="none (embeddings)", rpm=rpm, tpm=tpm)  # fmt: skip

    result = plan(spec.max_batch_items)
    if spec.max_batch_items > 1:
        result.one_row = plan(1)
    return result


def check_spec(spec: EmbedSpec) -> EmbedSpec:
    """``spec`` if its values make sense, else a :class:`ConfigError` naming the one that does not."""
    if spec.dimensions is not None and not (isinstance(spec.dimensions, int) and spec.dimensions >= 1):
        raise ConfigError(f"dimensions must be a positive int or None (the model's own), got {spec.dimensions!r}")
    if not isinstance(spec.truncate, bool):
        raise ConfigError(f"truncate must be True or False, got {spec.truncate!r}")
    for name in ("max_input_tokens", "max_batch_items", "max_batch_tokens"):
        value = getattr(spec, name)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return spec
