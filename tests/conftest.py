from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pandas as pd
import polars as pl
import pytest
from _alone import group_by_shared_fixtures, run_folder, turn
from _redis_server import redis_server_url, redis_url  # noqa: F401  (fixtures: one Redis per run and worker)

import llmframe


@pytest.fixture(scope="session", autouse=True)
def _tokenizer_loaded(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The tokenizer loaded once per test process, before any test's own cache folder exists:
    its ranks (``_tokens_ranks``) are stored where no test looks, not in whichever test's
    folder happened to load it first."""
    import warnings

    from llmframe._tokens import get_tokenizer

    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        patch.setenv("LLMFRAME_CACHE_DIR", str(tmp_path_factory.mktemp("tokenizer-cache")))
        warnings.simplefilter("ignore")
        get_tokenizer("gpt-4o-mini")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Any:
    """Each test starts from the built-in defaults, with its own cache folder and no key, and
    Ctrl-C handled as in a terminal (a shell's background job inherits SIGINT ignored, and
    ``_thread.interrupt_main()`` then does nothing)."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "LLMFRAME_MODEL", "LLMFRAME_RPM", "LLMFRAME_TPM",
                "LLMFRAME_LIMITER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LLMFRAME_CACHE_DIR", str(tmp_path / "cache"))
    llmframe.configure(reset=True)
    yield
    llmframe.configure(reset=True)
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture(params=["pandas", "polars"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_frame(backend: str) -> Callable[[dict[str, list[Any]]], Any]:
    def make(data: dict[str, list[Any]]) -> Any:
        return pd.DataFrame(data) if backend == "pandas" else pl.DataFrame(data, strict=False)

    return make


def column(df: Any, name: str) -> list[Any]:
    """A column as a list with nulls as None, for either backend."""
    if isinstance(df, pd.DataFrame):
        return [None if pd.isna(v) else v for v in df[name].tolist()]
    return list(df.get_column(name).to_list())


@pytest.fixture(autouse=True)
def _fresh_endpoint_memory() -> Any:
    """What endpoints taught is per test: fake servers reuse ports across tests."""
    from llmframe._capabilities import MEMORY

    MEMORY.clear()
    yield
    MEMORY.clear()


def apply_column(server: Any, template: str, name: str, values: list[Any], **extra: Any) -> tuple[list[Any], Any]:
    """``pd.DataFrame({name: values}).llm.apply(template)`` on ``server`` (gpt-4o-mini, no cache,
    no progress, ``extra`` on top): the answers (``None`` for nulls) and the report."""
    options: dict[str, Any] = {
        "model": "gpt-4o-mini", "base_url": server.base_url, "api_key": server.api_key,
        "progress": False, "cache": False,
    }  # fmt: skip
    options.update(extra)
    out = pd.DataFrame({name: values}).llm.apply(template, **options)
    return [None if pd.isna(v) else v for v in out["answer"].tolist()], out.llm.report


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    group_by_shared_fixtures(items)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    folder = run_folder(item.config)
    if folder is None:
        yield
        return
    with turn(folder, alone=item.get_closest_marker("alone") is not None):
        yield
