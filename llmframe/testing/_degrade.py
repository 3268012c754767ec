"""The degrading model: packed answers that go wrong as batches grow.

Real models, small ones most, answer worse when many rows share one request: a
0.5B model asked for the capital of a country went from 68% correct one row per
request to 5% at ten rows per request. Such answers are *valid*: every id is
there, every value has the asked type, so nothing in the packed-answer checks can
catch them; only comparing with the one-row answers (``llmframe.calibrate``)
does. The fake server's ``degrade=`` setting imitates this, so calibration is
testable offline. Two behaviours, which combine:

**Errors rising with batch size.** In a packed request of ``n`` items, each
item's answer is replaced by a wrong one with probability::

    p(n) = min(1, error_per_item * max(0, n - start))

so ``start`` is the largest batch answered without errors and each item beyond
it adds ``error_per_item``. ``Degrade(error_per_item=0.02, start=10)`` gives
p(5) = p(10) = 0, p(20) = 0.2, p(50) = 0.8. A wrong answer is a different,
deterministic string of the same shape (:func:`wrong_answer`); a wrong
structured answer is the item's schema filled from another seed, a valid value
that is not the right one.

**Shift.** With ``shift_after=k``, a packed request of more than ``k`` items
answers the item at 0-based position ``i >= k`` with the answer of the item at
``i - 1``: the model repeated one answer and then ran one row behind, the
damaging kind of mistake, because every id is present and every answer
belongs to *some* row. In a request of ``n > k`` items, ``n - k`` items get a
wrong answer.

Errors are drawn first, then the shift moves the (possibly wrong) answers.
One-row requests are never degraded: they are the model at its best.

**Deterministic.** Whether an item goes wrong is not a random draw per request
but a hash of ``(seed, the item's rendered prompt)`` mapped to ``u`` in
``[0, 1)``; the item is wrong when ``u < p(n)``. So the outcome does not depend
on arrival order or concurrency, a retry of the same request gets the same
answers (a model at temperature 0), and since ``p`` never decreases with
``n``, a row that goes wrong at one batch size goes wrong at every larger one:
agreement with the one-row answers falls monotonically, and a test knows where
it crosses a threshold.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Degrade", "degrade_answers", "wrong_answer"]


def _unit(seed: int, prompt: str) -> float:
    """A deterministic number in [0, 1) for ``(seed, prompt)``."""
    digest = hashlib.blake2b(
        f"{seed}\0{prompt}".encode("utf-8", "surrogatepass"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def wrong_answer(prompt: str, right: str) -> str:
    """The degrading model's wrong answer to ``prompt``: deterministic, never ``right``.

    Same form as the default answers (``"a"`` and seven hex digits), so it
    looks like an answer to a check that only sees the shape.
    """
    digest = hashlib.blake2b(
        f"degraded:{prompt}".encode("utf-8", "surrogatepass"), digest_size=4
    ).hexdigest()
    wrong = "a" + digest[:7]
    return wrong if wrong != right else wrong[:-1] + ("0" if wrong[-1] != "0" else "1")


@dataclass(frozen=True)
class Degrade:
    """How answer quality falls with the number of items in a packed request.

    Example::

        >>> from llmframe.testing import Degrade
        >>> d = Degrade(error_per_item=0.02, start=10)
        >>> [d.error_rate(n) for n in (1, 10, 20, 50, 100)]
        [0.0, 0.0, 0.2, 0.8, 1.0]

    - ``error_per_item``: how much the chance of a wrong answer rises per item
      beyond ``start`` (see the module docstring for the formula).
    - ``start``: the largest packed request answered without errors.
    - ``shift_after``: ``None``, or ``k >= 1``: in requests of more than ``k``
      items, the item at 0-based position ``i >= k`` gets the answer of item ``i - 1``.
    - ``seed``: picks which rows go wrong (a hash of the seed and the prompt, not
      a random draw per request; the server's own ``seed`` does not affect it).
    """

    error_per_item: float = 0.01
    start: int = 5
    shift_after: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        e = self.error_per_item
        if not (isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e)):
            raise ValueError(f"Degrade.error_per_item must be a number in [0, 1], got {e!r}")
        if not 0.0 <= e <= 1.0:
            raise ValueError(f"Degrade.error_per_item must be a number in [0, 1], got {e!r}")
        if not _is_int(self.start) or self.start < 0:
            raise ValueError(f"Degrade.start must be an int >= 0, got {self.start!r}")
        k = self.shift_after
        if k is not None and (not _is_int(k) or k < 1):
            raise ValueError(f"Degrade.shift_after must be None or an int >= 1, got {k!r}")
        if not _is_int(self.seed):
            raise ValueError(f"Degrade.seed must be an int, got {self.seed!r}")

    @classmethod
    def coerce(cls, value: Degrade | dict[str, Any] | None) -> Degrade | None:
        """Accept a :class:`Degrade`, a dict of its fields, or ``None`` (answers never degrade)."""
        if value is None or isinstance(value, Degrade):
            return value
        if isinstance(value, dict):
            return cls(**value)
        raise TypeError(f"degrade must be a Degrade, a dict or None, got {type(value).__name__}")

    def error_rate(self, n_items: int) -> float:
        """``p(n)``: the chance that one item of a packed request of ``n_items`` goes wrong."""
        if n_items <= 1:
            return 0.0
        return min(1.0, self.error_per_item * max(0, n_items - self.start))

    def is_wrong(self, prompt: str, n_items: int) -> bool:
        """Whether the error curve makes this prompt's answer wrong in a request of ``n_items``."""
        rate = self.error_rate(n_items)
        return rate > 0.0 and _unit(self.seed, prompt) < rate


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def degrade_answers(
    degrade: Degrade,
    prompts: Sequence[str],
    answers: Sequence[Any],
    n_items: int,
    wrong: Callable[[str, Any], Any] = wrong_answer,
) -> list[Any]:
    """The answers of one packed request after degradation, in request order.

    ``prompts[i]`` is item ``i``'s rendered prompt and ``answers[i]`` its right
    answer (text, or any JSON value of a structured answer); ``n_items`` is how
    many items the request carried; ``wrong(prompt, right)`` makes a wrong answer.
    """
    out = [
        wrong(prompt, right) if degrade.is_wrong(prompt, n_items) else right
        for prompt, right in zip(prompts, answers, strict=True)
    ]
    k = degrade.shift_after
    if k is not None and n_items > k and len(out) > k:
        out = out[:k] + out[k - 1 : -1]
    return out
