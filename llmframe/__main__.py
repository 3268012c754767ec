"""``python -m llmframe``: the demo and the cache tools.

    python -m llmframe demo [--rows 300]        enrich a frame against the built-in fake server
    python -m llmframe cache info  [--path P]   what the cache holds: answers, and embeddings (embedding_*)
    python -m llmframe cache clear [--path P]   delete the segments (answers and embeddings) and dead logs
    python -m llmframe cache compact [--path P] fold dead logs, merge segments, drop superseded errors
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence

__all__ = ["main"]

_REVIEWS = [
    "Arrived quickly and works perfectly, very happy",
    "Broke after two days, complete waste of money",
    "It is fine, does what it says",
    "Absolutely love it, would buy again",
    "Terrible customer service and the box was damaged",
    "Average quality for the price",
    "Excellent build, great value",
    "Stopped working, awful experience",
    "Okay I guess, nothing special",
    "Fantastic! Five stars",
]

_POSITIVE = ("love", "great", "excellent", "fantastic", "happy", "perfect", "five stars")
_NEGATIVE = ("broke", "waste", "terrible", "awful", "damaged", "stopped")


def demo_sentiment(prompt: str) -> str:
    """The demo's fake model: a keyword rule, so the demo's answers look like answers."""
    text = prompt.lower()
    if any(w in text for w in _NEGATIVE):
        return "negative"
    if any(w in text for w in _POSITIVE):
        return "positive"
    return "neutral"


def _demo(rows: int) -> int:
    import pandas as pd

    import llmframe
    from llmframe.testing import FakeServer

    df = pd.DataFrame(
        {
            "review_id": range(rows),
            "review": [f"{_REVIEWS[i % len(_REVIEWS)]} (order {i})" for i in range(rows)],
        }
    )
    with FakeServer(rpm=3000, tpm=1_000_000, latency=0.05, answer_fn=demo_sentiment) as server, \
            tempfile.TemporaryDirectory() as cache_dir:  # fmt: skip
        out = df.llm.apply(
            "Classify the sentiment of this product review as positive, negative or neutral. "
            "Answer with one word.\n\nReview: {review}",
            output="sentiment",
            model="gpt-4o-mini",
            base_url=server.base_url,
            api_key=server.api_key,
            cache=cache_dir,
            progress=False,
        )
        print(out.head(10).to_string())
        report = llmframe.last_report()
        print()
        print(report)
        print(f"fake server: {server.stats.requests} requests for {rows} rows")
    return 0


def _cache(args: argparse.Namespace) -> int:
    # llmframe.cache_info, clear_cache and compact_cache: the verbs add only printing.
    from ._cache_admin import cache_info, clear_cache, compact_cache, resolve_cache_dir

    path = resolve_cache_dir(args.path or True)
    assert path is not None
    if args.action == "info":
        print(json.dumps(cache_info(path), indent=2, default=str))
    elif args.action == "clear":
        print(f"removed {clear_cache(path)} file(s) (segments and dead processes' logs) from {path}")
    else:
        print(json.dumps(compact_cache(path), indent=2, default=str))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmframe", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="enrich a frame against the built-in fake server (no API key)")
    demo.add_argument("--rows", type=int, default=300)
    cache = sub.add_parser("cache", help="inspect or maintain the cache (answers and embeddings)")
    cache.add_argument("action", choices=["info", "clear", "compact"])
    cache.add_argument("--path", help="cache folder (default: LLMFRAME_CACHE_DIR or the user cache)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args.rows)
    return _cache(args)


if __name__ == "__main__":
    sys.exit(main())
