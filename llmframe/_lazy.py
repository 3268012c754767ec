"""Calls that run later, elsewhere: checked now, their output's columns known now.

A Dask partition or a polars LazyFrame batch runs the eager call (``_api.apply``,
``classify`` or ``embed``) on a piece of the frame when the graph is computed.
Everything that can be wrong with the call is found here first, on an empty
frame with the columns of the real one and without any request: the template's
fields, the options, the output names. :func:`plan_call` returns the empty
frame the eager call would return, so its columns and their types are the lazy
frame's schema (Dask's ``meta``, polars' ``return_dtype``), built by the very
functions that build the eager result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from . import _api
from ._config import Options
from ._embed_output import vector_array
from ._embed_run import EmbedSpec
from ._errors import ConfigError
from ._frames import kind_of, with_answers, with_columns
from ._schema import answer_form
from ._typed import output_columns, typed_columns

__all__ = ["LazyCall", "plan_call"]

Kind = Literal["apply", "classify", "embed"]

#: The keyword arguments of each call besides the options, with their defaults.
_OWN: dict[str, dict[str, Any]] = {
    "apply": {"output": "answer", "schema": None, "unnest": True, "prefix": ""},
    "classify": {"labels": None, "multi": False, "output": None},
    "embed": {"output": "embedding", "dimensions": None, "truncate": False, "max_input_tokens": 8192,
              "max_batch_items": 2048, "max_batch_tokens": 300_000},
}  # fmt: skip


@dataclass(frozen=True)
class LazyCall:
    """One eager call, to be run on each piece: ``kind``, ``template`` and every keyword."""

    kind: Kind
    template: str
    #: Out of the repr: Dask's logs of a failed task show its arguments, and these may hold an API key.
    arguments: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def run(self, part: Any) -> Any:
        """The eager call on ``part`` (a pandas or polars DataFrame): the new frame, its report attached."""
        calls: dict[str, Callable[..., Any]] = {"apply": _api.apply, "classify": _api.classify, "embed": _api.embed}
        return calls[self.kind](part, self.template, **self.arguments)


def _split(kind: Kind, arguments: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    own = {**_OWN[kind], **{k: v for k, v in arguments.items() if k in _OWN[kind]}}
    return own, {k: v for k, v in arguments.items() if k not in _OWN[kind]}


def plan_call(empty: Any, kind: Kind, template: str, arguments: Mapping[str, Any]) -> tuple[Options, Any, tuple[str, ...]]:
    """The resolved options, the empty result of ``kind`` on ``empty`` (a frame with no rows)
    and the names of the columns the call adds, in order.

    Raises what the eager call would raise before its first request.
    """
    opts, out = _plan(empty, kind, template, arguments)
    return opts, out, _added_columns(kind, opts, arguments)


def _plan(empty: Any, kind: Kind, template: str, arguments: Mapping[str, Any]) -> tuple[Options, Any]:
    own, options = _split(kind, arguments)
    if kind == "embed":
        spec = EmbedSpec(own["dimensions"], own["truncate"], own["max_input_tokens"], own["max_batch_items"],
                         own["max_batch_tokens"])  # fmt: skip
        _, opts, spec = _api._embed_call(empty, template, options, spec)
        if spec.dimensions is None:
            raise ConfigError("a lazy embed needs dimensions= (the vector length), so that the column's type "
                              "is known before any request; e.g. dimensions=1536 for text-embedding-3-small")  # fmt: skip
        vectors = vector_array(np.zeros((0, spec.dimensions), np.float32), np.zeros(0, bool), spec.dimensions)
        if kind_of(empty) == "polars":
            import polars as pl

            column: Any = pl.from_arrow(vectors)
        else:
            import pandas as pd

            column = pd.arrays.ArrowExtensionArray(vectors)
        return opts, _with_errors(with_columns(empty, [(own["output"], column)]), opts)
    if kind == "classify":
        if "schema" in options:
            raise ConfigError("classify makes its schema from labels=; pass schema= to apply instead")
        if own["labels"] is None:
            raise ConfigError("classify needs labels=[...], the answers it may give")
        schema = answer_form(labels=own["labels"], multi=own["multi"])
        own = {"output": _classify_output(own), "schema": schema, "unnest": True, "prefix": ""}
    _, opts, _ = _api._prepare(empty, template, options, own["schema"])
    _api._check_output(empty, opts, own["output"], own["unnest"], own["prefix"])
    if opts.batch_size == "calibrated":
        raise ConfigError("batch_size='calibrated' would calibrate once per piece; calibrate on a sample "
                          "first and pass its size: batch_size=df.head(500).llm.calibrate(...)"
                          ".recommended_batch_size")  # fmt: skip
    if opts.schema is None:
        out = with_answers(empty, own["output"], [])
    else:
        out = with_columns(empty, typed_columns(kind_of(empty), [], opts.schema, own["output"],
                                                unnest=own["unnest"], prefix=own["prefix"]))  # fmt: skip
    return opts, _with_errors(out, opts)


def _classify_output(own: Mapping[str, Any]) -> str:
    """classify's column: ``output=``, else "labels" (``multi=True``) or "label", as :func:`_api.aclassify` names it."""
    return str(own["output"]) if own["output"] is not None else ("labels" if own["multi"] else "label")


def _with_errors(out: Any, opts: Options) -> Any:
    return with_answers(out, opts.error_column, []) if opts.error_column else out


def _added_columns(kind: Kind, opts: Options, arguments: Mapping[str, Any]) -> tuple[str, ...]:
    """The names of the columns the call adds, in the order it adds them."""
    own, _ = _split(kind, arguments)
    if kind == "classify":
        names = [_classify_output(own)]
    elif kind == "apply" and opts.schema is not None:
        names = output_columns(opts.schema, own["output"], unnest=own["unnest"], prefix=own["prefix"])
    else:
        names = [own["output"]]
    return (*names, *([opts.error_column] if opts.error_column else []))
