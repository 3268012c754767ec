"""Whether a packed answer says what the one-row answer said.

Packing is trusted only where its answers agree with the same rows answered one
per request (the packing check, canaries, :func:`llmframe.calibrate`). "Agree"
must work for three kinds of answer:

- **short answers** (labels, names, numbers: five words or fewer): equal after
  :func:`~llmframe._parse.normalize`, or nothing. "Paris" vs "paris." agree;
  "India" vs "New Delhi" do not.
- **JSON objects** (structured outputs): the share of fields, over both
  objects' keys, whose values agree.
- **free text** (summaries, explanations): two faithful answers to the same row
  rarely match word for word, least of all at ``temperature > 0``, so equality
  would refuse packing for every such task. What packing gets wrong is *which
  row* an answer belongs to, so a long answer agrees when it shares enough
  words with its own row's one-row answer (token F1 at least ``SAME_TEXT``), or
  at least ``ON_TOPIC`` and more than with any other row's one-row answer.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ._parse import normalize

__all__ = ["agreement", "answer_agreement", "field_agreement", "token_f1"]

#: Answers of at most this many words are compared for equality, never fuzzily.
SHORT_WORDS = 5
#: Token F1 at which two long answers say the same thing, whatever the others say.
SAME_TEXT = 0.6
#: Token F1 below which a long answer is not about its row's one-row answer at all.
ON_TOPIC = 0.2

_WORD = re.compile(r"\w+", re.UNICODE)


def _json_object(text: str) -> dict[str, Any] | None:
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _field_value(value: Any) -> str:
    if isinstance(value, str):
        return normalize(value)
    return normalize(json.dumps(value, sort_keys=True, ensure_ascii=False))


def _same_field(a: Any, b: Any) -> bool:
    """Two values of one field agree: equal, or for two long texts, the same words mostly."""
    if (a is None) != (b is None):  # a null (not known) is not the text "null"
        return False
    if _field_value(a) == _field_value(b):
        return True
    if isinstance(a, str) and isinstance(b, str) and min(len(_words(a)), len(_words(b))) > SHORT_WORDS:
        return token_f1(a, b) >= SAME_TEXT
    return False


def field_agreement(references: Sequence[str | None], answers: Sequence[str | None]) -> dict[str, float]:
    """For JSON object answers: each field's share of compared rows whose values agree
    (rows without both answers left out), so a report can say which fields disagree.

    >>> field_agreement(['{"a": 1, "b": "x"}', '{"a": 2, "b": "y"}'], ['{"a": 1, "b": "x"}', '{"a": 2, "b": "z"}'])
    {'a': 1.0, 'b': 0.5}
    """
    same: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    for reference, answer in zip(references, answers, strict=True):
        ref = _json_object(reference) if reference is not None else None
        ans = _json_object(answer) if answer is not None else None
        if ref is None or ans is None:
            continue
        for key in list(ref) + [k for k in ans if k not in ref]:
            seen[key] += 1
            same[key] += key in ref and key in ans and _same_field(ref[key], ans[key])
    return {key: same[key] / seen[key] for key in seen}


def _words(text: str) -> list[str]:
    return _WORD.findall(normalize(text))


def token_f1(a: str, b: str) -> float:
    """Bag-of-words F1 between two texts (after :func:`normalize`), from 0 to 1.

    >>> token_f1("the cat sat", "The cat sat.")
    1.0
    >>> round(token_f1("the cat sat", "a dog sat"), 2)
    0.33
    """
    wa, wb = Counter(_words(a)), Counter(_words(b))
    common = sum((wa & wb).values())
    if not common:
        return 0.0
    precision, recall = common / sum(wb.values()), common / sum(wa.values())
    return 2 * precision * recall / (precision + recall)


def answer_agreement(reference: str, answer: str, others: Sequence[str] = ()) -> float:
    """How far ``answer`` agrees with ``reference`` (this row's one-row answer), from 0 to 1.

    ``others`` are other rows' one-row answers: a long answer closer to one of
    them than to its own row's is a misplaced answer.

    >>> answer_agreement("Paris", "paris.")
    1.0
    >>> answer_agreement('{"city": "Paris", "country": "FR"}', '{"city": "paris", "country": "DE"}')
    0.5
    >>> answer_agreement("Paris", "Lyon")
    0.0
    """
    ref, ans = _json_object(reference), _json_object(answer)
    if ref is not None and ans is not None:
        keys = set(ref) | set(ans)
        if not keys:
            return 1.0
        same = sum(1 for k in keys if k in ref and k in ans and _same_field(ref[k], ans[k]))
        return same / len(keys)
    if normalize(reference) == normalize(answer):
        return 1.0
    if len(_words(reference)) <= SHORT_WORDS or len(_words(answer)) <= SHORT_WORDS:
        return 0.0
    own = token_f1(reference, answer)
    if own >= SAME_TEXT:
        return 1.0
    if own < ON_TOPIC:
        return 0.0
    closest_other = max((token_f1(o, answer) for o in others if o != reference), default=0.0)
    return 1.0 if own > closest_other else 0.0


def agreement(
    references: Sequence[str | None], answers: Sequence[str | None]
) -> tuple[float | None, int]:
    """Mean agreement over the rows that have a reference, and how many those are.

    A row without a packed answer (it failed) counts as disagreeing; every
    reference is an "other" for the rest.
    """
    pool = [r for r in references if r is not None]
    scores = [
        0.0 if ans is None else answer_agreement(ref, ans, pool)
        for ref, ans in zip(references, answers, strict=True)
        if ref is not None
    ]
    return (sum(scores) / len(scores) if scores else None), len(scores)
