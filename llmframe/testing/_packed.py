"""The answer to a packed request: every item's answer, degraded, then damaged by faults.

Each item of a :class:`~llmframe.testing._model.PackedRequest` is answered as
the one-row request of its rendered prompt would be: with the text answer
``answer_fn(prompt)`` when the request is text-packed, with the filled item
schema (:class:`~llmframe.testing._structured.ItemSchema`) when it carries one.
A template field missing from an item (or a template that does not render)
gets a guess: ``"?"``, or the schema's value with ``"?"`` for the text answer.
The reply is the compact JSON object ``{"0": ..., "1": ...}``, or for a request
in the lines style one line per item, ``id answer``: as the instructions ask, an
answer with a line break (or a leading quote) goes as a JSON string, unless
``answer_fn`` returns it as a :class:`RawAnswer`, which is written as it is, line
breaks and all, as a real model may write it.

The degrading model of :mod:`llmframe.testing._degrade` (wrong answers that
grow more likely with the number of items, a shift by one row) is applied
first, to the answers; a wrong structured answer is the item schema filled
from another seed (a valid value, only not the right one). The packing faults
of :mod:`llmframe.testing._faults` then damage the list of ``(id, answer)``
pairs and the JSON text.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from llmframe.testing._degrade import Degrade, degrade_answers, wrong_answer
from llmframe.testing._faults import PACKING_FAULTS, STRUCTURED_FAULTS, Faults
from llmframe.testing._model import (
    UNKNOWN_ANSWER,
    AnswerFn,
    PackedRequest,
    expected_answer,
    render_item,
)
from llmframe.testing._structured import ItemSchema, dumps

__all__ = ["RawAnswer", "answer_packed"]


def _dumps(pairs: Sequence[tuple[str, Any]]) -> str:
    # Built by hand rather than from a dict so that a duplicate key can be written.
    return "{" + ",".join(f"{dumps(key)}:{dumps(value)}" for key, value in pairs) + "}"


class RawAnswer(str):
    """An answer that the fake model writes in id lines as it is, never as a JSON string
    (a model that ignores the instruction to keep an answer on its line)."""

    __slots__ = ()


def _lines(pairs: Sequence[tuple[str, Any]]) -> str:
    # An answer that would not stay on its line goes as a JSON string, as items do.
    def one(value: Any) -> str:
        if isinstance(value, RawAnswer):
            return str(value)
        text = value if isinstance(value, str) else dumps(value)
        return dumps(text) if "\n" in text or "\r" in text or text.startswith('"') else text

    return "\n".join(f"{key} {one(value)}" for key, value in pairs)


def answer_packed(
    packed: PackedRequest,
    answer_fn: AnswerFn,
    faults: Faults,
    rng: random.Random,
    degrade: Degrade | None = None,
    item: ItemSchema | None = None,
) -> tuple[str, list[str], int]:
    """The JSON answer text of a packed request, the packing faults applied to it, and
    how many items the degrading model answered wrong (0 without ``degrade``).

    ``item`` is the request's item schema; ``None`` answers every item with text."""
    pairs: list[tuple[str, Any]] = []
    prompts: dict[str, str] = {}
    for item_id, fields in packed.items:
        key = str(item_id)
        if key in prompts:  # a repeated id in the request is answered once
            continue
        rendered = render_item(packed.template, fields)
        prompts[key] = rendered if rendered is not None else ""
        if item is not None:
            pairs.append((key, item.answer(rendered, answer_fn)))
        else:
            pairs.append((key, answer_fn(rendered) if rendered is not None else UNKNOWN_ANSWER))

    degraded = 0
    if degrade is not None and pairs:
        right = [value for _, value in pairs]
        answers = degrade_answers(
            degrade,
            [prompts[key] for key, _ in pairs],
            right,
            len(packed.items),
            wrong_answer if item is None else item.degraded,
        )
        degraded = sum(a != r for a, r in zip(answers, right, strict=True))
        pairs = [(key, answer) for (key, _), answer in zip(pairs, answers, strict=True)]

    applied: list[str] = []
    if item is not None and faults.wrong_type_items > 0.0:  # each item on its own
        for index in range(len(pairs)):
            one = pairs[index : index + 1]
            if rng.random() < faults.wrong_type_items and item.wrong_type(one, rng):
                pairs[index] = one[0]
                if "wrong_type" not in applied:
                    applied.append("wrong_type")
    for kind in PACKING_FAULTS:
        rate = faults.packing_rate(kind)
        if rate <= 0.0 or (item is None and kind in STRUCTURED_FAULTS) or rng.random() >= rate:
            continue
        if kind == "wrong_type":
            if item is None or not item.wrong_type(pairs, rng):
                continue
        elif kind == "bad_enum":
            if item is None or not item.bad_enum(pairs, rng):
                continue
        elif kind == "shuffle":
            if not pairs:
                continue
            # Only a swap of two different answers is a visible fault. If no answer
            # differs from the one at i, all answers are equal and none can be swapped.
            i = rng.randrange(len(pairs))
            others = [j for j, (_, value) in enumerate(pairs) if value != pairs[i][1]]
            if not others:
                continue
            j = rng.choice(others)
            (key_i, value_i), (key_j, value_j) = pairs[i], pairs[j]
            pairs[i], pairs[j] = (key_i, value_j), (key_j, value_i)
        elif kind == "drop":
            if not pairs:
                continue
            del pairs[rng.randrange(len(pairs))]
        elif kind == "wrong_id":
            asked = {key for key, _ in pairs} | set(prompts)
            new_id = max((item_id for item_id, _ in packed.items), default=-1) + 1
            while str(new_id) in asked:
                new_id += 1
            seed = f"wrong:{new_id}"
            value = expected_answer(seed) if item is None else item.answer(seed, expected_answer)
            pairs.insert(rng.randrange(len(pairs) + 1), (str(new_id), value))
        elif kind == "duplicate":
            if not pairs:
                continue
            index = rng.randrange(len(pairs))
            key, value = pairs[index]
            seed = f"duplicate:{prompts.get(key, key)}"
            if item is None:
                other = expected_answer(seed)
                if other == value:
                    other += "x"
            else:
                other = item.different(seed, value)
            pairs.insert(rng.randrange(index + 1, len(pairs) + 1), (key, other))
        # "prose" and "truncate" change the text, below.
        if kind not in applied:  # wrong_type_items may have put it there
            applied.append(kind)

    lines = packed.style == "lines"
    text = _lines(pairs) if lines else _dumps(pairs)
    if "prose" in applied:
        fence = "" if lines else "json"
        text = f"Here are the answers:\n\n```{fence}\n{text}\n```\n\nLet me know if you need anything else."
    if "truncate" in applied:
        # Any proper prefix of a JSON object is invalid JSON: its closing brace comes last.
        # A prefix of lines may read as fewer answers: the finish_reason says it was cut.
        start, end = (0, len(text)) if lines else (text.find("{") + 1, text.rfind("}"))
        text = text[: rng.randrange(start, end) if end > start else start]
    return text, applied, degraded
