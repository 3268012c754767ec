"""Calibration: how many rows one request can carry before the answers change.

Packing saves requests and tokens, but how well a model answers many rows at
once depends on the model and the task: a 0.5B model asked for the capital of
a country went from 68% correct one row per request to 5% at ten rows per
request. Such answers are valid (every id present, every value a string), so
the packed-answer checks cannot see them. Calibration measures them::

    sample of rows ──┬── batch_size=1   the reference answers (stored in the cache)
                     ├── batch_size=5   agreement with the reference, tokens, cost, time
                     ├── batch_size=10  ...
                     └── ...
    recommended = the largest batch size that, like every smaller one measured,
                  agrees with the reference on at least ``min_agreement`` of rows

Two choices worth knowing:

- **The one-row pass never reads the cache.** Cache keys do not depend on
  batch size, so a cache filled by an earlier packed run would hand back
  *packed* answers as the reference. The pass runs against a fresh temporary
  folder instead, and its records are then copied into the user's cache, so
  the full run that follows does not pay for the sample again.
- **The packed passes run with ``cache=False``**: with the cache on they would
  only read the reference back. Their answers are never stored, so a wrong
  packed answer cannot reach a later run.

A result is stored per (model, template, system prompt, generation params) in
``calibrations.json`` in the cache folder (:func:`store_calibration`,
:func:`load_calibration`); ``apply(..., batch_size="calibrated")`` reads it.
"""

from __future__ import annotations

import random
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ._agreement import agreement, answer_agreement, field_agreement
from ._cache import AnswerCache, read_cache, resolve_cache_dir
from ._cache_fs import is_url
from ._calibration_report import CalibrationReport, CalibrationRow, recommend
from ._calibration_store import (
    CALIBRATIONS_FILE,
    calibration_key,
    load_calibration,
    load_calibration_report,
    store_calibration,
)
from ._config import Options, resolve
from ._errors import ConfigError, RunError
from ._frames import columns_of, field_columns, kind_of, rendered_columns, take_rows
from ._keys import output_spec
from ._parse import normalize
from ._report import RunReport
from ._run import run_frame
from ._schema import OutputSchema, answer_form
from ._sync import run_sync
from ._template import is_null, parse_template
from ._warn import warn_user

__all__ = [
    "CALIBRATIONS_FILE",
    "CalibrationReport",
    "CalibrationRow",
    "acalibrate",
    "acalibrated_batch_size",
    "answer_agreement",
    "calibrate",
    "calibration_key",
    "load_calibration",
    "load_calibration_report",
    "normalize",
    "store_calibration",
]

DEFAULT_BATCH_SIZES = (1, 5, 10, 20, 50)
_file_lock = threading.Lock()


# ------------------------------------------------------------------------ running it


def _sample_positions(df: Any, fields_used: Sequence[str], sample: int, seed: int) -> list[int]:
    """Up to ``sample`` positions of rows with distinct, non-null field values, in frame order."""
    columns = rendered_columns(df, fields_used)  # the prompt text the run would send
    seen: set[tuple[str, ...]] = set()
    eligible: list[int] = []
    for position, values in enumerate(zip(*(columns[f] for f in fields_used), strict=True)):
        if any(v is None for v in values):
            continue
        rendered = tuple(v for v in values if v is not None)
        if rendered in seen:  # equal prompts get one answer: sampling both would tell nothing
            continue
        seen.add(rendered)
        eligible.append(position)
    chosen = random.Random(seed).sample(eligible, min(sample, len(eligible)))
    return sorted(chosen)


def _free_name(df: Any) -> str:
    taken = set(columns_of(df))
    name = "__llmframe_calibration__"
    while name in taken:
        name += "_"
    return name


def _answers(out: Any, name: str) -> list[str | None]:
    return [None if is_null(v) else str(v) for v in field_columns(out, [name])[name]]


def _row(
    batch_size: int, agreement: float | None, compared: int, report: RunReport
) -> CalibrationRow:
    sent = report.rows - report.cached_rows - report.null_rows

    def per_row(total: float | None) -> float | None:
        return None if total is None or sent <= 0 else total / sent

    return CalibrationRow(
        batch_size=batch_size,
        agreement=agreement,
        rows=compared,
        failed_rows=report.failed_rows,
        requests=report.requests,
        items_per_request=sent / report.requests if report.requests else None,
        prompt_tokens_per_row=per_row(report.prompt_tokens),
        completion_tokens_per_row=per_row(report.completion_tokens),
        cost_per_row=per_row(report.cost_usd),
        seconds=report.seconds,
    )


def _copy_records(source: Path, opts: Options) -> None:
    """Add every record of the cache folder ``source`` to the run's cache (a folder or a URL)."""
    records = read_cache(source)
    if records.height == 0:
        return
    target = str(opts.cache) if is_url(opts.cache) else resolve_cache_dir(opts.cache)
    assert target is not None
    with AnswerCache(target, options=opts.cache_options) as cache:
        cache.add_columns(records.to_arrow())


def _check(sample: int, batch_sizes: Sequence[int], min_agreement: float, seed: int) -> list[int]:
    if not isinstance(sample, int) or isinstance(sample, bool) or sample < 1:
        raise ConfigError(f"sample must be an int >= 1 (rows to calibrate on), got {sample!r}")
    if not isinstance(min_agreement, (int, float)) or not 0.0 < min_agreement <= 1.0:
        raise ConfigError(
            f"min_agreement must be a share in (0, 1], e.g. 0.95, got {min_agreement!r}"
        )
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    sizes = list(batch_sizes) if not isinstance(batch_sizes, (str, bytes)) else []
    if not sizes or not all(
        isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in sizes
    ):
        raise ConfigError(
            f"batch_sizes must be ints >= 1, e.g. (1, 5, 10, 20, 50), got {batch_sizes!r}"
        )
    return sorted(set(sizes) | {1})


async def acalibrate(
    df: Any,
    template: str,
    *,
    sample: int = 50,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    min_agreement: float = 0.95,
    seed: int = 0,
    **options: Any,
) -> CalibrationReport:
    """Measure how packing changes the answers of ``template`` on this model.

    >>> report = await llmframe.acalibrate(df, "Capital of {country}?", model="gpt-4o-mini",
    ...                                    batch_sizes=(1, 5, 10, 20))  # doctest: +SKIP
    >>> print(report)                                                   # doctest: +SKIP

    Answers ``sample`` random rows (distinct prompts without nulls, chosen with
    ``seed``) one row per request, then again at each of ``batch_sizes``, and
    compares (:func:`answer_agreement`). The recommended batch size is the
    largest one that, like every smaller one measured, agrees on at least
    ``min_agreement`` of rows; 1 when none does. Sizes larger than the sample
    are not measured. ``options`` are :func:`llmframe.apply`'s (``errors`` is
    always ``"null"``: a failed row counts as disagreeing; ``output`` is
    ignored; ``batch_size`` is refused). ``max_cost_usd`` applies to each pass.

    The one-row answers are stored in the cache (if ``cache`` is on), so the
    full run that follows does not pay for them again, and so is the result,
    for ``apply(..., batch_size="calibrated")``.
    """
    sizes = _check(sample, batch_sizes, min_agreement, seed)
    schema = _schema_of(options)
    given = _without(options, "output", "schema", "labels", "multi", "unnest", "prefix")
    if "batch_size" in given:
        raise ConfigError(
            "calibrate chooses the batch sizes itself: pass batch_sizes=(1, 5, 10, ...) "
            "instead of batch_size="
        )
    kind_of(df)
    tpl = parse_template(template, columns_of(df))
    # errors="null": a failed row counts as disagreeing; canaries=0: packing as it is,
    # not as canaries repair it.
    opts = replace(resolve(**given), errors="null", canaries=0, error_column=None, schema=schema)
    model = opts.model or ""
    key = calibration_key(model, tpl.text, opts.system, opts.params, output_spec(schema))
    cache_dir = resolve_cache_dir(opts.cache)

    positions = _sample_positions(df, tpl.fields, sample, seed)
    if not positions:
        raise ConfigError(
            "calibrate needs at least one row without nulls in the template's fields "
            f"({', '.join(tpl.fields)})"
        )
    rows_df = take_rows(df, positions)
    name = _free_name(rows_df)
    n = len(positions)

    with tempfile.TemporaryDirectory(prefix="llmframe-calibrate-") as fresh:
        one_row_opts = replace(opts, batch_size=1, cache=fresh if cache_dir is not None else False)
        out, one_row = await run_frame(rows_df, tpl, one_row_opts, name, raw=True)
        if cache_dir is not None:
            _copy_records(Path(fresh), opts)
    reference = _answers(out, name)
    if all(a is None for a in reference):
        first = one_row.errors[0] if one_row.errors else "no answers"
        raise RunError(
            f"calibration got no one-row answers for any of the {n} sampled rows; first: {first}",
            list(one_row.errors),
            one_row,
        )
    compared = sum(a is not None for a in reference)
    rows = [_row(1, 1.0, compared, one_row)]

    skipped = [b for b in sizes if b > n]
    if skipped:
        warn_user(
            f"llmframe: calibrate sampled only {n} rows, so batch sizes "
            f"{', '.join(map(str, skipped))} were not measured"
        )
    for size in (b for b in sizes if 1 < b <= n):
        out, packed = await run_frame(rows_df, tpl, replace(opts, batch_size=size, cache=False), name, raw=True)
        answers = _answers(out, name)
        agreement_share, _ = agreement(reference, answers)
        by_field = field_agreement(reference, answers) if schema is not None else {}
        rows.append(replace(_row(size, agreement_share, compared, packed), fields=by_field))

    recommended, verdict = recommend(rows, min_agreement)
    report = CalibrationReport(
        rows=rows,
        recommended_batch_size=recommended,
        min_agreement=float(min_agreement),
        model=model,
        template_hash=tpl.hash,
        verdict=verdict,
        sample_rows=n,
        key=key,
        skipped_batch_sizes=skipped,
    )
    if cache_dir is not None:
        store_calibration(cache_dir, key, report)
    return report


def _without(options: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in names}


def _schema_of(options: Mapping[str, Any]) -> OutputSchema | None:
    """The answer's form from ``schema=`` or ``labels=``/``multi=``, as ``apply`` takes them."""
    return answer_form(options.get("schema"), options.get("labels"), options.get("multi", False))


def calibrate(
    df: Any,
    template: str,
    *,
    sample: int = 50,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    min_agreement: float = 0.95,
    seed: int = 0,
    **options: Any,
) -> CalibrationReport:
    """Measure how packing changes the answers of ``template`` on this model; see :func:`acalibrate`.

    >>> report = df.llm.calibrate("Capital of {country}?", model="gpt-4o-mini")  # doctest: +SKIP
    >>> print(report)  # agreement, tokens, cost, time per batch size; a verdict  # doctest: +SKIP
    >>> out = df.llm.apply("Capital of {country}?", model="gpt-4o-mini",
    ...                    batch_size="calibrated")                              # doctest: +SKIP
    """
    return run_sync(
        lambda: acalibrate(
            df, template, sample=sample, batch_sizes=batch_sizes, min_agreement=min_agreement,
            seed=seed, **options,
        )
    )  # fmt: skip


async def acalibrated_batch_size(df: Any, template: str, **options: Any) -> int:
    """The stored calibration's batch size for this call, calibrating first if there is none.

    For ``apply(..., batch_size="calibrated")``. ``options`` are ``apply``'s
    (``output`` and ``batch_size`` are ignored). Without a cache folder
    (``cache=False``) nothing is stored, so every call calibrates again.
    """
    given = _without(options, "output", "batch_size", "unnest", "prefix")
    tpl = parse_template(template, columns_of(df))
    schema = _schema_of(given)
    opts = resolve(**_without(given, "schema", "labels", "multi"))
    cache_dir = resolve_cache_dir(opts.cache)
    if cache_dir is not None:
        key = calibration_key(opts.model or "", tpl.text, opts.system, opts.params, output_spec(schema))
        stored = load_calibration(cache_dir, key)
        if stored is not None:
            return stored
    report = await acalibrate(df, template, **given)
    return report.recommended_batch_size
