"""The exceptions llmframe raises.

Every exception is a child of :class:`LLMFrameError`, so one ``except`` catches
them all::

    LLMFrameError
    ├── ConfigError          bad option or missing setting (no model, bad errors=...)
    ├── TemplateError        template names a missing column, or is malformed
    ├── CacheError           the cache folder cannot be used
    └── RunError             errors="raise": some rows failed (raised after the
        │                    other rows finished and were cached)
        └── EndpointError    a failure that would hit every row (unknown model, a
            │                parameter the endpoint rejects): the run stopped early
            └── AuthenticationError   the endpoint refused the API key

Row-level failures are not exceptions while a run goes on: a failed row gets a
null answer and a :class:`RowError` in the run report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "AuthenticationError",
    "CacheError",
    "ConfigError",
    "EndpointError",
    "LLMFrameError",
    "RowError",
    "RunError",
    "TemplateError",
]

#: Why a row failed. ``"budget"``, ``"auth"`` and ``"too_large"`` are never retried.
ErrorKind = Literal[
    "rate_limit",  # still 429 after every attempt
    "server",  # 5xx after every attempt
    "timeout",  # no answer within timeout= after every attempt
    "connection",  # could not reach the endpoint
    "bad_request",  # 400/422: the request itself is wrong
    "auth",  # 401, 403, out of credit
    "endpoint",  # the endpoint refuses every request: unknown model, a parameter it rejects
    "too_large",  # larger than the TPM limit, the batch token budget or the context window
    "invalid_answer",  # the answer could not be parsed or matched to the row
    "truncated",  # finish_reason == "length" even alone
    "budget",  # max_cost_usd reached before the row was sent
    "cancelled",  # the run was interrupted before the row finished
]


class LLMFrameError(Exception):
    """Base class of every llmframe exception."""


class ConfigError(LLMFrameError, ValueError):
    """An option is invalid or a required setting (such as the model) is missing."""


class TemplateError(LLMFrameError, ValueError):
    """The template is malformed or names a field that is not a column."""


class CacheError(LLMFrameError):
    """The cache folder cannot be read or written."""


@dataclass(frozen=True)
class RowError:
    """Why one row has no answer.

    ``row`` is the 0-based position of the row in the input frame.
    """

    row: int
    kind: str
    message: str
    status: int | None = None

    def __str__(self) -> str:
        return f"row {self.row}: {self.kind}: {self.message}"


class RunError(LLMFrameError):
    """Raised by ``errors="raise"`` once every other row has finished and been cached.

    ``errors`` lists every failed row; ``report`` is the full run report.
    """

    def __init__(self, message: str, errors: list[RowError] | None = None, report: object | None = None):
        # errors defaults to empty: polars re-raises an error from a UDF as type(error)(message).
        super().__init__(message)
        self.errors = errors if errors is not None else []
        self.report = report

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole, e.g. from a Dask worker
        return (type(self), (str(self), self.errors, self.report))


class EndpointError(RunError):
    """A failure that would hit every row, so the run stopped after the first one.

    Raised whatever ``errors=`` says: an unknown model, a wrong ``base_url``, or a
    parameter the endpoint rejects. Rows answered before it are cached;
    ``errors`` lists every row left without an answer.
    """


class AuthenticationError(EndpointError):
    """The endpoint refused the API key (401), access (403) or credit."""
