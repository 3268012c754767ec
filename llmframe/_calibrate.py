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

import contextlib
import json
import os
import random
import tempfile
import threading
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._agreement import agreement, answer_agreement
from ._cache import AnswerCache, read_cache, resolve_cache_dir
from ._config import Options, resolve
from ._errors import ConfigError, RunError
from ._frames import columns_of, field_columns, kind_of
from ._html import table
from ._keys import call_prefix
from ._parse import normalize
from ._report import RunReport, last_report
from ._sync import run_sync
from ._template import is_null, parse_template, render_value

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

#: The file, in the cache folder, that holds one calibration per key.
CALIBRATIONS_FILE = "calibrations.json"
_FILE_VERSION = 1
DEFAULT_BATCH_SIZES = (1, 5, 10, 20, 50)
_file_lock = threading.Lock()


# -------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class CalibrationRow:
    """One batch size's measurement. Per-row figures divide by the rows sent."""

    batch_size: int
    agreement: float | None  # share of rows agreeing with the one-row answers (1.0 at size 1)
    rows: int  # rows compared (those with a one-row answer)
    failed_rows: int  # rows without an answer at this size (they count as disagreeing)
    requests: int  # HTTP requests, retries and resends included
    items_per_request: float | None  # below batch_size when the token budget cut batches
    prompt_tokens_per_row: float | None
    completion_tokens_per_row: float | None
    cost_per_row: float | None  # None when the model's price is unknown
    seconds: float


_ROW_SCHEMA: dict[str, str] = {
    "batch_size": "Int64",
    "agreement": "Float64",
    "rows": "Int64",
    "failed_rows": "Int64",
    "requests": "Int64",
    "items_per_request": "Float64",
    "prompt_tokens_per_row": "Float64",
    "completion_tokens_per_row": "Float64",
    "cost_per_row": "Float64",
    "seconds": "Float64",
}


@dataclass
class CalibrationReport:
    """What :func:`calibrate` measured and what it recommends.

    ``print(report)`` shows a table and the verdict; ``to_dict()`` every field;
    ``to_frame()`` one row per batch size as a polars DataFrame.

    >>> report = df.llm.calibrate("Capital of {country}?", model="gpt-4o-mini")  # doctest: +SKIP
    >>> report.recommended_batch_size                                            # doctest: +SKIP
    10
    """

    rows: list[CalibrationRow]
    recommended_batch_size: int
    min_agreement: float
    model: str
    template_hash: str
    verdict: str
    sample_rows: int = 0
    key: str = ""
    skipped_batch_sizes: list[int] = field(default_factory=list)

    @property
    def pack(self) -> bool:
        """False when even the smallest packed batch disagrees: do not pack this task."""
        return self.recommended_batch_size > 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrationReport:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        row_names = {f.name for f in fields(CalibrationRow)}
        values["rows"] = [
            CalibrationRow(**{k: v for k, v in row.items() if k in row_names})
            for row in data.get("rows", [])
        ]
        return cls(**values)

    def to_frame(self) -> Any:
        """One row per batch size (polars DataFrame), columns as in :class:`CalibrationRow`."""
        import polars as pl

        schema = {name: getattr(pl, dtype) for name, dtype in _ROW_SCHEMA.items()}
        return pl.DataFrame([asdict(r) for r in self.rows], schema=schema, orient="row")

    def _repr_html_(self) -> str:  # Jupyter
        header = ["batch", "agreement", "rows", "failed", "requests", "items/req",
                  "in tok/row", "out tok/row", "cost/row", "seconds"]  # fmt: skip
        rows = [
            [r.batch_size, _pct(r.agreement), r.rows, r.failed_rows, r.requests,
             _num(r.items_per_request, 1), _num(r.prompt_tokens_per_row, 1),
             _num(r.completion_tokens_per_row, 1), _usd(r.cost_per_row), f"{r.seconds:.2f}"]
            for r in self.rows
        ]  # fmt: skip
        title = (
            f"llmframe calibration: {self.model}, {self.sample_rows} sampled rows; "
            f"recommended batch_size {self.recommended_batch_size}"
        )
        return table(title, rows, header=header, note=self.verdict)

    def plot(self, ax: Any = None) -> Any:
        """Agreement and tokens per row against batch size, on one matplotlib ``Axes``.

        matplotlib is imported only here (``pip install matplotlib``). Returns the axes.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as exc:  # pragma: no cover - matplotlib is in the test extra
            raise ImportError("CalibrationReport.plot() needs matplotlib: pip install matplotlib") from exc
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        sizes = [r.batch_size for r in self.rows]
        ax.plot(sizes, [100 * (r.agreement or 0.0) for r in self.rows], "o-", label="agreement (%)")
        ax.axhline(100 * self.min_agreement, linestyle=":", color="gray", label="min_agreement")
        ax.axvline(self.recommended_batch_size, linestyle="--", color="green", label="recommended")
        ax.set_xlabel("rows per request (batch_size)")
        ax.set_ylabel("agreement with one-row answers (%)")
        ax.set_ylim(0, 105)
        tokens = ax.twinx()
        per_row = [(r.prompt_tokens_per_row or 0) + (r.completion_tokens_per_row or 0) for r in self.rows]
        tokens.plot(sizes, per_row, "s--", color="tab:orange", label="tokens per row")
        tokens.set_ylabel("tokens per row")
        lines = ax.get_legend_handles_labels()[0] + tokens.get_legend_handles_labels()[0]
        labels = ax.get_legend_handles_labels()[1] + tokens.get_legend_handles_labels()[1]
        ax.legend(lines, labels, loc="lower left", fontsize="small")
        ax.set_title(f"calibration: {self.model}")
        return ax

    def __str__(self) -> str:
        head = (
            f"llmframe calibration: {self.model}, {self.sample_rows} sampled rows, "
            f"min_agreement {self.min_agreement:.0%}"
        )
        header = (
            f"{'batch':>6} {'agreement':>10} {'rows':>5} {'failed':>6} {'requests':>8} "
            f"{'items/req':>9} {'in tok/row':>10} {'out tok/row':>11} {'cost/row':>11} {'seconds':>8}"
        )
        lines = [head, header]
        for r in self.rows:
            lines.append(
                f"{r.batch_size:>6} {_pct(r.agreement):>10} {r.rows:>5} {r.failed_rows:>6} "
                f"{r.requests:>8} {_num(r.items_per_request, 1):>9} "
                f"{_num(r.prompt_tokens_per_row, 1):>10} {_num(r.completion_tokens_per_row, 1):>11} "
                f"{_usd(r.cost_per_row):>11} {r.seconds:>8.2f}"
            )
        if self.skipped_batch_sizes:
            skipped = ", ".join(map(str, self.skipped_batch_sizes))
            lines.append(f"not measured (larger than the sample): {skipped}")
        lines.append(f"recommended batch_size: {self.recommended_batch_size}")
        lines.append(self.verdict)
        return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.7f}"


def _recommend(rows: Sequence[CalibrationRow], min_agreement: float) -> tuple[int, str]:
    packed = sorted((r for r in rows if r.batch_size > 1), key=lambda r: r.batch_size)
    if not packed:
        return 1, (
            "only one row per request was measured, so there is nothing to compare; "
            "give a larger sample or smaller batch_sizes"
        )
    best = 1
    first_miss: CalibrationRow | None = None
    for row in packed:
        if row.agreement is not None and row.agreement >= min_agreement:
            best = row.batch_size
        else:
            first_miss = row
            break
    need = f"min_agreement {min_agreement:.0%}"
    if first_miss is None:
        return best, (
            f"pack up to {best} rows per request: every measured batch size agrees with the "
            f"one-row answers on at least {min_agreement:.0%} of rows (larger sizes were not measured)"
        )
    seen = _pct(first_miss.agreement)
    if best == 1:
        return 1, (
            f"do not pack this task on this model: at {first_miss.batch_size} rows per request "
            f"only {seen} of answers agree with the one-row answers ({need}); use batch_size=1"
        )
    return best, (
        f"use batch_size={best}: at {first_miss.batch_size} rows per request agreement with "
        f"the one-row answers falls to {seen}, below {need}"
    )


# ----------------------------------------------------------------------------- storage


def calibration_key(
    model: str,
    template: str,
    system: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> str:
    """The key a calibration is stored under: what decides the answers, as for cache keys.

    >>> calibration_key("gpt-4o-mini", "Capital of {country}?") == calibration_key(
    ...     "gpt-4o-mini", "Capital of {country}?", None, {})
    True
    """
    prefix = call_prefix(model=model, template=template, system=system, params=params)
    return "cal-" + prefix.hex()


def _path(cache_dir: str | os.PathLike[str]) -> Path:
    return Path(os.fspath(cache_dir)).expanduser() / CALIBRATIONS_FILE


def _read_entries(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        warnings.warn(
            f"llmframe: cannot read {path} ({exc}); ignoring stored calibrations", stacklevel=3
        )
        return {}
    try:
        data = json.loads(text)
        entries = data["calibrations"]
        if not isinstance(entries, dict):
            raise TypeError("'calibrations' is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        warnings.warn(
            f"llmframe: {path} is not a valid calibration file ({exc}); ignoring it "
            "(the next calibration rewrites it)",
            stacklevel=3,
        )
        return {}
    return entries


def store_calibration(
    cache_dir: str | os.PathLike[str], key: str, report: CalibrationReport
) -> Path:
    """Store ``report`` under ``key`` (from :func:`calibration_key`) in the cache folder.

    The file is replaced atomically (written to a temporary name, then
    ``os.replace``), so a reader sees the old or the new file, never half of
    one. Two processes storing at the same instant may lose one of the two
    entries; that costs a recalibration, never a wrong batch size.
    """
    path = _path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock:
        entries = _read_entries(path)
        entries[key] = {
            "recommended_batch_size": report.recommended_batch_size,
            "min_agreement": report.min_agreement,
            "model": report.model,
            "template_hash": report.template_hash,
            "created": datetime.now(timezone.utc).isoformat(),
            "report": report.to_dict(),
        }
        body = json.dumps({"version": _FILE_VERSION, "calibrations": entries}, indent=1)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
    return path


def load_calibration(cache_dir: str | os.PathLike[str], key: str) -> int | None:
    """The recommended batch size stored under ``key``, or ``None`` if there is none.

    A missing file means no calibration; a corrupt file or entry is ignored with
    a warning (and rewritten by the next calibration).
    """
    path = _path(cache_dir)
    entry = _read_entries(path).get(key)
    if entry is None:
        return None
    size = entry.get("recommended_batch_size") if isinstance(entry, dict) else None
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        warnings.warn(
            f"llmframe: ignoring a malformed calibration for {key} in {path}", stacklevel=2
        )
        return None
    return size


def load_calibration_report(
    cache_dir: str | os.PathLike[str], key: str
) -> CalibrationReport | None:
    """The whole stored :class:`CalibrationReport` under ``key``, or ``None``."""
    entry = _read_entries(_path(cache_dir)).get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("report"), dict):
        return None
    try:
        return CalibrationReport.from_dict(entry["report"])
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------ running it


def _sample_positions(df: Any, fields_used: Sequence[str], sample: int, seed: int) -> list[int]:
    """Up to ``sample`` positions of rows with distinct, non-null field values, in frame order."""
    columns = field_columns(df, fields_used)
    seen: set[tuple[str, ...]] = set()
    eligible: list[int] = []
    for position, values in enumerate(zip(*(columns[f] for f in fields_used), strict=True)):
        if any(is_null(v) for v in values):
            continue
        rendered = tuple(render_value(v) for v in values)
        if rendered in seen:  # equal prompts get one answer: sampling both would tell nothing
            continue
        seen.add(rendered)
        eligible.append(position)
    chosen = random.Random(seed).sample(eligible, min(sample, len(eligible)))
    return sorted(chosen)


def _take(df: Any, positions: list[int]) -> Any:
    if kind_of(df) == "pandas":
        return df.iloc[positions]
    return df[positions]


def _free_name(df: Any) -> str:
    taken = set(columns_of(df))
    name = "__llmframe_calibration__"
    while name in taken:
        name += "_"
    return name


def _report_of(out: Any) -> RunReport:
    from . import _api

    found = _api.report_of(out)
    if found is not None:
        return found
    # Not reached today: apply attaches its report to the frame it returns. Kept for
    # safety; the run just finished on this loop, so it is also the last report.
    report = last_report()
    if report is None:  # pragma: no cover - every run sets one
        raise RuntimeError("llmframe: apply finished without a run report")
    return report


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


def _copy_records(source: Path, cache_dir: Path) -> None:
    """Add every record of the cache folder ``source`` to the cache in ``cache_dir``."""
    records = read_cache(source)
    if records.height == 0:
        return
    with AnswerCache(cache_dir) as cache:
        cache.add_columns(records.to_arrow())


_OPTION_NAMES = frozenset(f.name for f in fields(Options))


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
    given = dict(options)
    given.pop("output", None)
    if "batch_size" in given:
        raise ConfigError(
            "calibrate chooses the batch sizes itself: pass batch_sizes=(1, 5, 10, ...) "
            "instead of batch_size="
        )
    given.pop("error_column", None)
    given["errors"] = "null"
    if "canaries" in _OPTION_NAMES:
        given["canaries"] = 0  # measure packing as it is, not as canaries repair it
    kind_of(df)
    tpl = parse_template(template, columns_of(df))
    opts = resolve(**{k: v for k, v in given.items() if k in _OPTION_NAMES})
    model = opts.model or ""
    key = calibration_key(model, tpl.text, opts.system, opts.params)
    cache_dir = resolve_cache_dir(opts.cache)

    positions = _sample_positions(df, tpl.fields, sample, seed)
    if not positions:
        raise ConfigError(
            "calibrate needs at least one row without nulls in the template's fields "
            f"({', '.join(tpl.fields)})"
        )
    rows_df = _take(df, positions)
    name = _free_name(rows_df)
    n = len(positions)

    from ._api import aapply  # imported here: _api may import this module

    with tempfile.TemporaryDirectory(prefix="llmframe-calibrate-") as fresh:
        out = await aapply(
            rows_df, template, output=name, batch_size=1,
            cache=fresh if cache_dir is not None else False, **_without(given, "cache"),
        )  # fmt: skip
        one_row = _report_of(out)
        if cache_dir is not None:
            _copy_records(Path(fresh), cache_dir)
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
        warnings.warn(
            f"llmframe: calibrate sampled only {n} rows, so batch sizes "
            f"{', '.join(map(str, skipped))} were not measured",
            stacklevel=2,
        )
    for size in (b for b in sizes if 1 < b <= n):
        out = await aapply(rows_df, template, output=name, batch_size=size, cache=False,
                           **_without(given, "cache"))  # fmt: skip
        agreement_share, _ = agreement(reference, _answers(out, name))
        rows.append(_row(size, agreement_share, compared, _report_of(out)))

    recommended, verdict = _recommend(rows, min_agreement)
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
    given = _without(options, "output", "batch_size")
    tpl = parse_template(template, columns_of(df))
    opts = resolve(**{k: v for k, v in given.items() if k in _OPTION_NAMES})
    cache_dir = resolve_cache_dir(opts.cache)
    if cache_dir is not None:
        stored = load_calibration(
            cache_dir, calibration_key(opts.model or "", tpl.text, opts.system, opts.params)
        )
        if stored is not None:
            return stored
    report = await acalibrate(df, template, **given)
    return report.recommended_batch_size
