"""Templates: ``str.format``-style prompts whose fields name columns.

``"Classify the sentiment of: {review}"`` has one field, ``review``. Templates
are checked against the frame's columns before any request is made, so a typo
costs nothing. ``{{`` and ``}}`` stand for literal braces. Format specs and
conversions (``{price:.2f}``, ``{name!r}``) are not supported: format the
column first, so that the cached value and the prompt are the same text.
"""

from __future__ import annotations

import hashlib
import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import TemplateError

__all__ = ["Template", "is_null", "parse_template"]

_formatter = string.Formatter()


@dataclass(frozen=True)
class Template:
    """A parsed template: its text and the columns it uses, in first-use order."""

    text: str
    fields: tuple[str, ...]
    # Literal text and field names alternating, for fast rendering.
    _parts: tuple[tuple[str, str | None], ...]

    @property
    def hash(self) -> str:
        return hashlib.blake2b(self.text.encode(), digest_size=8).hexdigest()

    def render(self, values: Mapping[str, str]) -> str:
        """Render with already-stringified ``values`` (see :class:`~llmframe._frames.RenderedColumn`)."""
        out: list[str] = []
        for literal, field in self._parts:
            out.append(literal)
            if field is not None:
                out.append(values[field])
        return "".join(out)


def _where(text: str, message: str) -> str:
    """Point at the first unbalanced brace, so the user sees where the template breaks."""
    depth = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "{}" and text[i : i + 2] in ("{{", "}}") and depth == 0:
            i += 2
            continue
        if ch == "{":
            if depth:
                break
            depth = 1
            start = i
        elif ch == "}":
            if not depth:
                start = i
                break
            depth = 0
        i += 1
    else:
        start = text.rfind("{") if depth else -1
    if start < 0:
        return message
    snippet = text[max(0, start - 20) : start + 20]
    pointer = " " * (min(start, 20) + 1) + "^"
    return f"{message} at character {start}:\n  {snippet!r}\n  {pointer}"


def parse_template(text: str, columns: Sequence[str] | None = None) -> Template:
    """Parse ``text`` and check that every field is one of ``columns``.

    >>> parse_template("Sentiment of {review}?", ["review", "stars"]).fields
    ('review',)
    """
    if not isinstance(text, str):
        raise TemplateError(f"template must be a str, got {type(text).__name__}")
    try:
        parsed = list(_formatter.parse(text))
    except ValueError as exc:
        raise TemplateError(_where(text, f"malformed template ({exc})")) from None
    parts: list[tuple[str, str | None]] = []
    fields: list[str] = []
    for literal, field, spec, conversion in parsed:
        if field is None:
            parts.append((literal, None))
            continue
        if field == "" or field.isdigit():
            raise TemplateError(
                f"template field {{{field}}} is positional; name a column instead, e.g. {{review}}"
            )
        if conversion or spec:
            shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise TemplateError(
                f"template field {shown} uses a format spec or conversion, which llmframe does "
                f"not apply; format the column {field!r} first and use {{{field}}}"
            )
        parts.append((literal, field))
        if field not in fields:
            fields.append(field)
    if not fields:
        raise TemplateError(
            "template has no {column} fields, so every row would get the same prompt; "
            "name at least one column, e.g. 'Classify: {review}'"
        )
    if columns is not None:
        available = [str(c) for c in columns]
        missing = [f for f in fields if f not in available]
        if missing:
            names = ", ".join(repr(m) for m in missing)
            raise TemplateError(
                f"template field{'s' if len(missing) > 1 else ''} {names} "
                f"{'are' if len(missing) > 1 else 'is'} not a column; "
                f"available columns: {', '.join(repr(c) for c in available)}"
            )
    return Template(text=text, fields=tuple(fields), _parts=tuple(parts))


def is_null(value: Any) -> bool:
    """None, NaN, pandas NA/NaT: a row with a null in a used field is not sent."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        return False
    if value is pd.NA or value is pd.NaT:
        return True
    try:
        return bool(pd.isna(value)) if not isinstance(value, (str, bytes, list, dict, tuple)) else False
    except (TypeError, ValueError):
        return False
