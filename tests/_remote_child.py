"""A child process for tests/test_remote_cache_s3.py: one ``df.llm.apply`` on a URL cache.

Usage: ``python tests/_remote_child.py CONFIG.json``. The config holds ``base_url``,
``api_key``, ``cache`` (a URL), ``cache_options``, ``rows`` (the row numbers: column
"review" is "review <n>"), ``batch_size``, ``max_concurrency``, ``result`` (where the
outcome goes as JSON), and optionally ``flush_seconds`` (the engine's flush interval),
``limiter`` and ``go`` (a file to wait for before calling apply). The outcome is
``{"answers": [...], "requests": n, "cached_rows": n}``. Any llmframe cache warning
is an error here.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

TEMPLATE = "Classify the sentiment of: {review}"
MODEL = "gpt-4o-mini"


def review(n: int) -> str:
    return f"review {n}"


def main(config_path: str) -> int:
    warnings.filterwarnings("error", message="llmframe cache")
    config = json.loads(Path(config_path).read_text())
    import pandas as pd

    import llmframe  # noqa: F401  (registers df.llm)
    from llmframe import _engine

    if config.get("flush_seconds") is not None:
        _engine.FLUSH_SECONDS = float(config["flush_seconds"])
    df = pd.DataFrame({"review": [review(n) for n in config["rows"]]})
    go = config.get("go")
    Path(config["result"] + ".started").touch()
    deadline = time.monotonic() + 300  # the other child may take long to start on a busy machine
    while go and not Path(go).exists():
        if time.monotonic() > deadline:
            raise SystemExit("the go file never appeared")
        time.sleep(0.005)
    out = df.llm.apply(
        TEMPLATE, output="sentiment", model=MODEL, base_url=config["base_url"], api_key=config["api_key"],
        cache=config["cache"], cache_options=config["cache_options"], batch_size=config["batch_size"],
        max_concurrency=config["max_concurrency"], progress=False, limiter=config.get("limiter"),
    )  # fmt: skip
    report = out.llm.report
    outcome = {"answers": out["sentiment"].tolist(), "requests": report.requests, "cached_rows": report.cached_rows}
    Path(config["result"]).write_text(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
