"""Frames in and out: the only place that knows pandas from polars."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._errors import ConfigError

__all__ = ["columns_of", "field_columns", "kind_of", "rendered_columns", "with_answers"]


def kind_of(df: Any) -> str:
    module = type(df).__module__.split(".")[0]
    if module == "pandas":
        return "pandas"
    if module == "polars":
        import polars as pl

        if isinstance(df, pl.LazyFrame):
            raise ConfigError("llmframe needs a polars DataFrame; call .collect() on the LazyFrame first")
        return "polars"
    raise ConfigError(f"expected a pandas or polars DataFrame, got {type(df).__module__}.{type(df).__name__}")


def columns_of(df: Any) -> list[str]:
    return [str(c) for c in df.columns]


def field_columns(df: Any, fields: Sequence[str]) -> dict[str, list[Any]]:
    """The values of each template field, as Python objects, in row order."""
    if kind_of(df) == "pandas":
        by_name = {str(c): c for c in df.columns}
        return {f: df[by_name[f]].tolist() for f in fields}
    return {f: df.get_column(f).to_list() for f in fields}


def rendered_columns(df: Any, fields: Sequence[str]) -> dict[str, list[str | None]]:
    """Each field's values as prompt text: ``str(value)``, or ``None`` for a null.

    Nulls are found per column, vectorized (None, NaN, NA, NaT alike), and string
    columns are taken as they are, so a million-row re-run does not pay a Python
    call per value.
    """
    out: dict[str, list[str | None]] = {}
    if kind_of(df) == "pandas":
        by_name = {str(c): c for c in df.columns}
        for f in fields:
            series = df[by_name[f]]
            nulls = series.isna().to_numpy().tolist()
            values = series.tolist()
            if any(nulls):
                out[f] = [None if n else (v if type(v) is str else str(v)) for v, n in zip(values, nulls, strict=True)]
            else:
                out[f] = [v if type(v) is str else str(v) for v in values]
        return out
    import polars as pl

    for f in fields:
        series = df.get_column(f)
        if series.dtype == pl.String:
            out[f] = series.to_list()
            continue
        if series.dtype.is_float():
            series = series.fill_nan(None)
        out[f] = [None if v is None else str(v) for v in series.to_list()]
    return out


def with_answers(df: Any, output: str, answers: Sequence[str | None]) -> Any:
    """A new frame: ``df`` with the answers as column ``output`` (replaced if present)."""
    if kind_of(df) == "pandas":
        import pandas as pd

        # pandas >= 3 infers its string dtype from str; older pandas keeps object with None.
        dtype: Any = str if int(pd.__version__.split(".")[0]) >= 3 else object
        series = pd.Series(list(answers), index=df.index, dtype=dtype, name=output)
        out = df.copy(deep=False)
        out[output] = series
        return out
    import polars as pl

    return df.with_columns(pl.Series(output, list(answers), dtype=pl.String))
