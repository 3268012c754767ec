"""``async with limiter.reserve(tokens) as slot``: how each outcome settles a reservation.

On the fake clock of ``_fake_clock``: a 100-token bucket (``tpm=6000``, one
second of burst) refills 100 tokens a second, so when the next 100-token
request may start says what the last one cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from _fake_clock import FakeClock, run, settle_tasks

from llmframe._client import CallError
from llmframe._limiter import RateLimiter, Reservation
from llmframe._reserve import AttemptFailure

RATE_LIMIT_HEADERS = {"x-ratelimit-limit-tokens": "6000", "x-ratelimit-remaining-tokens": "5000"}


def http_error(status: int, retry_after: float | None = None, **headers: str) -> CallError:
    """What the client raises for an HTTP error status (see ``_client.classify``)."""
    kind = {429: "rate_limit", 400: "bad_request", 404: "endpoint"}.get(status, "server")
    return CallError(kind, f"HTTP {status}", status in (429, 500, 502, 503), status,
                     retry_after=retry_after, headers=headers)  # fmt: skip


TIMEOUT = CallError("timeout", "no answer within the timeout", True)
UNREADABLE = CallError("server", "unreadable response body (ValueError)", True)
OUT_OF_CREDIT = CallError("auth", "HTTP 429: quota", False, 429, "insufficient_quota")


async def fail_once(limiter: RateLimiter, error: BaseException, tokens: int = 100) -> None:
    with pytest.raises(type(error)):
        async with limiter.reserve(tokens, fallback_pause=lambda: 1.5):
            raise error


async def next_start(limiter: RateLimiter, clock: FakeClock, tokens: int = 100) -> float:
    await limiter.acquire(tokens)
    return clock.now


def after(outcome: Any, **limits: Any) -> tuple[float, RateLimiter]:
    """When the next 100-token request starts after ``outcome(limiter)``, and the limiter."""
    clock = FakeClock()
    limiter = clock.limiter(**limits)

    async def main() -> float:
        await outcome(limiter)
        return await next_start(limiter, clock)

    return run(main), limiter


class Spy(RateLimiter):
    """A limiter that records the calls a slot makes, in order."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.calls: list[str] = []

    def observe(self, headers: Mapping[str, str]) -> None:
        self.calls.append("observe")
        super().observe(headers)

    def settle(self, reservation: Reservation, used_tokens: int) -> None:
        self.calls.append(f"settle {used_tokens}")
        super().settle(reservation, used_tokens)

    def pause(self, seconds: float) -> None:
        self.calls.append(f"pause {seconds}")
        super().pause(seconds)


# -- answered ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("used", "start"),
    [(40, 0.4), (100, 1.0), (150, 1.5), (0, 0.0), (None, 1.0)],  # None: no usage reported
)
def test_settle_charges_what_was_used(used: int | None, start: float) -> None:
    async def answered(limiter: RateLimiter) -> None:
        async with limiter.reserve(100) as slot:
            slot.settle(used)

    assert after(answered, tpm=6000)[0] == pytest.approx(start)


def test_a_block_left_without_settling_keeps_the_estimate() -> None:
    async def silent(limiter: RateLimiter) -> None:
        async with limiter.reserve(100):
            pass

    start, limiter = after(silent, tpm=6000)
    assert start == pytest.approx(1.0)
    assert limiter.stats.cancelled == 0


def test_headers_are_observed_before_settling() -> None:
    clock = FakeClock()
    limiter = Spy(clock=clock, sleep=clock.sleep)  # limits unknown: probing

    async def main() -> None:
        async with limiter.reserve(100) as slot:
            slot.settle(40, headers=RATE_LIMIT_HEADERS)

    run(main)
    assert limiter.calls == ["observe", "settle 40"]
    assert limiter.tpm == 6000 and not limiter.stats.probing


def test_settle_still_settles_when_observing_fails() -> None:
    clock = FakeClock()
    limiter = clock.limiter(tpm=6000)

    async def main() -> float:
        with pytest.raises(AttributeError):
            async with limiter.reserve(100) as slot:
                slot.settle(40, headers=["not", "a", "mapping"])  # type: ignore[arg-type]
        return await next_start(limiter, clock)

    assert run(main) == pytest.approx(0.4)


# -- failed -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 400, 404])
def test_an_error_status_refunds_the_tokens(status: int) -> None:
    start, limiter = after(lambda lim: fail_once(lim, http_error(status)), tpm=6000)
    assert start == 0.0  # the server answered with an error: it counted no tokens
    assert (limiter.stats.cancelled, limiter.stats.pauses) == (0, 0)


@pytest.mark.parametrize("status", [500, 400])
def test_an_error_status_keeps_the_request_in_the_schedule(status: int) -> None:
    start, _ = after(lambda lim: fail_once(lim, http_error(status)), rpm=60)
    assert start == pytest.approx(1.0)  # one request a second: the failed one counted


@pytest.mark.parametrize("error", [TIMEOUT, UNREADABLE], ids=["timeout", "unreadable"])
def test_no_answer_read_keeps_the_estimate(error: CallError) -> None:
    start, limiter = after(lambda lim: fail_once(lim, error), tpm=6000)
    assert start == pytest.approx(1.0)  # the server may have counted it
    assert (limiter.stats.cancelled, limiter.stats.pauses) == (0, 0)


def test_an_error_without_headers_does_not_end_probing() -> None:
    clock = FakeClock()
    limiter = clock.limiter(probe=True)

    async def main() -> None:
        await fail_once(limiter, TIMEOUT)

    run(main)
    assert limiter.stats.probing  # "no headers" was never said by a response


def test_a_429_keeps_its_place_and_pauses_everyone_by_its_retry_after() -> None:
    start, limiter = after(lambda lim: fail_once(lim, http_error(429, retry_after=2.0)), tpm=6000)
    assert start == pytest.approx(2.0)
    assert limiter.stats.pauses == 1
    assert limiter.stats.paused_seconds == pytest.approx(2.0)
    assert limiter.stats.cancelled == 0


def test_a_429_without_retry_after_pauses_by_the_fallback() -> None:
    start, limiter = after(lambda lim: fail_once(lim, http_error(429)), rpm=600, tpm=60_000)
    assert start == pytest.approx(1.5)  # fail_once passes fallback_pause=lambda: 1.5

    clock = FakeClock()
    limiter = clock.limiter(rpm=600)

    async def default_fallback() -> None:
        with pytest.raises(CallError):
            async with limiter.reserve(1):
                raise http_error(429)

    run(default_fallback)
    assert 0.375 <= limiter.stats.paused_seconds <= 0.5  # the first retry's backoff


@pytest.mark.parametrize(
    ("headers", "pause"),
    [
        # out of requests at 600 RPM (10/s): room for one again in 0.1 s, not at the reset
        ({"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "0",
          "x-ratelimit-reset-requests": "6s"}, 0.1),
        # 40 of the 100 tokens left at 6,000 TPM (100/s): the other 60 in 0.6 s
        ({"x-ratelimit-limit-tokens": "6000", "x-ratelimit-remaining-tokens": "40",
          "x-ratelimit-reset-tokens": "59.4s"}, 0.6),
        # no limit stated: the reset is all there is to go by
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2.5s"}, 2.5),
        # both out: the longer wait
        ({"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "0",
          "x-ratelimit-reset-requests": "6s", "x-ratelimit-limit-tokens": "6000",
          "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1s"}, 1.0),
    ],
)  # fmt: skip
def test_a_429_without_retry_after_waits_until_its_window_has_room(headers: dict[str, str], pause: float) -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=600, tpm=60_000)
    run(lambda: fail_once(limiter, http_error(429, **headers)))  # the fallback would be 1.5 s
    assert limiter.stats.paused_seconds == pytest.approx(pause)


def test_a_429_whose_windows_have_room_pauses_by_the_fallback() -> None:
    # The headers say there is room (another sharer's burst, or a window of another kind):
    # nothing to go by but the backoff.
    headers = {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "1s"}
    clock = FakeClock()
    limiter = clock.limiter(rpm=600, tpm=60_000)
    run(lambda: fail_once(limiter, http_error(429, **headers)))
    assert limiter.stats.paused_seconds == pytest.approx(1.5)


def test_a_429_that_waiting_cannot_cure_keeps_the_estimate_without_a_pause() -> None:
    start, limiter = after(lambda lim: fail_once(lim, OUT_OF_CREDIT), tpm=6000)
    assert start == pytest.approx(1.0)
    assert limiter.stats.pauses == 0


def test_the_error_headers_are_observed_after_settling() -> None:
    clock = FakeClock()
    limiter = Spy(clock=clock, sleep=clock.sleep)
    run(lambda: fail_once(limiter, http_error(429, retry_after=3.0, **RATE_LIMIT_HEADERS)))
    assert limiter.calls == ["settle 100", "pause 3.0", "observe"]  # the engine's order, unchanged
    assert limiter.tpm == 6000


# -- never sent -------------------------------------------------------------------------


@pytest.mark.parametrize("error", [asyncio.CancelledError(), KeyboardInterrupt(), ValueError("bug")])
def test_any_other_exception_gives_the_request_and_its_tokens_back(error: BaseException) -> None:
    start, limiter = after(lambda lim: fail_once(lim, error), rpm=60, tpm=6000)
    assert start == 0.0
    assert limiter.stats.cancelled == 1


def test_a_task_cancelled_inside_the_block_gives_its_slot_back() -> None:
    clock = FakeClock()
    limiter = clock.limiter(rpm=60, tpm=6000)

    async def main() -> float:
        async def hang() -> None:
            async with limiter.reserve(100):
                await asyncio.get_running_loop().create_future()  # a request that never answers

        task = asyncio.create_task(hang())
        await settle_tasks()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await next_start(limiter, clock)

    assert run(main) == 0.0
    assert limiter.stats.cancelled == 1


def test_a_task_cancelled_while_waiting_to_enter_gives_its_place_back() -> None:
    clock = FakeClock()
    limiter = clock.limiter(tpm=6000)

    async def main() -> float:
        await limiter.acquire(100)  # empties the bucket

        async def late() -> None:
            async with limiter.reserve(100):  # would start at 1.0
                pass

        task = asyncio.create_task(late())
        await settle_tasks()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await next_start(limiter, clock)  # takes the freed place, not the one after it

    assert run(main) == pytest.approx(1.0)
    assert limiter.stats.cancelled == 1


# -- the slot itself --------------------------------------------------------------------


def test_only_the_first_outcome_counts() -> None:
    async def settled_then_raised(limiter: RateLimiter) -> None:
        with pytest.raises(CallError):
            async with limiter.reserve(100) as slot:
                slot.settle(40)
                slot.cancel()  # ignored
                raise http_error(429, retry_after=5.0)  # ignored: already settled

    start, limiter = after(settled_then_raised, tpm=6000)
    assert start == pytest.approx(0.4)
    assert (limiter.stats.cancelled, limiter.stats.pauses) == (0, 0)


def test_cancel_inside_the_block_before_raising() -> None:
    async def stopped(limiter: RateLimiter) -> None:
        with pytest.raises(CallError):
            async with limiter.reserve(100) as slot:
                slot.cancel()  # e.g. the run stopped while this request waited
                raise http_error(429, retry_after=5.0)

    start, limiter = after(stopped, rpm=60, tpm=6000)
    assert start == 0.0
    assert (limiter.stats.cancelled, limiter.stats.pauses) == (1, 0)


def test_a_slot_is_entered_once_and_settled_only_once_entered() -> None:
    clock = FakeClock()
    limiter = clock.limiter(tpm=6000)

    async def main() -> None:
        slot = limiter.reserve(10)
        with pytest.raises(RuntimeError, match="before settling"):
            slot.settle(5)
        async with slot:
            assert slot.tokens == 10 and slot.reservation is not None
        with pytest.raises(RuntimeError, match="entered once"):
            async with slot:
                pass

    run(main)


def test_call_error_is_an_attempt_failure() -> None:
    assert isinstance(http_error(500), AttemptFailure)
    assert isinstance(TIMEOUT, AttemptFailure)
    assert not isinstance(ValueError(), AttemptFailure)
    assert not isinstance(asyncio.CancelledError(), AttemptFailure)


def test_negative_tokens_are_refused_on_entering() -> None:
    async def main() -> None:
        async with FakeClock().limiter().reserve(-1):
            pass

    with pytest.raises(ValueError, match="tokens must be >= 0"):
        run(main)


# -- the same rules as the engine's hand-written attempt ------------------------------


async def by_hand(limiter: RateLimiter, outcome: BaseException | int) -> None:
    """``_engine.attempt``'s limiter calls before ``reserve()`` (fallback pause: 1.5 s)."""
    est = 100
    reservation = await limiter.acquire(est)
    try:
        if isinstance(outcome, BaseException):
            raise outcome
    except CallError as err:
        refund = err.status is not None and err.status != 429
        limiter.settle(reservation, 0 if refund else est)
        if err.kind == "rate_limit":
            limiter.pause(err.retry_after if err.retry_after is not None else 1.5)
        if err.headers:
            limiter.observe(err.headers)
        return
    except BaseException:
        limiter.cancel(reservation)
        return
    try:
        limiter.observe(RATE_LIMIT_HEADERS)
    finally:
        limiter.settle(reservation, outcome if outcome else est)


async def with_reserve(limiter: RateLimiter, outcome: BaseException | int) -> None:
    try:
        async with limiter.reserve(100, fallback_pause=lambda: 1.5) as slot:
            if isinstance(outcome, BaseException):
                raise outcome
            slot.settle(outcome or None, headers=RATE_LIMIT_HEADERS)
    except BaseException:
        return


@pytest.mark.parametrize(
    "outcome",
    [40, 0, 180, http_error(500), http_error(400, **RATE_LIMIT_HEADERS),
     http_error(429, retry_after=2.0, **RATE_LIMIT_HEADERS), http_error(429), OUT_OF_CREDIT,
     TIMEOUT, UNREADABLE, asyncio.CancelledError(), ValueError("bug")],
    ids=lambda o: repr(o)[:40],
)  # fmt: skip
@pytest.mark.parametrize("limits", [{"probe": True}, {"rpm": 60, "tpm": 6000}, {"tpm": 6000}])
def test_reserve_does_what_the_engine_did_by_hand(outcome: Any, limits: dict[str, Any]) -> None:
    def trace(attempt: Any) -> tuple[Any, ...]:
        clock = FakeClock()
        limiter = clock.limiter(**limits)

        async def main() -> list[float]:
            await attempt(limiter, outcome)
            starts = []
            for _ in range(3):  # settled, so that a probe does not hold the next one back
                limiter.settle(await limiter.acquire(100), 100)
                starts.append(clock.now)
            return starts

        return (*run(main), limiter.stats)

    assert trace(with_reserve) == trace(by_hand)
