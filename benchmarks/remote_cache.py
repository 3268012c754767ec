"""Remote cache benchmark: the same run and its cached re-run with ``cache=`` a local folder
(the baseline), a ``file://`` URL, ``memory://`` and ``s3://`` (moto's local S3 server).

Every variant runs ``df.llm.apply`` over the same distinct rows against one fake server
at full speed (latency 0, no limits, ``batch_size=50``), in this process: first with an
empty cache (every row sent, the answers written as they come), then again (every row a
cache hit, zero requests). The table gives each call's seconds and rows/s, and its time
against the local folder's, measured in the same run after an untimed warm-up run (the
tokenizer, the HTTP client); every answer is checked. ``s3://``
is left out when moto or s3fs is not installed (``pip install 'llmframe[test]'``).

Usage::

    python -m benchmarks.remote_cache                # 20,000 rows
    python -m benchmarks.remote_cache --scale 0.05   # 1,000 rows
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks._common import (
    add_standard_arguments,
    apply_on_server,
    command_line,
    format_table,
    machine,
    run_header,
    save_json,
    scaled,
)

TEMPLATE = "Classify the sentiment of: {review}"


@contextmanager
def s3_bucket() -> Iterator[tuple[str, dict[str, Any]] | None]:
    """A fresh bucket on moto's server, as a cache URL and its ``cache_options``; ``None``
    without moto or s3fs."""
    try:
        import s3fs
        from moto.server import ThreadedMotoServer
    except ImportError:
        yield None
        return
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        options = {"key": "bench", "secret": "bench", "client_kwargs": {
            "endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"}}  # fmt: skip
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3fs.S3FileSystem(**options).call_s3("create_bucket", Bucket=bucket)
        yield f"s3://{bucket}/cache/", options
    finally:
        server.stop()


def measure(server: Any, work: str, s3: tuple[str, dict[str, Any]] | None, reviews: list[str]) -> list[dict[str, Any]]:
    """Each variant's cold run and cached re-run against ``server``, every answer checked."""
    from llmframe.testing import expected_answer

    want = [expected_answer(TEMPLATE.format(review=r)) for r in reviews]
    variants: list[tuple[str, str, dict[str, Any] | None]] = [
        ("local folder", str(Path(work) / "local"), None),
        ("file://", f"file://{work}/file-url", None),
        ("memory://", f"memory://bench-{uuid.uuid4().hex[:8]}/cache", None),
    ]
    if s3 is not None:
        variants.append(("s3:// (moto)", *s3))
    # Warm-up, not timed: the tokenizer, the HTTP client and the packing verdict.
    apply_on_server(server, TEMPLATE, "review", reviews, cache=str(Path(work) / "warm-up"), batch_size=50)
    results: list[dict[str, Any]] = []
    for name, url, options in variants:
        for call in ("cold", "cached"):
            before = server.stats.requests
            done = apply_on_server(server, TEMPLATE, "review", reviews, cache=url, cache_options=options,
                                   batch_size=50, max_concurrency=32)  # fmt: skip
            requests = server.stats.requests - before
            if done.answers != want or (call == "cached" and requests):
                raise SystemExit(f"{name} {call}: wrong answers, or requests on a cached re-run ({requests})")
            results.append({"cache": name, "call": call, "rows": len(reviews), "seconds": done.seconds,
                            "requests": requests, "cached_rows": done.report.cached_rows})  # fmt: skip
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.remote_cache", description=__doc__.split("\n")[0])
    add_standard_arguments(parser)
    args = parser.parse_args(argv)
    started = datetime.now(timezone.utc)
    reviews = [f"review {n}" for n in range(scaled(20_000, args.scale, minimum=10))]

    from llmframe.testing import FakeServer

    user_cache = os.environ.get("LLMFRAME_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="llmframe-remote-bench-") as work, FakeServer() as server, s3_bucket() as s3:
        os.environ["LLMFRAME_CACHE_DIR"] = str(Path(work) / "user-cache")  # this machine's folders for the URLs
        try:
            results = measure(server, work, s3, reviews)
        finally:
            if user_cache is None:
                os.environ.pop("LLMFRAME_CACHE_DIR", None)
            else:
                os.environ["LLMFRAME_CACHE_DIR"] = user_cache
    local = {r["call"]: r["seconds"] for r in results if r["cache"] == "local folder"}
    table = [[r["cache"], r["call"], f"{r['rows']:,}", f"{r['seconds']:.2f}", f"{r['rows'] / r['seconds']:,.0f}",
              f"{r['seconds'] / local[r['call']]:.2f}x", r["requests"]] for r in results]  # fmt: skip
    print(run_header(command_line("benchmarks.remote_cache", argv), started))
    print(format_table(["cache", "call", "rows", "seconds", "rows/s", "x local time", "requests"], table))
    if not any(r["cache"].startswith("s3") for r in results):
        print("s3:// left out: moto or s3fs is not installed")
    save_json("remote_cache", {"machine": machine(), "results": results}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
