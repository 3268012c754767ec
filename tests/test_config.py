"""llmframe._config: an option comes from the call, else configure(), else the
environment, else the default; a bad value is refused with the option's name.

conftest's autouse fixture clears the LLMFRAME_* variables and resets configure()
around every test.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest

import llmframe
from llmframe import ConfigError
from llmframe._config import UNSET, Options, configure, get_defaults, resolve

#: The options that the environment can set, each with a value for every source.
LAYERED = [
    # option, env var, env value, parsed env value, configure() value, call value
    ("model", "LLMFRAME_MODEL", "from-env", "from-env", "from-configure", "from-call"),
    ("rpm", "LLMFRAME_RPM", "100", 100.0, 200, 300),
    ("tpm", "LLMFRAME_TPM", "1000.5", 1000.5, 2000, 3000),
]


@pytest.mark.parametrize(("name", "var", "raw", "parsed", "configured", "given"), LAYERED)
def test_call_beats_configure_beats_environment_beats_default(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    var: str,
    raw: str,
    parsed: Any,
    configured: Any,
    given: Any,
) -> None:
    base = {} if name == "model" else {"model": "m"}
    if name != "model":
        assert getattr(resolve(**base), name) is None  # the default: learned from headers
    monkeypatch.setenv(var, raw)
    assert getattr(resolve(**base), name) == parsed
    configure(**{name: configured})
    assert getattr(resolve(**base), name) == configured
    assert getattr(resolve(**base, **{name: given}), name) == given
    # UNSET is "not passed" (what the typed API forwards): the next layer decides.
    assert getattr(resolve(**base, **{name: UNSET}), name) == configured
    configure(reset=True)
    assert getattr(resolve(**base, **{name: UNSET}), name) == parsed


def test_options_without_an_environment_variable_follow_call_then_configure() -> None:
    assert resolve(model="m").max_concurrency == Options().max_concurrency == 32
    configure(max_concurrency=4, timeout=5.0)
    opts = resolve(model="m", timeout=9.5)
    assert (opts.max_concurrency, opts.timeout) == (4, 9.5)
    assert get_defaults().timeout == 5.0  # a call does not change the defaults


def test_configure_accumulates_until_reset() -> None:
    configure(model="gpt-4o-mini")
    configure(rpm=500)
    assert (get_defaults().model, get_defaults().rpm) == ("gpt-4o-mini", 500)
    configure(reset=True, tpm=1000)
    assert (get_defaults().model, get_defaults().rpm, get_defaults().tpm) == (None, None, 1000)
    assert llmframe.configure is configure  # the public name is this function


def test_empty_environment_variables_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMFRAME_MODEL", "")
    monkeypatch.setenv("LLMFRAME_RPM", "")
    with pytest.raises(ConfigError, match="no model given"):
        resolve()
    assert resolve(model="m").rpm is None


@pytest.mark.parametrize("var", ["LLMFRAME_RPM", "LLMFRAME_TPM"])
def test_environment_variable_that_is_not_a_number(
    monkeypatch: pytest.MonkeyPatch, var: str
) -> None:
    monkeypatch.setenv(var, "fast")
    with pytest.raises(ConfigError, match=f"environment variable {var}='fast' is not a number"):
        resolve(model="m")


def test_no_model_anywhere_says_where_one_can_come_from() -> None:
    with pytest.raises(ConfigError) as info:
        resolve()
    assert all(
        where in str(info.value) for where in ("model=", "configure(model=", "LLMFRAME_MODEL")
    )


def test_unknown_options_are_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['batchsize'\]"):
        resolve(model="m", batchsize=5)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['modle'\]; known options: "):
        configure(modle="gpt-4o-mini")


BAD_VALUES = [
    ("errors", "ignore"),
    ("max_concurrency", 0),
    ("max_concurrency", 2.5),
    ("max_attempts", 0),
    ("timeout", 0),
    ("timeout", "60"),
    ("rpm", -1),
    ("rpm", "500"),
    ("tpm", 0),
    ("max_cost_usd", 0),
    ("batch_size", 0),
    ("batch_size", True),
    ("batch_size", "large"),
    ("max_batch_tokens", 0),
    ("max_batch_tokens", 1.5),
    ("response_format", "xml"),
    ("canaries", -1),
    ("canaries", True),
    ("error_column", ""),
    ("params", [("temperature", 0)]),
    ("params", {"model": "other"}),
    ("params", {"messages": []}),
    ("params", {"stream": True}),
    ("params", {"n": 2}),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_a_bad_value_is_refused_with_the_options_name(name: str, value: Any) -> None:
    key = "params may not set" if name == "params" and isinstance(value, dict) else name
    with pytest.raises(ConfigError, match=key):
        resolve(model="m", **{name: value})
    before = get_defaults()
    with pytest.raises(ConfigError, match=key):
        configure(**{name: value})
    assert get_defaults() == before  # nothing half-applied


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("batch_size", "calibrated"),
        ("batch_size", None),
        ("batch_size", 1),
        ("rpm", 0.5),
        ("timeout", 1),
        ("canaries", 0),
        ("params", {"temperature": 0, "max_tokens": 3}),
        ("response_format", "json_object"),
        ("errors", "raise"),
    ],
)
def test_good_values_are_kept_as_given(name: str, value: Any) -> None:
    assert getattr(resolve(model="m", **{name: value}), name) == value


def test_every_option_has_a_default_and_the_key_is_not_shown() -> None:
    assert all(hasattr(Options(), f.name) for f in fields(Options))
    shown = repr(resolve(model="m", api_key="sk-secret-value"))
    assert "sk-secret-value" not in shown and "model='m'" in shown


def test_the_typed_options_and_the_dataclass_name_the_same_options() -> None:
    """``ApplyOptions`` (what type checkers see) and ``Options`` (what runs) are written
    out separately today; a new option must land in both."""
    # ``schema`` is an argument of apply itself (with unnest/prefix), carried in Options.
    assert set(llmframe.ApplyOptions.__annotations__) == {f.name for f in fields(Options)} - {"schema"}
