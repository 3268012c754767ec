"""Cache keys: one per row, independent of batching.

A key hashes everything that decides the answer: the model, the generation
parameters, the system prompt, the output format, the template, and the row's
values for the template's fields. It does not hash the batch size, the row's
position, or the other rows, so changing ``batch_size``, sorting the frame or
adding rows reuses every answer already paid for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["KEY_VERSION", "call_prefix", "row_keys"]

# Bump when the meaning of a key changes, so old cache entries stop matching.
KEY_VERSION = "1"


def call_prefix(
    *,
    model: str,
    template: str,
    system: str | None,
    params: Mapping[str, Any] | None,
    output_format: str = "text",
) -> bytes:
    """The part of every key that is shared by all rows of one call."""
    spec = {
        "v": KEY_VERSION,
        "model": model,
        "template": template,
        "system": system,
        # Sorted and JSON-encoded so {"temperature": 0, "seed": 1} in any order hashes the same.
        "params": {k: params[k] for k in sorted(params)} if params else {},
        "output": output_format,
    }
    return hashlib.blake2b(
        json.dumps(spec, sort_keys=True, default=str, ensure_ascii=False).encode(), digest_size=16
    ).digest()


def row_keys(prefix: bytes, columns: Sequence[Sequence[str | None]]) -> list[str | None]:
    """One 32-hex-digit key per row; ``None`` where a field is null (such rows are never sent).

    ``columns`` holds the rendered values of each template field, in field order.
    Values are length-prefixed so ("ab", "c") and ("a", "bc") never collide.
    """
    base = hashlib.blake2b(prefix, digest_size=16)
    keys: list[str | None] = []
    append = keys.append
    if len(columns) == 1:
        # The common case, kept lean: a million keys per second matters for cached re-runs.
        for v in columns[0]:
            if v is None:
                append(None)
                continue
            b = v.encode()
            h = base.copy()
            h.update(len(b).to_bytes(8, "little") + b)
            append(h.hexdigest())
        return keys
    for values in zip(*columns, strict=True):
        if None in values:
            append(None)
            continue
        h = base.copy()
        for v in values:
            b = v.encode()  # type: ignore[union-attr]
            h.update(len(b).to_bytes(8, "little") + b)
        append(h.hexdigest())
    return keys
