"""Options: what ``apply`` was given, else ``configure()``, else the environment, else a default."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from ._errors import ConfigError

__all__ = [
    "LIMITERS", "UNSET", "BatchSize", "Errors", "Mode", "OnExpired", "Options", "ResponseFormat", "configure",
    "get_defaults", "resolve",
]  # fmt: skip


class _Unset:
    """Tells "not passed" from ``None`` (``None`` can be a real value, e.g. rpm=None)."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()

Errors = Literal["null", "raise"]
ResponseFormat = Literal["auto", "json_schema", "json_object", "text", "lines"]
#: None: automatic (checked); an int: at most that many rows per request; "calibrated".
BatchSize = int | Literal["calibrated"] | None
#: "live": requests sent as they are planned; "batch": through the Batch API (half price, up to 24 h).
Mode = Literal["live", "batch"]
#: What a batch does with requests that expired or were left unfinished: another batch, or the live path.
OnExpired = Literal["retry", "live"]


@dataclass(frozen=True)
class Options:
    """Every option of ``apply``; see the README's API reference for each."""

    model: str | None = None
    system: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    client: Any = field(default=None, repr=False)
    params: Mapping[str, Any] | None = None
    max_concurrency: int = 32
    errors: Errors = "null"
    progress: bool = True
    rpm: float | None = None
    tpm: float | None = None
    max_attempts: int = 6
    timeout: float = 60.0
    batch_size: BatchSize = None
    max_batch_tokens: int | None = None
    cache: bool | str | os.PathLike[str] = True
    #: fsspec's storage options for a ``cache=`` URL (``key``, ``secret``, ``client_kwargs``...);
    #: never stored, logged or shown.
    cache_options: Mapping[str, Any] | None = field(default=None, repr=False)
    max_cost_usd: float | None = None
    prices: Mapping[str, tuple[float, float]] | None = None
    response_format: ResponseFormat = "auto"
    canaries: int | None = None
    error_column: str | None = None
    #: Who shares the RPM/TPM quota: "process" (None: the default, or $LLMFRAME_LIMITER),
    #: "machine" (every process on this machine) or "redis://host:port/db" (every process
    #: on every machine using that Redis); see :data:`LIMITERS`.
    limiter: str | None = None
    #: The answer's form (:class:`~llmframe._schema.OutputSchema`), from ``schema=`` or
    #: ``labels=`` of one call; never a process-wide default.
    schema: Any = None
    #: How requests travel: "live" (the default) or "batch", through the Batch API (:mod:`._batch_job`).
    mode: Mode = "live"
    #: Batch mode: requests that expired or were left unfinished go in another batch ("retry")
    #: or through the live path ("live").
    on_expired: OnExpired = "retry"
    #: Batch mode: USD per million tokens (input, output) at the Batch API's rate, by model;
    #: a model not in it is billed at half its live price (OpenAI's and Azure's discount).
    batch_prices: Mapping[str, tuple[float, float]] | None = None


#: The accepted values of ``limiter=``, besides a ``redis://`` or ``rediss://`` URL.
LIMITERS = ("process", "machine")

_OPTION_NAMES = frozenset(f.name for f in fields(Options))
_lock = threading.Lock()
_defaults = Options()


def configure(**options: Any) -> None:
    """Set process-wide defaults for every later ``apply`` call.

    >>> import llmframe
    >>> llmframe.configure(model="gpt-4o-mini", rpm=500, tpm=200_000)

    Pass ``reset=True`` to return to the built-in defaults first.
    """
    global _defaults
    reset = options.pop("reset", False)
    if "schema" in options:
        raise ConfigError("schema= belongs to one call (apply, classify), not to configure()")
    unknown = set(options) - _OPTION_NAMES
    if unknown:
        raise ConfigError(
            f"unknown option(s) {sorted(unknown)}; known options: {sorted(_OPTION_NAMES)}"
        )
    with _lock:
        base = Options() if reset else _defaults
        new = replace(base, **options)
        _validate(new)
        _defaults = new


def get_defaults() -> Options:
    return _defaults


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return None
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not a number") from None


def resolve(**given: Any) -> Options:
    """Merge the options of one call over the configured defaults and the environment."""
    unknown = set(given) - _OPTION_NAMES
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)}")
    merged = replace(_defaults, **{k: v for k, v in given.items() if v is not UNSET})
    env: dict[str, Any] = {}
    if merged.model is None and os.environ.get("LLMFRAME_MODEL"):
        env["model"] = os.environ["LLMFRAME_MODEL"]
    if merged.rpm is None:
        env["rpm"] = _env_float("LLMFRAME_RPM")
    if merged.tpm is None:
        env["tpm"] = _env_float("LLMFRAME_TPM")
    if merged.limiter is None and os.environ.get("LLMFRAME_LIMITER"):
        env["limiter"] = os.environ["LLMFRAME_LIMITER"]
    if env:
        merged = replace(merged, **env)
    if not merged.model:
        raise ConfigError(
            "no model given: pass model='gpt-4o-mini' (or your endpoint's model name), "
            "call llmframe.configure(model=...), or set LLMFRAME_MODEL"
        )
    _validate(merged)
    return merged


def _validate_limiter(limiter: str | None) -> None:
    if limiter is None or limiter in LIMITERS:
        return
    import importlib.util

    from ._redis_limiter import INSTALL_HINT, is_redis_url, redacted

    if is_redis_url(limiter):
        if importlib.util.find_spec("redis") is None:
            raise ConfigError(f"limiter={redacted(limiter)!r} needs the redis package: {INSTALL_HINT}")
        return
    raise ConfigError(
        "limiter must be 'process' (this process only, the default), 'machine' (every process on "
        "this machine shares one quota) or a 'redis://host:port/db' URL (every process on every "
        f"machine using that Redis), got {limiter!r} (also read from $LLMFRAME_LIMITER)"
    )


def _validate(o: Options) -> None:
    _validate_limiter(o.limiter)
    if o.mode not in ("live", "batch"):
        raise ConfigError(f"mode must be 'live' or 'batch' (the Batch API), got {o.mode!r}")
    if o.on_expired not in ("retry", "live"):
        raise ConfigError(f"on_expired must be 'retry' (another batch) or 'live' (the live path), got {o.on_expired!r}")
    if o.batch_prices is not None and not isinstance(o.batch_prices, Mapping):
        raise ConfigError(f"batch_prices must map a model to (usd_per_1m_input, usd_per_1m_output), got {o.batch_prices!r}")
    if o.errors not in ("null", "raise"):
        raise ConfigError(f"errors must be 'null' or 'raise', got {o.errors!r}")
    if not isinstance(o.max_concurrency, int) or o.max_concurrency < 1:
        raise ConfigError(f"max_concurrency must be a positive int, got {o.max_concurrency!r}")
    if not isinstance(o.max_attempts, int) or o.max_attempts < 1:
        raise ConfigError(f"max_attempts must be an int >= 1, got {o.max_attempts!r}")
    if not (isinstance(o.timeout, (int, float)) and o.timeout > 0):
        raise ConfigError(f"timeout must be a positive number of seconds, got {o.timeout!r}")
    for name in ("rpm", "tpm", "max_cost_usd"):
        value = getattr(o, name)
        if value is not None and not (isinstance(value, (int, float)) and value > 0):
            raise ConfigError(f"{name} must be a positive number or None, got {value!r}")
    bs = o.batch_size
    if bs is not None and bs != "calibrated" and not (
        isinstance(bs, int) and not isinstance(bs, bool) and bs >= 1
    ):
        raise ConfigError(f"batch_size must be None (automatic), an int >= 1 or 'calibrated', got {bs!r}")
    if o.max_batch_tokens is not None and not (
        isinstance(o.max_batch_tokens, int) and o.max_batch_tokens > 0
    ):
        raise ConfigError(f"max_batch_tokens must be a positive int, got {o.max_batch_tokens!r}")
    if o.response_format == "lines" and o.schema is not None:
        raise ConfigError("response_format='lines' packs text answers; with schema= use 'auto' or a JSON mode")
    if o.response_format not in ("auto", "json_schema", "json_object", "text", "lines"):
        raise ConfigError(
            "response_format must be 'auto', 'json_schema', 'json_object', 'text' or 'lines', "
            f"got {o.response_format!r}"
        )
    if o.canaries is not None and (
        not isinstance(o.canaries, int) or isinstance(o.canaries, bool) or o.canaries < 0
    ):
        raise ConfigError(f"canaries must be None (automatic), or an int >= 0, got {o.canaries!r}")
    if o.error_column is not None and (not isinstance(o.error_column, str) or not o.error_column):
        raise ConfigError(f"error_column must be a column name or None, got {o.error_column!r}")
    if o.cache_options is not None and not isinstance(o.cache_options, Mapping):
        raise ConfigError(f"cache_options must be a dict of fsspec storage options, got {type(o.cache_options).__name__}")
    if o.params is not None and not isinstance(o.params, Mapping):
        raise ConfigError(f"params must be a dict of generation parameters, got {type(o.params).__name__}")
    if o.params:
        reserved = {"messages", "model", "stream", "n"} & set(o.params)
        if reserved:
            raise ConfigError(
                f"params may not set {sorted(reserved)}: llmframe sets the messages and model "
                "itself, and needs exactly one non-streamed answer per request"
            )
