"""The fake server's settings: one frozen dataclass, validated whole, replaced whole.

:class:`FakeServer` takes its settings as loose keyword arguments (a dict for
``faults``, any iterable for ``api_keys``); :meth:`Settings.of` turns them into
one :class:`Settings`, and :meth:`Settings.changed` builds the next one for
``configure()``; both read the arguments by field name, so the list of
settings is written once, here. A setting that fails validation raises before anything
changes, so a running server keeps serving with the settings it had. Handlers
read the settings once per request, which gives each request one consistent
view even while ``configure()`` runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from llmframe._config import UNSET  # "not passed", as distinct from None (no limit)
from llmframe.testing._degrade import Degrade
from llmframe.testing._faults import Faults
from llmframe.testing._model import AnswerFn

__all__ = ["Settings"]


def _api_keys(value: Iterable[str] | str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


def _models(value: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


# How a loosely typed keyword argument becomes its field; the others are taken as given.
_COERCE: dict[str, Callable[[Any], Any]] = {
    "faults": Faults.coerce,
    "degrade": Degrade.coerce,
    "api_keys": _api_keys,
    "unsupported_params": tuple,
    "models": _models,
}


def _coerced(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The settings among ``arguments`` (other names ignored), coerced; ``UNSET`` left out."""
    return {
        name: _COERCE.get(name, lambda value: value)(arguments[name])
        for name in _FIELDS
        if name in arguments and arguments[name] is not UNSET
    }


@dataclass(frozen=True)
class Settings:
    """Everything :meth:`FakeServer.configure` can change (see :class:`FakeServer`)."""

    rpm: float | None
    tpm: float | None
    latency: float
    latency_per_token: float
    faults: Faults
    answer_fn: AnswerFn | None
    api_keys: tuple[str, ...] | None
    burst_seconds: float
    json_schema: bool
    json_object: bool
    hang_seconds: float
    model_context: int
    degrade: Degrade | None = None
    rejects_like: str = "openai"
    unsupported_params: tuple[str, ...] = ()
    models: tuple[str, ...] | None = None
    #: ``data`` of an embeddings reply in shuffled order (each item keeps its ``index``).
    embeddings_shuffled: bool = False
    #: ``(n) -> length`` of the vectors in the n-th embeddings reply (from 1), instead of
    #: the ``dimensions`` asked for: a model whose vectors change length. ``None``: as asked.
    embedding_length: Callable[[int], int] | None = None

    @classmethod
    def of(cls, arguments: Mapping[str, Any]) -> Settings:
        """Settings from :class:`FakeServer`'s arguments (``faults`` as a dict, ...).

        ``arguments`` may hold other names too (``FakeServer`` passes its
        ``locals()``): only those of a field are read.
        """
        return cls(**_coerced(arguments))

    def changed(self, arguments: Mapping[str, Any]) -> Settings:
        """These settings with those in ``arguments`` changed; ``UNSET`` means "leave it"."""
        return replace(self, **_coerced(arguments))  # validates before anything changes

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(
                    f"{name} must be a positive number or None (no limit), got {value!r}"
                )
        for name in ("latency", "latency_per_token", "hang_seconds"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        if not (isinstance(self.burst_seconds, (int, float)) and self.burst_seconds > 0):
            raise ValueError(f"burst_seconds must be > 0, got {self.burst_seconds!r}")
        if not (isinstance(self.model_context, int) and self.model_context > 0):
            raise ValueError(f"model_context must be a positive int, got {self.model_context!r}")
        if self.answer_fn is not None and not callable(self.answer_fn):
            raise TypeError("answer_fn must be a callable (prompt: str) -> str, or None")
        if self.api_keys is not None and not self.api_keys:
            raise ValueError("api_keys must hold at least one key, or be None to accept any key")
        if self.embedding_length is not None and not callable(self.embedding_length):
            raise TypeError("embedding_length must be a callable (n: int) -> int, or None")
        if self.rejects_like not in ("openai", "llama.cpp"):
            raise ValueError(f"rejects_like must be 'openai' or 'llama.cpp', got {self.rejects_like!r}")


_FIELDS = tuple(field.name for field in fields(Settings))
