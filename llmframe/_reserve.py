"""``async with limiter.reserve(tokens) as slot``: one attempt's place, settled by its outcome.

The limiter's own methods (``acquire``, ``settle``, ``cancel``, ``pause``,
``observe``) are the mechanism; :class:`Slot` is the policy that says which to
call when an attempt ends, so that a caller cannot get the order or the 429
rule wrong::

    async with limiter.reserve(estimated_tokens) as slot:    # waits its turn
        reply = await send()
        slot.settle(reply.usage.total_tokens, headers=reply.headers)

How the block ends decides what the reservation costs:

- ``slot.settle(used, headers=...)``: the headers are observed first (so the
  refund is paced by the limits they state), then the reservation is charged
  what was really used (the rest refunded; ``None``: the estimate stands).
- An exception that is an :class:`AttemptFailure` (llmframe's ``CallError``
  is one) is a failed attempt, :meth:`Slot.failed`. The attempt keeps its
  place in the schedule, even on a 429: given back, its slot would let the
  retry start together with the last waiter and earn the next 429
  (benchmarks/rate_limits.py: 17 -> 4 429s in 1,000 requests). Its tokens
  are refunded only when the server answered with an error (4xx other than
  429, 5xx); a timeout or an unreadable body may have been counted, and a
  429 keeps them so the retry does not jump the queue. A 429 worth retrying
  pauses everyone sharing the limiter for its ``retry_after``; without one,
  until the window it ran out of holds the request again, as its
  ``x-ratelimit-remaining-*`` / ``-reset-*`` say (:func:`~._headers.exhausted_wait`),
  and only without those for a generic backoff. The headers of the error, if
  any, are observed last.
- Any other exception (cancellation, Ctrl-C, a bug before sending): the
  request never reached the server, so the request and its tokens go back.
- Leaving the block normally without settling keeps the estimate.

Only the first of ``settle``, ``failed`` and ``cancel`` counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Generic, Protocol, TypeVar, runtime_checkable

from ._headers import exhausted_wait

__all__ = ["AttemptFailure", "Slot"]

R = TypeVar("R")


@runtime_checkable
class AttemptFailure(Protocol):
    """What :class:`Slot` reads from an exception that ends an attempt.

    ``status`` is the HTTP status the server answered with, None when no
    answer was read (a timeout, a connection error, an unreadable body);
    ``retryable`` is False for a 429 that waiting cannot cure (out of credit,
    a request larger than the limit); ``retry_after`` is the server's wait in
    seconds, if it said; ``headers`` are the error response's headers.
    """

    @property
    def status(self) -> int | None: ...

    @property
    def retryable(self) -> bool: ...

    @property
    def retry_after(self) -> float | None: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


class _Limiter(Protocol[R]):
    """The limiter methods a slot calls (R: the limiter's reservation type)."""

    async def acquire(self, tokens: int) -> R: ...

    def settle(self, reservation: R, used_tokens: int) -> None: ...

    def cancel(self, reservation: R) -> None: ...

    def pause(self, seconds: float) -> None: ...

    def observe(self, headers: Mapping[str, str]) -> None: ...


class Slot(Generic[R]):
    """One attempt's reservation, as an async context manager (see the module docstring).

    Made by ``RateLimiter.reserve(tokens)``; entering it waits for the
    request's turn. ``fallback_pause()`` is how long a retryable 429 without
    a ``retry_after`` pauses the limiter.
    """

    __slots__ = ("_fallback_pause", "_limiter", "_open", "reservation", "tokens")

    def __init__(
        self, limiter: _Limiter[R], tokens: int, fallback_pause: Callable[[], float]
    ) -> None:
        self._limiter = limiter
        self._fallback_pause = fallback_pause
        self._open = False
        self.tokens = tokens  # the estimate reserved
        self.reservation: R | None = None

    def __repr__(self) -> str:
        return f"Slot(tokens={self.tokens}, reservation={self.reservation!r})"

    async def __aenter__(self) -> Slot[R]:
        if self.reservation is not None:
            raise RuntimeError("a Slot is entered once: call limiter.reserve() again")
        # If this wait is cancelled, acquire gives the reservation back itself.
        self.reservation = await self._limiter.acquire(self.tokens)
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._open:
            return
        if exc is None:
            self.settle(None)
        elif isinstance(exc, AttemptFailure):
            self.failed(
                exc.status,
                retryable=exc.retryable,
                retry_after=exc.retry_after,
                headers=exc.headers,
            )
        else:
            self.cancel()

    def settle(
        self, used_tokens: int | None = None, *, headers: Mapping[str, str] | None = None
    ) -> None:
        """The attempt was answered: observe ``headers``, then charge ``used_tokens``.

        ``used_tokens`` is the response's usage (prompt + completion); the
        difference from the estimate is refunded, or charged when it used
        more. ``None`` (no usage reported) keeps the estimate.
        """
        reservation = self._close()
        if reservation is None:
            return
        try:  # learn the limits first, so the refund is paced by them
            if headers is not None:
                self._limiter.observe(headers)
        finally:
            used = self.tokens if used_tokens is None else used_tokens
            self._limiter.settle(reservation, used)

    def failed(
        self,
        status: int | None,
        *,
        retryable: bool = True,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """The attempt failed with ``status`` (None: no answer was read); see the module docstring."""
        reservation = self._close()
        if reservation is None:
            return
        refund = status is not None and status != 429
        self._limiter.settle(reservation, 0 if refund else self.tokens)
        if status == 429 and retryable:
            if retry_after is None:  # the window the request ran out of says when it has room
                retry_after = exhausted_wait(headers, self.tokens)
            self._limiter.pause(retry_after if retry_after is not None else self._fallback_pause())
        if headers:
            self._limiter.observe(headers)

    def cancel(self) -> None:
        """The request was never sent: give back its request and its tokens."""
        reservation = self._close()
        if reservation is not None:
            self._limiter.cancel(reservation)

    def _close(self) -> R | None:
        """The reservation, the first time an outcome is given; None after that."""
        if self.reservation is None:
            raise RuntimeError("enter the slot (async with limiter.reserve(...)) before settling it")
        if not self._open:
            return None
        self._open = False
        return self.reservation
