"""Frames in and out: the only place that knows pandas from polars.

:func:`frame` wraps a DataFrame in its adapter, implemented once for pandas
(:class:`PandasFrame`) and once for polars (:class:`PolarsFrame`): column
names, a column's values, a column rendered as prompt text, rows by
position, and a new frame with an answer column. Nothing else in llmframe
branches on the frame library.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

from ._answers import Answers
from ._errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "PandasFrame",
    "PolarsFrame",
    "RenderedColumn",
    "columns_of",
    "field_columns",
    "frame",
    "kind_of",
    "rendered_columns",
    "take_rows",
    "with_answers",
    "with_columns",
]


class _Adapter:
    __slots__ = ("df",)

    def __init__(self, df: Any) -> None:
        self.df = df

    def columns(self) -> list[str]:
        return [str(c) for c in self.df.columns]


class PandasFrame(_Adapter):
    kind = "pandas"
    __slots__ = ()

    def column(self, name: str) -> Any:
        by_name = {str(c): c for c in self.df.columns}  # labels may be non-strings
        return self.df[by_name[name]]

    def values(self, name: str) -> list[Any]:
        return list(self.column(name).tolist())

    def take(self, positions: list[int]) -> Any:
        return self.df.iloc[positions]

    @staticmethod
    def render(series: Any, start: int, stop: int) -> list[str | None]:
        part = series.iloc[start:stop]
        nulls = part.isna().to_numpy()
        values = part.tolist()
        if nulls.any():
            return [
                None if n else (v if type(v) is str else str(v))
                for v, n in zip(values, nulls.tolist(), strict=True)
            ]
        return [v if type(v) is str else str(v) for v in values]

    def with_column(self, name: str, values: list[str | None] | pa.Array | pa.ChunkedArray) -> Any:
        import pandas as pd

        # pandas >= 3 infers its string dtype from str (Arrow-backed: an Arrow column is taken
        # as it is); older pandas keeps object with None.
        dtype: Any = str if int(pd.__version__.split(".")[0]) >= 3 else object
        if dtype is object and not isinstance(values, list):
            values = values.to_pylist()
        out = self.df.copy(deep=False)
        out[name] = pd.Series(values, index=self.df.index, dtype=dtype, name=name)
        return out

    def with_typed(self, columns: Sequence[tuple[str, Any]]) -> Any:
        import pandas as pd

        out = self.df.copy(deep=False)
        for name, values in columns:  # pandas arrays of their own dtype (see _typed)
            out[name] = pd.Series(values, index=self.df.index, name=name, copy=False)
        return out


class PolarsFrame(_Adapter):
    kind = "polars"
    __slots__ = ()

    def column(self, name: str) -> Any:
        return self.df.get_column(name)

    def values(self, name: str) -> list[Any]:
        return list(self.column(name).to_list())

    def take(self, positions: list[int]) -> Any:
        return self.df[positions]

    @staticmethod
    def render(series: Any, start: int, stop: int) -> list[str | None]:
        import polars as pl

        part = series.slice(start, stop - start)
        if part.dtype == pl.String:
            return part.to_list()  # type: ignore[no-any-return]
        if part.dtype.is_float():
            part = part.fill_nan(None)
        return [None if v is None else str(v) for v in part.to_list()]

    def with_column(self, name: str, values: list[str | None] | pa.Array | pa.ChunkedArray) -> Any:
        import polars as pl

        if isinstance(values, list):
            return self.df.with_columns(pl.Series(name, values, dtype=pl.String))
        return self.df.with_columns(pl.Series(name, values).cast(pl.String))

    def with_chunks(self, name: str, chunks: Iterable[pa.Array | pa.ChunkedArray]) -> Any:
        """:meth:`with_column` of Arrow chunks, each made polars' (a copy: its strings are
        views) before the next is made, so the column is never held twice whole."""
        import polars as pl
        import pyarrow as pa

        parts = [pl.Series(name, chunk).cast(pl.String) for chunk in chunks]
        column = pl.concat(parts, rechunk=False) if parts else pl.Series(name, [], dtype=pl.String)
        del parts
        pa.default_memory_pool().release_unused()  # what the chunks took, given back
        return self.df.with_columns(column)

    def with_typed(self, columns: Sequence[tuple[str, Any]]) -> Any:
        return self.df.with_columns([series.alias(name) for name, series in columns])


Frame = PandasFrame | PolarsFrame


def frame(df: Any) -> Frame:
    """The adapter for ``df``; a clear error for anything but a pandas or polars DataFrame."""
    module = type(df).__module__.split(".")[0]
    if module == "pandas":
        import pandas as pd

        if isinstance(df, pd.DataFrame):  # not a Series or an Index
            return PandasFrame(df)
    elif module == "polars":
        import polars as pl

        if isinstance(df, pl.LazyFrame):
            raise ConfigError("llmframe needs a polars DataFrame; call .collect() on the LazyFrame first")
        if isinstance(df, pl.DataFrame):
            return PolarsFrame(df)
    raise ConfigError(f"expected a pandas or polars DataFrame, got {type(df).__module__}.{type(df).__name__}")


def kind_of(df: Any) -> str:
    return frame(df).kind


def columns_of(df: Any) -> list[str]:
    return frame(df).columns()


def field_columns(df: Any, fields: Sequence[str]) -> dict[str, list[Any]]:
    """The values of each template field, as Python objects, in row order."""
    adapter = frame(df)
    return {f: adapter.values(f) for f in fields}


def take_rows(df: Any, positions: list[int]) -> Any:
    """The rows at ``positions`` (0-based, in that order), as a frame of the same kind."""
    return frame(df).take(positions)


#: Rows of the answer column made polars' at a time (a chunk of the column each).
POLARS_CHUNK_ROWS = 1 << 17

#: Rows rendered at a time when a column is iterated.
_ITER_ROWS = 10_000


class RenderedColumn(Sequence[str | None]):
    """One template field's values as prompt text: ``str(value)``, or ``None`` for a null.

    The one way a value becomes prompt text (and so part of its cache key). Rendered
    on demand, a slice at a time: a million-row re-run then never holds a million
    prompt strings at once, only the slice it is keying. Nulls are found per slice,
    vectorized (None, NaN, NA, NaT alike), and string columns are taken as they are,
    so no value costs a Python call. Holds the column (a pandas or polars Series),
    not the frame, so a column replaced in the frame later does not change it.

    >>> rendered_columns(pd.DataFrame({"n": [1, None]}), ["n"])["n"][:]  # doctest: +SKIP
    ['1.0', None]
    """

    __slots__ = ("_render", "_series")

    def __init__(self, series: Any, adapter: type[PandasFrame] | type[PolarsFrame]) -> None:
        self._series = series
        self._render = adapter.render

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
                return self._render(self._series, start, max(start, stop))
            rows = range(start, stop, step)
            if not rows:
                return []
            first = min(rows)
            block = self._render(self._series, first, max(rows) + 1)
            return [block[row - first] for row in rows]
        row = operator.index(index)
        if row < 0:
            row += len(self)
        if not 0 <= row < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        return self._render(self._series, row, row + 1)[0]

    def __iter__(self) -> Iterator[str | None]:
        for start in range(0, len(self), _ITER_ROWS):
            yield from self._render(self._series, start, min(len(self), start + _ITER_ROWS))


def rendered_columns(df: Any, fields: Sequence[str]) -> dict[str, RenderedColumn]:
    """Each field's values as prompt text (see :class:`RenderedColumn`), rendered lazily."""
    adapter = frame(df)
    return {f: RenderedColumn(adapter.column(f), type(adapter)) for f in fields}


def with_answers(df: Any, output: str, answers: Sequence[str | None]) -> Any:
    """A new frame: ``df`` with the answers as column ``output`` (replaced if present).
    :class:`~llmframe._answers.Answers` become the column as one Arrow array, with no
    Python string per row (unless an answer is not UTF-8 text: then as a list)."""
    adapter = frame(df)
    if isinstance(answers, Answers) and isinstance(adapter, PolarsFrame):
        chunks = answers.to_arrow_chunks(POLARS_CHUNK_ROWS)
        if chunks is not None:
            return adapter.with_chunks(output, chunks)
    column = answers.to_arrow() if isinstance(answers, Answers) else None
    if column is not None:
        return adapter.with_column(output, column)
    return adapter.with_column(output, answers if isinstance(answers, list) else list(answers))


def with_columns(df: Any, columns: Sequence[tuple[str, Any]]) -> Any:
    """A new frame: ``df`` with typed columns added (``(name, values)`` as :mod:`._typed` builds
    them: polars Series, or pandas arrays), each replacing a column of that name."""
    return frame(df).with_typed(columns)
