"""Frames in and out: the only place that knows pandas from polars."""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from typing import Any, overload

from ._errors import ConfigError

__all__ = [
    "RenderedColumn",
    "columns_of",
    "field_columns",
    "kind_of",
    "rendered_columns",
    "with_answers",
]


def kind_of(df: Any) -> str:
    module = type(df).__module__.split(".")[0]
    if module == "pandas":
        import pandas as pd

        if isinstance(df, pd.DataFrame):  # not a Series or an Index
            return "pandas"
    elif module == "polars":
        import polars as pl

        if isinstance(df, pl.LazyFrame):
            raise ConfigError("llmframe needs a polars DataFrame; call .collect() on the LazyFrame first")
        if isinstance(df, pl.DataFrame):
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


#: Rows rendered at a time when a column is iterated.
_ITER_ROWS = 10_000


class RenderedColumn(Sequence[str | None]):
    """One template field's values as prompt text: ``str(value)``, or ``None`` for a null.

    Rendered on demand, a slice at a time: a million-row re-run then never holds a
    million prompt strings at once, only the slice it is keying. Nulls are found per
    slice, vectorized (None, NaN, NA, NaT alike), and string columns are taken as
    they are, so no value costs a Python call. Holds the column (a pandas or polars
    Series), not the frame, so a column replaced in the frame later does not change it.

    >>> rendered_columns(pd.DataFrame({"n": [1, None]}), ["n"])["n"][:]  # doctest: +SKIP
    ['1.0', None]
    """

    __slots__ = ("_kind", "_series")

    def __init__(self, series: Any, kind: str) -> None:
        self._series = series
        self._kind = kind

    def __len__(self) -> int:
        return len(self._series)

    @overload
    def __getitem__(self, index: int) -> str | None: ...

    @overload
    def __getitem__(self, index: slice) -> list[str | None]: ...

    def __getitem__(self, index: int | slice) -> str | list[str | None] | None:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._render(start, max(start, stop))
            rows = range(start, stop, step)
            if not rows:
                return []
            first = min(rows)
            block = self._render(first, max(rows) + 1)
            return [block[row - first] for row in rows]
        row = operator.index(index)
        if row < 0:
            row += len(self)
        if not 0 <= row < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        return self._render(row, row + 1)[0]

    def __iter__(self) -> Iterator[str | None]:
        for start in range(0, len(self), _ITER_ROWS):
            yield from self._render(start, min(len(self), start + _ITER_ROWS))

    def _render(self, start: int, stop: int) -> list[str | None]:
        if self._kind == "pandas":
            part = self._series.iloc[start:stop]
            nulls = part.isna().to_numpy()
            values = part.tolist()
            if nulls.any():
                return [
                    None if n else (v if type(v) is str else str(v))
                    for v, n in zip(values, nulls.tolist(), strict=True)
                ]
            return [v if type(v) is str else str(v) for v in values]
        import polars as pl

        part = self._series.slice(start, stop - start)
        if part.dtype == pl.String:
            return part.to_list()  # type: ignore[no-any-return]
        if part.dtype.is_float():
            part = part.fill_nan(None)
        return [None if v is None else str(v) for v in part.to_list()]


def rendered_columns(df: Any, fields: Sequence[str]) -> dict[str, RenderedColumn]:
    """Each field's values as prompt text (see :class:`RenderedColumn`), rendered lazily."""
    kind = kind_of(df)
    if kind == "pandas":
        by_name = {str(c): c for c in df.columns}
        return {f: RenderedColumn(df[by_name[f]], kind) for f in fields}
    return {f: RenderedColumn(df.get_column(f), kind) for f in fields}


def with_answers(df: Any, output: str, answers: Sequence[str | None]) -> Any:
    """A new frame: ``df`` with the answers as column ``output`` (replaced if present)."""
    if kind_of(df) == "pandas":
        import pandas as pd

        # pandas >= 3 infers its string dtype from str; older pandas keeps object with None.
        dtype: Any = str if int(pd.__version__.split(".")[0]) >= 3 else object
        values = answers if isinstance(answers, list) else list(answers)
        series = pd.Series(values, index=df.index, dtype=dtype, name=output)
        out = df.copy(deep=False)
        out[output] = series
        return out
    import polars as pl

    values = answers if isinstance(answers, list) else list(answers)
    return df.with_columns(pl.Series(output, values, dtype=pl.String))
