"""Which RPM and TPM limits hold for one endpoint: given, learned, or not known yet.

A limit the user gives (``rpm=`` / ``tpm=``) always holds. A limit the server
states in its ``x-ratelimit-limit-*`` headers is learned, and when both exist
the lower one wins: the server is the truth, and the user may want less.

A limit neither given nor learned is unknown until a response has been
observed; meanwhile the limiter probes (lets one request through at a time).
A response without any rate-limit headers (vLLM, llama.cpp, Ollama) ends the
probing with nothing learned: there is no limit, and the caller's concurrency
cap alone governs.

The three headers of one limit together also say how much the server's bucket
holds when full (:attr:`~llmframe._headers.Window.capacity`): a server that
holds a minute's requests can take a burst that one holding a second's cannot.
That is kept per limit (:attr:`Quota.windows`), the largest seen for the limit
in force, and sizes the limiter's buckets (:mod:`._bucket`). It is this
process's own reading: processes sharing a quota share the buckets it sized.
An earlier process's reading (:meth:`Quota.remember`, in seconds) sizes them
until a response speaks, for the first burst only; a 429 before that drops it
(:meth:`Quota.distrust`). Unlike the own reading, it is shared: every sharer
starts from the same memory, and drops it together.

:class:`Quota` holds no lock and no clock: the limiter's lock guards it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar

from ._errors import ConfigError
from ._headers import RateLimitHeaders

__all__ = ["Quota"]


def _positive_limit(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number of {name.upper()} per minute, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive per-minute limit, got {value!r}")
    return float(value)


def _lower(given: float | None, learned: float | None) -> float | None:
    if given is not None and learned is not None:
        return min(given, learned)
    return given if given is not None else learned


class Quota:
    """The limits of one endpoint as far as they are known (see the module docstring).

    >>> quota = Quota(rpm=500, tpm=None)
    >>> quota.rpm, quota.tpm, quota.probing
    (500.0, None, True)
    """

    __slots__ = (
        "_given_rpm",
        "_given_tpm",
        "_learned_rpm",
        "_learned_tpm",
        "_windows",
        "learned",
        "observed",
        "remembered",
        "remembered_windows",
        "reset_requests",
        "reset_tokens",
    )

    def __init__(self, rpm: float | None, tpm: float | None) -> None:
        self._given_rpm = _positive_limit(rpm, "rpm")
        self._given_tpm = _positive_limit(tpm, "tpm")
        self._learned_rpm: float | None = None
        self._learned_tpm: float | None = None
        self.observed = False  # has any response been observed (with or without headers)?
        self.learned = False  # has any response stated a limit?
        self.remembered = False  # limits from an earlier process, until a response speaks
        # The last x-ratelimit-reset-* values seen, in seconds, for the report.
        self.reset_requests: float | None = None
        self.reset_tokens: float | None = None
        # What the server's request and token buckets hold when full, as its headers said.
        self._windows: list[float | None] = [None, None]
        # ... as an earlier process's said: used while ``remembered``.
        self.remembered_windows: list[float | None] = [None, None]

    @property
    def rpm(self) -> float | None:
        """The requests-per-minute limit in force, or None for none (yet)."""
        return _lower(self._given_rpm, self._learned_rpm)

    @property
    def tpm(self) -> float | None:
        """The tokens-per-minute limit in force, or None for none (yet)."""
        return _lower(self._given_tpm, self._learned_tpm)

    @property
    def probing(self) -> bool:
        """True while a limit is unknown: not given, and no response observed yet."""
        # Learned limits only come with an observation, so "unknown" means
        # "not given and nothing observed yet".
        return not self.observed and (self._given_rpm is None or self._given_tpm is None)

    def give(self, rpm: float | None, tpm: float | None) -> None:
        """Set user-given limits; None leaves that limit as it is. Validates both first."""
        rpm = _positive_limit(rpm, "rpm")
        tpm = _positive_limit(tpm, "tpm")
        if rpm is not None:
            self._given_rpm = rpm
        if tpm is not None:
            self._given_tpm = tpm

    def remember(
        self, rpm: float | None, tpm: float | None, window_seconds: tuple[float | None, float | None] = (None, None)
    ) -> None:
        """Start from limits an earlier process learned (no probe), and the seconds of each
        limit its server's window held (:attr:`window_seconds`); the next response's
        headers replace them. ``None`` for both limits: the endpoint sent no limits then."""
        if self.observed:
            return  # this process has seen the endpoint itself: that is fresher
        self.observed = self.remembered = True
        self._learned_rpm = float(rpm) if rpm else None
        self._learned_tpm = float(tpm) if tpm else None
        self.remembered_windows = [
            limit * seconds / 60 if limit and seconds and math.isfinite(seconds) and seconds > 0 else None
            for limit, seconds in zip(self.learned_limits, window_seconds, strict=True)
        ]

    def distrust(self) -> bool:
        """A 429 while remembered windows size the buckets: the memory is stale, drop the
        windows (the limits stay until a response speaks). True if there were any."""
        if not self.remembered or self.remembered_windows == [None, None]:
            return False
        self.remembered_windows = [None, None]
        return True

    @property
    def given(self) -> tuple[float | None, float | None]:
        """The limits the user gave (``rpm``, ``tpm``), None where not given."""
        return self._given_rpm, self._given_tpm

    @given.setter
    def given(self, limits: tuple[float | None, float | None]) -> None:
        self._given_rpm, self._given_tpm = limits

    _SHARED: ClassVar[tuple[str, ...]] = ("_learned_rpm", "_learned_tpm", "observed", "learned", "remembered",
               "reset_requests", "reset_tokens", "remembered_windows")  # fmt: skip

    def shared(self) -> list[Any]:
        """What was learned, as plain data: processes sharing a quota share it (not ``given``)."""
        return [getattr(self, name) for name in self._SHARED]

    def load(self, state: list[Any]) -> None:
        """Take what :meth:`shared` described (another process may have learned it)."""
        if len(state) != len(self._SHARED):
            raise ValueError(f"a quota state has {len(self._SHARED)} values, got {len(state)}")
        for name, value in zip(self._SHARED, state, strict=True):
            setattr(self, name, value)
        self.remembered_windows = list(self.remembered_windows)

    @property
    def windows(self) -> tuple[float | None, float | None]:
        """What the server's request and token buckets hold when full, where its headers
        said so (or, until a response speaks, an earlier process's) and its limit is the
        one in force (a lower given limit keeps the usual burst)."""
        in_force = (self.rpm, self.tpm)
        learned = self.learned_limits
        read = self.remembered_windows if self.remembered else self._windows
        return (read[0] if in_force[0] == learned[0] else None,
                read[1] if in_force[1] == learned[1] else None)  # fmt: skip

    @property
    def window_seconds(self) -> tuple[float | None, float | None]:
        """This process's own reading of the windows, as seconds of each learned limit
        (what :meth:`remember` takes): None where unknown."""
        (rq, tk), (rpm, tpm) = self._windows, self.learned_limits
        return (rq * 60 / rpm if rq is not None and rpm else None,
                tk * 60 / tpm if tk is not None and tpm else None)  # fmt: skip

    @property
    def learned_limits(self) -> tuple[float | None, float | None]:
        """What the server's headers said (not what the user gave)."""
        return self._learned_rpm, self._learned_tpm

    def learn(self, seen: RateLimitHeaders) -> None:
        """Take in one response's rate-limit headers (an empty set ends probing too)."""
        self.observed = True
        if self.remembered:  # the server speaks now: what it says replaces the memory
            self.remembered = False
            self._learned_rpm = self._learned_tpm = None
            self.remembered_windows = [None, None]
        for i, window in enumerate((seen.requests, seen.tokens)):
            if window.limit is None:
                continue
            self.learned = True
            if window.limit != self.learned_limits[i]:
                self._windows[i] = None  # a new limit: its window is read afresh
            if i == 0:
                self._learned_rpm = window.limit
            else:
                self._learned_tpm = window.limit
            capacity, known = window.capacity, self._windows[i]
            if capacity is not None and (known is None or capacity > known):
                self._windows[i] = capacity
        # The reset times sized the windows above; the last ones are kept for the report.
        if seen.requests.reset is not None:
            self.reset_requests = seen.requests.reset
        if seen.tokens.reset is not None:
            self.reset_tokens = seen.tokens.reset
