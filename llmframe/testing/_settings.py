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
    #: Chat requests the model works on at once (llama.cpp's ``--parallel``; llama-cpp-python's
    #: server: 1); the others wait their turn, which their latency includes. ``None``: no limit.
    slots: int | None = None
    #: The Batch API (``/v1/files``, ``/v1/batches``); ``False``: those paths answer 404.
    batch_api: bool = True
    #: Wall seconds a batch spends in progress (its lines finish spread over them).
    batch_seconds: float = 1.0
    #: Wall seconds in ``validating`` (and in ``finalizing``).
    batch_validate_seconds: float = 0.05
    #: Share of a batch's lines left unfinished when its window passes (the batch ends ``expired``).
    batch_expire_rate: float = 0.0
    #: Share of a batch's lines answered with a 500 ``server_error`` in the output file.
    batch_error_rate: float = 0.0
    #: Share of a batch's packed lines whose answer is damaged (an id dropped, doubled or wrong).
    batch_broken_rate: float = 0.0
    #: Most lines in one batch input file (OpenAI: 50,000).
    batch_max_requests: int = 50_000
    #: Most bytes in one batch input file (OpenAI: 200 MB).
    batch_max_bytes: int = 200 * 1024 * 1024
    #: Most prompt tokens enqueued in batches at once (``None``: no limit).
    batch_enqueued_tpd: int | None = None

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
        if self.slots is not None and not (isinstance(self.slots, int) and self.slots > 0):
            raise ValueError(f"slots must be a positive int or None (no limit), got {self.slots!r}")
        if self.answer_fn is not None and not callable(self.answer_fn):
            raise TypeError("answer_fn must be a callable (prompt: str) -> str, or None")
        if self.api_keys is not None and not self.api_keys:
            raise ValueError("api_keys must hold at least one key, or be None to accept any key")
        if self.embedding_length is not None and not callable(self.embedding_length):
            raise TypeError("embedding_length must be a callable (n: int) -> int, or None")
        self._check_batch()
        if self.rejects_like not in ("openai", "llama.cpp"):
            raise ValueError(
                f"rejects_like must be 'openai' or 'llama.cpp', got {self.rejects_like!r}"
            )

    def _check_batch(self) -> None:
        for name in ("batch_seconds", "batch_validate_seconds"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        for name in ("batch_expire_rate", "batch_error_rate", "batch_broken_rate"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        if self.batch_expire_rate + self.batch_error_rate > 1.0 + 1e-9:
            raise ValueError("batch_expire_rate + batch_error_rate must not exceed 1")
        for name in ("batch_max_requests", "batch_max_bytes", "batch_enqueued_tpd"):
            value = getattr(self, name)
            if value is None and name == "batch_enqueued_tpd":
                continue
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"{name} must be a positive int, got {value!r}")


_FIELDS = tuple(field.name for field in fields(Settings))
