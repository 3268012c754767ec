"""A child process for tests/test_batch_resume.py: one batch-mode call against a fake server.

Usage: ``python tests/_batch_child.py CONFIG.json``. The config holds ``base_url``,
``api_key``, ``cache``, ``rows`` (the frame's column "review": "review <n>") and ``result``:
the child submits, writes the job id to ``result``, then waits to be killed. With ``crash``
(``before_upload``, ``after_upload``, ``before_create`` or ``after_create``) it kills itself
(SIGKILL) at that point of the first batch's submission instead: before its file is
uploaded or its batch created, or once the upload or the create has answered but before the
answer is written to the job's state.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

TEMPLATE = "Classify the sentiment of: {review}"
MODEL = "gpt-4o-mini"


def main(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    import pandas as pd

    import llmframe  # noqa: F401  (registers df.llm)

    df = pd.DataFrame({"review": [f"review {n}" for n in config["rows"]]})
    options = {"model": MODEL, "base_url": config["base_url"], "api_key": config["api_key"],
               "cache": config["cache"], "progress": False}  # fmt: skip
    if config.get("crash"):
        crash_at(config["crash"])
    result = Path(config["result"])
    job = df.llm.submit(TEMPLATE, output="sentiment", **options)
    result.write_text(json.dumps({"job": job.id}))
    time.sleep(60)  # killed here, with the batch in flight
    return 1

def crash_at(point: str) -> None:
    """Patch the Batch API client so that this process dies at ``point``."""
    from llmframe._batch_client import BatchClient

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    upload, create = BatchClient.upload, BatchClient.create

    async def patched_upload(self: BatchClient, name: str, data: bytes) -> str:
        if point == "before_upload":
            die()
        file_id = await upload(self, name, data)
        if point == "after_upload":
            die()
        return file_id

    async def patched_create(self: BatchClient, *args: Any, **kwargs: Any) -> Any:
        if point == "before_create":
            die()
        batch = await create(self, *args, **kwargs)
        if point == "after_create":
            die()
        return batch

    BatchClient.upload = patched_upload  # type: ignore[method-assign]
    BatchClient.create = patched_create  # type: ignore[method-assign]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
