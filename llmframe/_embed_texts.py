"""What each row embeds: its text, its cache key, and whether it fits the per-input limit.

The text is the template rendered with the row's values (a bare column name
is the template ``{name}``), through the same :class:`~llmframe._template.Template`
and :func:`~llmframe._frames.rendered_columns` as ``apply``; a null in a field
makes the row null (no text, no key, no request). The key is blake2b-128 of a
prefix naming the record kind, the model and the dimensions, then the text
(:func:`~llmframe._keys.row_digests`), so equal texts share one key whatever
template made them, and a new model or ``dimensions=`` never reuses a vector.

A text over ``max_input_tokens`` fails alone, or with ``truncate=True`` is cut
to the limit and keyed as cut (the key names what was embedded). Only texts
that could be over are counted: a token is at least one UTF-8 byte and a
character at most four, so a text of at most ``limit / 4`` characters fits.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ._errors import RowError
from ._keys import KEY_VERSION, row_digests
from ._template import Template
from ._tokens import Tokenizer

__all__ = ["EmbedTexts", "cut_to_tokens", "embed_prefix", "embed_texts", "render_texts"]


def embed_prefix(model: str, dimensions: int | None) -> bytes:
    """The part of every embedding key shared by one call: kind, model, dimensions."""
    spec = {"v": KEY_VERSION, "kind": "embedding", "model": model, "dimensions": dimensions}
    return hashlib.blake2b(json.dumps(spec, sort_keys=True).encode(), digest_size=16).digest()


def render_texts(template: Template, columns: Mapping[str, Sequence[str | None]], n_rows: int) -> list[str | None]:
    """Each row's text (``None`` where a field is null)."""
    fields = template.fields
    if template.text == "{" + fields[0] + "}":  # a bare column: its values are the texts
        return list(columns[fields[0]][:])
    values = [columns[f][:] for f in fields]
    out: list[str | None] = []
    render = template.render
    for row in zip(*values, strict=True):
        out.append(None if None in row else render(dict(zip(fields, row, strict=True))))  # type: ignore[arg-type]
    assert len(out) == n_rows
    return out


def cut_to_tokens(text: str, limit: int, tokenizer: Tokenizer) -> str:
    """The longest prefix of ``text`` of at most ``limit`` tokens (binary search on
    characters, so any tokenizer that counts will do)."""
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tokenizer.count(text[:mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


@dataclass
class EmbedTexts:
    """The rows of one call, ready to look up: ``digests`` holds 16 bytes a row."""

    texts: list[str | None]
    digests: bytes
    skipped: set[int]  # rows without a key: a null field, or an input too long
    errors: list[RowError] = field(default_factory=list)
    truncated: int = 0  # rows cut to the limit (truncate=True)


def embed_texts(
    texts: list[str | None], prefix: bytes, *, limit: int, truncate: bool, tokenizer: Tokenizer,
) -> EmbedTexts:  # fmt: skip
    """Key every row; handle the texts over ``limit`` tokens as the module docstring says."""
    errors: list[RowError] = []
    cut = 0
    could_be_over = limit // 4
    # One pass in C over the lengths; the rows are visited only when a text could be over.
    longest = max(map(len, filter(None, texts)), default=0)
    for row, text in enumerate(texts) if longest > could_be_over else ():
        if text is None or len(text) <= could_be_over:
            continue
        tokens = tokenizer.count(text)
        if tokens <= limit:
            continue
        if truncate:
            texts[row] = cut_to_tokens(text, limit, tokenizer)
            cut += 1
        else:
            texts[row] = None
            errors.append(RowError(row, "too_large", f"the text has ~{tokens} tokens, more than the "
                                   f"{limit} an input may have; shorten it, or pass truncate=True"))  # fmt: skip
    digests, nulls = row_digests(prefix, [texts])
    return EmbedTexts(texts, digests, set(nulls), errors, cut)
