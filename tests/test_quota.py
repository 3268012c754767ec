"""Which limits hold: the user's, the server's, the lower of both, or none known yet."""

from __future__ import annotations

import pytest

from llmframe._errors import ConfigError
from llmframe._headers import RateLimitHeaders, Window
from llmframe._quota import Quota

NOTHING = RateLimitHeaders(Window(), Window())


def stated(rpm: float | None = None, tpm: float | None = None) -> RateLimitHeaders:
    return RateLimitHeaders(Window(limit=rpm, reset=0.5), Window(limit=tpm))


def test_an_unknown_limit_probes_until_a_response_is_observed() -> None:
    quota = Quota(rpm=600, tpm=None)
    assert (quota.rpm, quota.tpm, quota.probing) == (600, None, True)
    quota.learn(NOTHING)  # a server without rate-limit headers: no limit to learn
    assert (quota.rpm, quota.tpm, quota.probing, quota.learned) == (600, None, False, False)
    assert not Quota(rpm=1, tpm=1).probing  # both given: nothing to learn first


def test_the_lower_of_given_and_learned_holds() -> None:
    quota = Quota(rpm=600, tpm=None)
    quota.learn(stated(rpm=5000, tpm=90_000))
    assert (quota.rpm, quota.tpm, quota.learned) == (600, 90_000, True)
    quota.learn(stated(rpm=300))  # the server says less: the server wins
    assert quota.rpm == 300
    quota.give(rpm=None, tpm=50_000)  # None leaves rpm as it is
    assert (quota.rpm, quota.tpm) == (300, 50_000)
    assert quota.reset_requests == 0.5 and quota.reset_tokens is None


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), True, "600"])
def test_invalid_limits_are_refused_before_anything_changes(bad: object) -> None:
    with pytest.raises(ConfigError):
        Quota(rpm=bad, tpm=None)  # type: ignore[arg-type]
    quota = Quota(rpm=None, tpm=6000)
    with pytest.raises(ConfigError):
        quota.give(rpm=60, tpm=bad)  # type: ignore[arg-type]
    assert (quota.rpm, quota.tpm) == (None, 6000)


# -- the server's window ----------------------------------------------------------------------


def _seen(rpm: float, remaining: float, reset: float) -> RateLimitHeaders:
    return RateLimitHeaders(Window(limit=rpm, remaining=remaining, reset=reset), Window())


def test_the_window_is_the_largest_seen_for_the_limit_in_force() -> None:
    quota = Quota(None, None)
    assert quota.windows == (None, None)
    quota.learn(_seen(1200, 1199, 0.05))
    assert quota.windows == (pytest.approx(1200.0), None)
    quota.learn(_seen(1200, 0, 0.5))  # a reading of a busier moment says less: the largest stays
    assert quota.windows[0] == pytest.approx(1200.0)
    quota.learn(_seen(600, 0, 1.0))  # a new limit: its window is read afresh
    assert quota.windows[0] == pytest.approx(10.0)


def test_a_given_limit_below_the_servers_has_no_window() -> None:
    quota = Quota(rpm=600, tpm=None)
    quota.learn(_seen(1200, 1199, 0.05))
    assert quota.rpm == 600 and quota.windows == (None, None)
    quota.give(rpm=1200, tpm=None)
    assert quota.windows[0] == pytest.approx(1200.0)
