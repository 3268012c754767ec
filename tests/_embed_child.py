"""A child process for tests/test_embed_resume.py: one ``df.llm.embed`` run against a fake server.

Usage: ``python tests/_embed_child.py BASE_URL API_KEY CACHE ROWS``: embeds the texts
``"text <n>"`` for n in range(ROWS), 10 a request, 2 requests at a time, into CACHE.
Any llmframe cache warning is an error here, but the one about a killed process's log
that ends in a torn record.
"""

from __future__ import annotations

import sys
import warnings

MODEL = "text-embedding-3-small"
DIMENSIONS = 8


def text(n: int) -> str:
    return f"text {n}"


def main(base_url: str, api_key: str, cache: str, rows: int) -> int:
    warnings.filterwarnings("error", message="llmframe cache")
    warnings.filterwarnings("default", message="llmframe cache: the log .* incomplete record")
    import polars as pl

    import llmframe  # noqa: F401  (registers df.llm)

    df = pl.DataFrame({"t": [text(n) for n in range(rows)]})
    df.llm.embed("t", output="vec", model=MODEL, dimensions=DIMENSIONS, base_url=base_url, api_key=api_key,
                 cache=cache, max_batch_items=10, max_concurrency=2, progress=False)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
