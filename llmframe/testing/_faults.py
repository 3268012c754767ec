"""Fault injection for the fake server: what can go wrong, and how often.

Every rate is a probability between 0 and 1, drawn afresh for every attempt
from the server's ``random.Random(seed)``. A fault is never a function of the
request body, because a retry of the very same body must be able to succeed,
as it does against a real endpoint.

Two families:

- **Transport faults** hit any chat request: ``error_rate`` (a 500, 502 or
  503 with an error body), ``hang_rate`` (the server sleeps ``hang_seconds``
  before answering, so the client times out first) and ``garbage_rate`` (a 200
  whose body is not JSON). One draw picks at most one of them, so each happens
  at exactly its own rate; their sum must not exceed 1.
- **Packing faults** damage the JSON answer of a packed request, each drawn on
  its own so that they can combine: ``drop_rate`` (one id missing),
  ``duplicate_rate`` (one id key twice, with two different answers),
  ``shuffle_rate`` (two ids swap answers: every key is right, two values are
  wrong), ``wrong_id_rate`` (an id that was not asked for), ``truncate_rate``
  (the JSON cut off, ``finish_reason="length"``) and ``prose_rate`` (the JSON
  wrapped in a sentence and a Markdown code fence). Two more damage only
  *structured* packed answers (a request with an item schema; text-packed
  requests never draw them): ``wrong_type_rate`` (one random item gets one
  top-level field, or itself if it is not an object, replaced by a value of a
  type the schema does not admit: a number becomes ``"n/a"``, a string
  ``12345``, a boolean ``"maybe"``, an array ``"x"``, an object ``7``, a null
  the wrong type for its non-null branch) and ``bad_enum_rate`` (one random
  item's first enum field, or the item itself if it is a label, becomes
  ``"not_a_label"``; not applied, nor counted, when the item has no enum).
  The values these put in are the only damage: every id is still there once.
  ``wrong_type_items`` gives *each* item of a structured packed reply, on its own,
  that chance of a wrong type: at 1.0 a model that breaks the schema whenever it
  packs, and follows it alone (a small local model's nested objects flattened).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["PACKING_FAULTS", "STRUCTURED_FAULTS", "Faults"]

#: The packing fault kinds, in the order the server applies them. The two that change
#: values come first, so that each damages an answer that was asked for.
PACKING_FAULTS = (
    "wrong_type",
    "bad_enum",
    "shuffle",
    "drop",
    "wrong_id",
    "duplicate",
    "prose",
    "truncate",
)

#: The packing faults that only structured answers (with an item schema) can have.
STRUCTURED_FAULTS = ("wrong_type", "bad_enum")


@dataclass(frozen=True)
class Faults:
    """How often each kind of fault happens (probabilities per attempt, 0..1).

    Example::

        >>> from llmframe.testing import Faults
        >>> Faults(error_rate=0.1, shuffle_rate=0.02).error_rate
        0.1
    """

    error_rate: float = 0.0
    hang_rate: float = 0.0
    garbage_rate: float = 0.0
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    shuffle_rate: float = 0.0
    wrong_id_rate: float = 0.0
    truncate_rate: float = 0.0
    prose_rate: float = 0.0
    wrong_type_rate: float = 0.0
    bad_enum_rate: float = 0.0
    wrong_type_items: float = 0.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"Faults.{field.name} must be a probability in [0, 1], got {value!r}"
                )
        transport = self.error_rate + self.hang_rate + self.garbage_rate
        if transport > 1.0 + 1e-9:
            raise ValueError(
                "Faults: error_rate + hang_rate + garbage_rate must not exceed 1 "
                f"(one draw picks at most one of them), got {transport:g}"
            )

    @classmethod
    def coerce(cls, value: Faults | dict[str, Any] | None) -> Faults:
        """Accept a :class:`Faults`, a dict of its fields, or ``None`` (no faults)."""
        if value is None:
            return cls()
        if isinstance(value, Faults):
            return value
        if isinstance(value, dict):
            return cls(**value)
        raise TypeError(f"faults must be a Faults, a dict or None, got {type(value).__name__}")

    def packing_rate(self, kind: str) -> float:
        """The rate of one of the :data:`PACKING_FAULTS`."""
        return float(getattr(self, f"{kind}_rate"))
