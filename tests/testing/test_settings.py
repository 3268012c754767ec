"""The fake server's settings as pure code: coercion, validation, changes."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest
from _support import settings

from llmframe._config import UNSET
from llmframe.testing import Degrade, FakeServer, Faults
from llmframe.testing._settings import Settings


def test_of_coerces_the_loose_arguments() -> None:
    s = settings(
        faults={"error_rate": 0.5},
        degrade={"error_per_item": 0.1},
        api_keys="sk-one",
        unsupported_params=["seed"],
        models=["gpt-4o-mini"],
    )
    assert s.faults == Faults(error_rate=0.5)
    assert s.degrade == Degrade(error_per_item=0.1)
    assert s.api_keys == ("sk-one",)
    assert s.unsupported_params == ("seed",)
    assert s.models == ("gpt-4o-mini",)
    assert settings().faults == Faults() and settings().degrade is None and settings().models is None


def test_changed_changes_only_what_is_named() -> None:
    s = settings(rpm=60, api_keys=["a", "b"])
    changed = s.changed({"rpm": UNSET, "tpm": 1000, "api_keys": "c", "faults": {"hang_rate": 1.0}})
    assert (changed.rpm, changed.tpm, changed.api_keys) == (60, 1000, ("c",))
    assert changed.faults == Faults(hang_rate=1.0)
    assert s.changed({"rpm": UNSET, "latency": UNSET, "self": object()}) == s
    assert s.changed({"rpm": None}).rpm is None  # None is a value (no limit), not "unset"


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"rpm": 0}, ValueError, "rpm must be a positive number"),
        ({"tpm": -5}, ValueError, "tpm must be a positive number"),
        ({"rpm": "60"}, ValueError, "rpm"),
        ({"latency": -1}, ValueError, "latency must be a finite number"),
        ({"latency_per_token": float("inf")}, ValueError, "latency_per_token"),
        ({"hang_seconds": float("nan")}, ValueError, "hang_seconds"),
        ({"burst_seconds": 0}, ValueError, "burst_seconds"),
        ({"model_context": 0}, ValueError, "model_context"),
        ({"model_context": 1.5}, ValueError, "model_context"),
        ({"answer_fn": "not callable"}, TypeError, "answer_fn"),
        ({"api_keys": []}, ValueError, "api_keys must hold at least one key"),
        ({"rejects_like": "vllm"}, ValueError, "rejects_like"),
        ({"faults": 0.5}, TypeError, "faults must be a Faults"),
    ],
)
def test_invalid_settings_raise(changes: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        settings(**changes)
    s = settings()
    with pytest.raises(error, match=match):
        s.changed(changes)
    assert s == settings()  # frozen: a refused change leaves nothing half done


def test_fake_server_takes_every_setting_by_its_field_name() -> None:
    # FakeServer hands its locals() to Settings: a parameter named otherwise would be lost.
    fields = {field.name for field in dataclasses.fields(Settings)}
    init = set(inspect.signature(FakeServer.__init__).parameters) - {"self"}
    configure = set(inspect.signature(FakeServer.configure).parameters) - {"self"}
    assert init - {"seed", "port"} == fields
    assert configure - {"seed"} == fields - {"models"}  # configure() does not take models=
