"""The plan of a run, decided before its first request: whether it packs, how it
checks packing (:mod:`._check`), the canaries it carries, and the constants of
``batch_size=None``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._canaries import Canaries
from ._check import PackingCheck
from ._warn import warn_user

__all__ = [
    "AUTO_BATCH_ITEMS", "AUTO_CANARY_EVERY", "AUTO_CHECK_ROWS", "AUTO_CHECK_ROWS_MIN", "AUTO_CHECK_SIZES",
    "AUTO_MIN_AGREEMENT", "CHECK_ROWS_PER", "REMEMBERED_WARMUP_ROWS", "SMALL_FRAME_ROWS", "Choice", "PackingPlan",
    "batch_cap", "check_rows", "plan",
]  # fmt: skip

#: Items per request when ``batch_size=None``. Published results show answer
#: quality slipping past a few dozen items per prompt; 20 keeps RPM-bound runs
#: ~20x faster than one row per request while staying well short of that.
AUTO_BATCH_ITEMS = 20

#: The check of ``batch_size=None``: rows answered alone first (one per
#: CHECK_ROWS_PER rows to send, from AUTO_CHECK_ROWS_MIN to AUTO_CHECK_ROWS: on an
#: RPM-bound run of 1,000 rows, 20 one-row requests would add 40% to the 50 packed
#: ones), the packed sizes tried on them after the cap (largest first), and the share
#: of them that must agree.
AUTO_CHECK_ROWS = 20
AUTO_CHECK_ROWS_MIN = 10
CHECK_ROWS_PER = 100
AUTO_CHECK_SIZES = (5,)
AUTO_MIN_AGREEMENT = 0.95
#: Runs with at most this many rows to send go one row per request: the check would
#: cost as much as packing saves.
SMALL_FRAME_ROWS = 2 * AUTO_CHECK_ROWS
#: With ``canaries=None`` while packing, one canary rides on every AUTO_CANARY_EVERY-th
#: packed request: about 1% more tokens at 20 rows per request.
AUTO_CANARY_EVERY = 4
#: Rows answered alone to seed canaries when a stored verdict skips the check.
REMEMBERED_WARMUP_ROWS = 4


@dataclass(frozen=True)
class Choice:
    """How a ``batch_size=None`` run sends its rows (:mod:`._economy`): ``style`` ``None`` is one
    row per request; ``sizes`` those worth checking (packing is not dearer there); ``note`` why."""

    style: str | None
    sizes: list[int]
    note: str


@dataclass
class PackingPlan:
    """How a run packs, decided before its first request."""

    cap: int
    reason: str
    check: PackingCheck | None = None
    canaries: Canaries | None = None
    fixed_size: int | None = None  # the size after the warm-up, whatever the check says
    warn: bool = False  # say the reason once: the run will not pack, and may surprise
    style: str = "json"  # the packed format (:mod:`._packing`): "json" or "lines"
    note: str = ""  # why packed rather than one row per request: the per-row estimates


def plan(
    *,
    cap: int,
    batch_size: int | str | None,
    canaries: int | None,
    rows_to_send: int,
    verdict: Any = None,
    why_one: str = "",
    economy: Callable[[Sequence[int]], Choice] | None = None,
    style: str = "json",
) -> PackingPlan:
    """Whether and how a run packs: the check, canaries and the reason it will give.

    ``cap`` is the largest batch allowed (1: never pack, for ``why_one``); ``verdict``
    a stored one for this endpoint and task (``{"batch_size", "reason"}``) or ``None``;
    ``economy`` tells, for the sizes the check would try, whether packing is dearer than
    one row per request (then it does not pack) and in which style it is not; ``style``
    is how a run with an explicit ``batch_size`` packs.
    """
    if cap <= 1:
        return PackingPlan(1, "one row per request" + (why_one and f": {why_one}"))
    if batch_size is not None:  # an int the user chose: no check
        reason = f"packed up to {cap} rows per request, as batch_size= says"
        if not canaries:
            return PackingPlan(cap, reason, style=style)
        warmup = PackingCheck(max(4, 2 * canaries), (), AUTO_MIN_AGREEMENT, ahead=cap)
        return PackingPlan(cap, reason, warmup, Canaries(canaries), fixed_size=cap, style=style)
    if rows_to_send <= SMALL_FRAME_ROWS:
        return PackingPlan(1, f"one row per request: {rows_to_send} rows to send, too few to "
                              f"check packing on (the check runs from {SMALL_FRAME_ROWS + 1} rows)")  # fmt: skip
    watch = Canaries(1, AUTO_CANARY_EVERY) if canaries is None else Canaries(canaries)
    sizes = sorted({s for s in AUTO_CHECK_SIZES if s < cap} | {cap}, reverse=True)
    note = ""
    if economy is not None:
        choice = economy(sizes)
        if choice.style is None:
            return PackingPlan(1, choice.note)
        style, sizes, note = choice.style, choice.sizes, choice.note
    size = verdict.get("batch_size") if isinstance(verdict, dict) else None
    if isinstance(size, int) and size > 1 and verdict.get("style", "json") != style:
        size = None  # it packed well in another format: this one is checked afresh
    if isinstance(size, int) and size >= 1:
        reason = f"{verdict.get('reason', '')} (checked in an earlier run on this endpoint)"
        if size == 1:
            return PackingPlan(1, reason, warn=True)
        reason = f"{reason}; {note}" if note else reason
        if not watch.wanted:
            return PackingPlan(min(cap, size), reason, style=style)
        warmup = PackingCheck(REMEMBERED_WARMUP_ROWS, (), AUTO_MIN_AGREEMENT, ahead=min(cap, size))
        return PackingPlan(cap, reason, warmup, watch, fixed_size=size, style=style)
    check = PackingCheck(check_rows(rows_to_send), sizes, AUTO_MIN_AGREEMENT)
    return PackingPlan(cap, "", check, watch, style=style, note=note)


def check_rows(rows_to_send: int) -> int:
    """How many rows the packing check answers alone first, for a run of this size."""
    return max(AUTO_CHECK_ROWS_MIN, min(AUTO_CHECK_ROWS, rows_to_send // CHECK_ROWS_PER))


def batch_cap(batch_size: int | str | None, fields: Sequence[str]) -> int:
    """The most rows a request may carry: ``batch_size`` when it is an int, else
    AUTO_BATCH_ITEMS; 1 when the template uses a field named ``id``."""
    if "id" in fields:
        warn_user(
            "llmframe: the template uses a field named 'id', which packed requests use for "
            "their own row ids; sending one row per request. Rename the column to pack."
        )
        return 1
    return batch_size if isinstance(batch_size, int) else AUTO_BATCH_ITEMS
