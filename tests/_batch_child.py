"""A child process for tests/test_batch_resume.py: one batch-mode call against a fake server.

Usage: ``python tests/_batch_child.py CONFIG.json``. The config holds ``base_url``,
``api_key``, ``cache``, ``rows`` (the frame's column "review": "review <n>") and ``result``:
the child submits, writes the job id to ``result``, then waits to be killed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

TEMPLATE = "Classify the sentiment of: {review}"
MODEL = "gpt-4o-mini"


def main(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    import pandas as pd

    import llmframe  # noqa: F401  (registers df.llm)

    df = pd.DataFrame({"review": [f"review {n}" for n in config["rows"]]})
    options = {"model": MODEL, "base_url": config["base_url"], "api_key": config["api_key"],
               "cache": config["cache"], "progress": False}  # fmt: skip
    result = Path(config["result"])
    job = df.llm.submit(TEMPLATE, output="sentiment", **options)
    result.write_text(json.dumps({"job": job.id}))
    time.sleep(60)  # killed here, with the batch in flight
    return 1

if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
