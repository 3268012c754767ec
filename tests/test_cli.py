"""python -m llmframe: the demo and the cache tools."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pytest

from llmframe.__main__ import demo_sentiment, main
from llmframe.testing import FakeServer


def test_demo_runs_offline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--rows", "60"]) == 0
    out = capsys.readouterr().out
    assert "sentiment" in out and "60 rows" in out and "fake server:" in out
    assert "positive" in out and "negative" in out


def test_demo_model() -> None:
    assert demo_sentiment("Broke after a day") == "negative"
    assert demo_sentiment("Love it") == "positive"
    assert demo_sentiment("It arrived") == "neutral"


def test_cache_info_compact_clear(fake_server: FakeServer, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "c"
    df = pd.DataFrame({"t": [f"x{i}" for i in range(30)]})
    for batch_size in (1, 10):  # two runs: the second is all cache hits, so add new rows
        df2 = pd.DataFrame({"t": [f"y{batch_size}-{i}" for i in range(5)]})
        for frame in (df, df2):
            frame.llm.apply("T {t}", model="m", base_url=fake_server.base_url, api_key=fake_server.api_key,
                            cache=str(folder), progress=False, batch_size=batch_size)  # fmt: skip
    assert main(["cache", "info", "--path", str(folder)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["records"] == 40 and info["ok"] == 40
    assert main(["cache", "compact", "--path", str(folder)]) == 0
    compacted = json.loads(capsys.readouterr().out)
    assert compacted["segments_after"] == 1
    assert main(["cache", "clear", "--path", str(folder)]) == 0
    assert "removed 1 file" in capsys.readouterr().out
    assert main(["cache", "info", "--path", str(folder)]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 0


def test_cache_default_path_from_env(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LLMFRAME_CACHE_DIR", str(tmp_path / "envcache"))
    assert main(["cache", "info"]) == 0
    assert str(tmp_path / "envcache") in capsys.readouterr().out
