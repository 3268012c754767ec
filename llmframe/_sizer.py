"""The batch size during a run: it halves when packed replies keep failing, and only
when smaller batches measurably fail less; it doubles back once they stop failing.

The signal is a moving average of the share of rows each packed reply got
wrong, not a streak of imperfect replies: one dropped row in twenty costs a
one-row resend, while halving the batch size would double the requests of the
rest of the run. And shrinking only pays when failures depend on size (a model
that loses track in long batches); resent rows go in half-size batches, so the
failure rate there is measured for free, and when it is as bad as at full size
(an endpoint that fails at random) the batch size stays.

A shrink is not forever: failures can be a passing spell (an overloaded
replica, a burst of odd rows). Once the moving average stays under
``GROW_BELOW`` for ``GROW_AFTER_ROWS`` rows, the size doubles back, up to the
size the run started with. A size that fails again after growing waits twice
as long before the next try, so a model that really cannot pack that many
rows costs a few resends, not a saw-tooth for the rest of the run.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["BatchSizer"]

#: The batch size halves when the moving average (weight SHRINK_ALPHA per reply) of
#: the share of rows a packed reply got wrong passes SHRINK_ABOVE ...
SHRINK_ALPHA = 0.2
SHRINK_ABOVE = 0.3
#: ... unless batches of half the size or less, over at least SIZE_EVIDENCE_ROWS rows,
#: fail at SIZE_INDEPENDENT times the large batches' rate or more ...
SIZE_EVIDENCE_ROWS = 40
SIZE_INDEPENDENT = 0.7
#: ... but always when more than this share of rows at the current size failed.
ALWAYS_SHRINK_ABOVE = 0.8
#: After a shrink, the size doubles back (up to the starting size) once the moving
#: average has stayed under GROW_BELOW over GROW_AFTER_ROWS rows; each shrink after a
#: grow doubles the rows needed before the next one.
GROW_BELOW = 0.05
GROW_AFTER_ROWS = 200


class BatchSizer:
    """``cap``: the most rows the next packed request may carry."""

    __slots__ = ("by_size", "cap", "clean_rows", "failing", "grew", "grow_after", "limit")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.limit = cap  # the size it may grow back to
        self.failing = 0.0  # moving average of the share of rows a packed reply got wrong
        self.by_size: dict[int, list[int]] = {}  # packed size -> [rows sent, rows failed]
        self.clean_rows = 0  # rows since the average last went over GROW_BELOW
        self.grow_after = GROW_AFTER_ROWS
        self.grew = False  # the last change was a grow

    def set_limit(self, size: int) -> None:
        """The run's batch size from now on (the packing check decided): cap and ceiling."""
        self.cap = self.limit = max(1, min(self.cap, size))

    def observe(self, n: int, failed: int, rows: int) -> None:
        """A packed reply of ``n`` items (``rows`` of them real rows) got ``failed`` wrong."""
        sent_failed = self.by_size.setdefault(n, [0, 0])
        sent_failed[0] += n
        sent_failed[1] += failed
        if rows > self.cap:
            return  # sent before the last shrink: that size was already judged
        self.failing = (1 - SHRINK_ALPHA) * self.failing + SHRINK_ALPHA * failed / n
        self.clean_rows = self.clean_rows + n if self.failing < GROW_BELOW else 0
        if self.cap < self.limit and self.clean_rows >= self.grow_after:
            self.cap = min(self.limit, self.cap * 2)
            self.clean_rows, self.grew = 0, True
            return
        if self.failing <= SHRINK_ABOVE or self.cap <= 1:
            return
        if not self.size_matters():
            self.failing = 0.0  # failures do not depend on size: shrinking would not help
            return
        self.cap = max(1, self.cap // 2)
        self.failing, self.clean_rows = 0.0, 0
        if self.grew:  # it failed again at a size it grew back to: wait longer next time
            self.grow_after *= 2
            self.grew = False

    def size_matters(self) -> bool:
        """Whether smaller batches fail less, as far as this run has seen.

        Nearly every batch failing says yes (a model that loses track past some
        size fails every batch above it). Otherwise the rows measured at half the
        current size or less (resends), or at the size before the last shrink, must
        fail measurably less often than at the current size.
        """

        def rate(keep: Callable[[int], bool]) -> tuple[int, float]:
            sent = sum(v[0] for size, v in self.by_size.items() if keep(size))
            failed = sum(v[1] for size, v in self.by_size.items() if keep(size))
            return sent, failed / sent if sent else 0.0

        cap = self.cap
        current_sent, current = rate(lambda size: cap // 2 < size <= cap)
        larger_sent, larger = rate(lambda size: size > cap)
        if larger_sent and current_sent < SIZE_EVIDENCE_ROWS:
            return False  # just shrank: judge the new size on enough rows first
        if current > ALWAYS_SHRINK_ABOVE:
            return True
        small_sent, small = rate(lambda size: size <= cap // 2)
        if small_sent >= SIZE_EVIDENCE_ROWS and small >= SIZE_INDEPENDENT * current:
            return False
        if larger_sent >= SIZE_EVIDENCE_ROWS:
            return current < SIZE_INDEPENDENT * larger  # the last shrink did help
        return True  # the first shrink, no evidence either way: the safe side for quality
