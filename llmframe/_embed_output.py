"""Vectors as a column, and a column of vectors as one matrix.

The column is Arrow's ``fixed_size_list<float32>[dims]`` in both libraries:
polars ``Array(Float32, dims)``, and in pandas an Arrow-backed column of that
type (``pd.ArrowDtype``), null where a row has no vector. Both hold the run's
``(rows, dims)`` float32 matrix as one buffer, without a copy, so
:func:`embedding_matrix` gives it back without a copy either.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._errors import ConfigError

__all__ = ["embedding_matrix", "vector_array"]


def vector_array(matrix: np.ndarray | None, valid: np.ndarray, dims: int | None) -> pa.FixedSizeListArray:
    """``matrix`` as ``fixed_size_list<float32>[dims]``, null where not ``valid`` (no copy)."""
    if matrix is None:
        size = dims or 1  # no vector at all: the length asked for, else one
        matrix = np.zeros((len(valid), size), dtype=np.float32)
    values = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1))
    mask = None if valid.all() else pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(values, matrix.shape[1], mask=mask)


def _from_arrow(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray):
        values = values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    if values.null_count:
        raise ConfigError(f"{values.null_count} of {len(values)} rows have no vector (null); drop them first, "
                          "e.g. df.filter(pl.col('vec').is_not_null()) or df[df['vec'].notna()]")  # fmt: skip
    if pa.types.is_fixed_size_list(values.type):
        size = values.type.list_size
        flat = values.flatten()  # the rows' own values, offset taken into account; no copy
    elif pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        lengths = set(pc.list_value_length(values).unique().to_pylist())
        if len(lengths) > 1:
            raise ConfigError(f"the vectors differ in length ({sorted(lengths)}): they make no matrix")
        size = lengths.pop() if lengths else 0
        flat = values.flatten()
    else:
        raise ConfigError(f"expected a column of vectors, got Arrow type {values.type}")
    out = flat.to_numpy(zero_copy_only=flat.type == pa.float32() and not flat.null_count)
    return np.asarray(out, dtype=np.float32).reshape(len(values), size)


def embedding_matrix(values: Any) -> np.ndarray:
    """The vectors of an ``embed`` column as one ``(rows, dims)`` float32 array.

    >>> out = df.llm.embed("{title}: {abstract}", output="vec", model="text-embedding-3-small")
    >>> X = llmframe.embedding_matrix(out["vec"])      # X.shape == (len(out), 1536)

    Takes a polars ``Array``/``List`` Series, a pandas Series (Arrow-backed, or
    of numpy arrays), an Arrow array, a list of arrays, or a 2-d array. From
    polars, pandas-Arrow and Arrow it is a view of the column's buffer, no copy.
    A null row raises :class:`~llmframe.ConfigError`: drop it first.
    """
    module = type(values).__module__.split(".")[0]
    if module == "polars":
        return _from_arrow(values.to_arrow())
    if module == "pandas":
        array = values.array
        if hasattr(array, "__arrow_array__") and hasattr(array, "_pa_array"):
            return _from_arrow(array._pa_array)  # the ArrowExtensionArray's own data: no copy
        values = values.tolist()
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return _from_arrow(values)
    if isinstance(values, np.ndarray) and values.ndim == 2:
        return values.astype(np.float32, copy=False)
    rows = list(values)
    if any(r is None for r in rows):
        raise ConfigError("some rows have no vector (None); drop them first")
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([np.asarray(r, dtype=np.float32) for r in rows])
