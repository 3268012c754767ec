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

__all__ = ["KEY_VERSION", "call_prefix", "output_spec", "row_digests", "row_keys"]

# Bump when the meaning of a key changes, so old cache entries stop matching.
KEY_VERSION = "1"
# What a row with a null field gets in place of a key in row_digests' output.
_NO_KEY = bytes(16)


def call_prefix(
    *,
    model: str,
    template: str,
    system: str | None,
    params: Mapping[str, Any] | None,
    output: Any = "text",
) -> bytes:
    """The part of every key that is shared by all rows of one call.

    ``output`` is what an answer is: ``"text"``, or :func:`output_spec` of a schema.
    """
    spec = {
        "v": KEY_VERSION,
        "model": model,
        "template": template,
        "system": system,
        # Sorted and JSON-encoded so {"temperature": 0, "seed": 1} in any order hashes the same.
        "params": {k: params[k] for k in sorted(params)} if params else {},
        "output": output,  # "text" for one text answer per row, as keys always had
    }
    return hashlib.blake2b(
        json.dumps(spec, sort_keys=True, default=str, ensure_ascii=False).encode(), digest_size=16
    ).digest()


def output_spec(schema: Any) -> Any:
    """What decides an answer's form, for the key: ``"text"``, or the schema's canonical hash."""
    return "text" if schema is None else {"schema": schema.hash}


def row_digests(prefix: bytes, columns: Sequence[Sequence[str | None]]) -> tuple[bytes, list[int]]:
    """Each row's key in binary: 16 bytes a row, concatenated (``bytes.fromhex(key)``),
    and the positions of the rows with a null field, whose 16 bytes are zeros (they have no key).

    ``columns`` holds the rendered values of each template field, in field order.
    Values are length-prefixed so ("ab", "c") and ("a", "bc") never collide. This is
    the form a cached re-run uses: 16 bytes a row instead of a 32-character string
    object (about 80 bytes) each.

    >>> digests, nulls = row_digests(call_prefix(model="m", template="{a}", system=None,
    ...                                          params=None), [["x", None]])
    >>> len(digests), nulls
    (32, [1])
    """
    base = hashlib.blake2b(prefix, digest_size=16)
    copy = base.copy
    out = bytearray()
    extend = out.extend
    nulls: list[int] = []
    if len(columns) == 1:
        # The common case, kept lean: a million keys per second matters for cached re-runs.
        for v in columns[0]:
            if v is None:
                nulls.append(len(out) >> 4)
                extend(_NO_KEY)
                continue
            b = v.encode()
            h = copy()
            h.update(len(b).to_bytes(8, "little") + b)
            extend(h.digest())
        return bytes(out), nulls
    for values in zip(*columns, strict=True):
        if None in values:
            nulls.append(len(out) >> 4)
            extend(_NO_KEY)
            continue
        h = copy()
        for v in values:
            b = v.encode()  # type: ignore[union-attr]
            h.update(len(b).to_bytes(8, "little") + b)
        extend(h.digest())
    return bytes(out), nulls


def row_keys(prefix: bytes, columns: Sequence[Sequence[str | None]]) -> list[str | None]:
    """One 32-hex-digit key per row; ``None`` where a field is null (such rows are never sent).

    ``columns`` holds the rendered values of each template field, in field order;
    the key is the hex form of the row's :func:`row_digests` entry.
    """
    digests, nulls = row_digests(prefix, columns)
    text = digests.hex()
    keys: list[str | None] = [text[i : i + 32] for i in range(0, len(text), 32)]
    for row in nulls:
        keys[row] = None
    return keys
