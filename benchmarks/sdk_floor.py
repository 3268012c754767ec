"""The client CPU a packed request costs on its way through the SDK, with no llmframe work around it.

``benchmarks/throughput.py`` measures the whole path per row. This measures the part of
it llmframe does not own: one packed request of the throughput workload (20 rows, the
JSON format, captured from a real run) sent again and again, 32 in flight, to the fake
server in a process of its own, two ways in one process, alternated round by round:

- **aiohttp**: a bare ``aiohttp`` post of the same bytes (the transport under the SDK);
- **SDK**: llmframe's ``ChatClient.complete``, which a run uses for every request: the
  ``openai`` client's ``post`` on its aiohttp transport, the body encoded, the reply read.

The SDK's CPU per request over the rows a request carries is a ceiling on a run's rows
per CPU-second with no other work at all, and the 20,000 rows/CPU-s target leaves
``20 rows x 50 us`` a request for everything: what the SDK takes of it is the table's
last column. Usage::

    python -m benchmarks.sdk_floor                  # 5 rounds of 2,000 requests each way
    python -m benchmarks.sdk_floor --requests 500 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks._common import OUT_DIR, command_line, format_table, machine, run_header, save_json
from benchmarks.throughput import MODEL, TARGET_ROWS_PER_SECOND, TEMPLATE, ServerProcess, codes

IN_FLIGHT = 32


def capture(base_url: str, api_key: str) -> tuple[list[dict[str, str]], dict[str, Any], int]:
    """A packed request of the usual size in a 200-row run (not the probe, not one with a
    canary): its messages, options and rows."""
    import pandas as pd

    from llmframe import _client

    seen: list[tuple[list[dict[str, str]], dict[str, Any]]] = []
    original = _client.ChatClient.complete

    async def record(self: Any, messages: Any, **options: Any) -> Any:
        if options.get("response_format"):
            seen.append(([dict(m) for m in messages], options))
        return await original(self, messages, **options)

    _client.ChatClient.complete = record  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as cache:
            pd.DataFrame({"code": codes(200)}).llm.apply(TEMPLATE, output="answer", model=MODEL, base_url=base_url,
                                                         api_key=api_key, cache=cache, progress=False)  # fmt: skip
    finally:
        _client.ChatClient.complete = original  # type: ignore[method-assign]
    if not seen:
        raise RuntimeError("the run sent no packed request")
    usual = Counter(_rows(sent[0]) for sent in seen).most_common(1)[0][0]  # the batch size, no canary
    messages, options = next(sent for sent in seen if _rows(sent[0]) == usual)
    return messages, options, usual


def _rows(messages: list[dict[str, str]]) -> int:
    return messages[-1]["content"].count('{"id":')


async def _timed(send: Any, n: int) -> float:
    """CPU seconds of ``n`` sends, ``IN_FLIGHT`` at a time."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one() -> None:
        async with gate:
            await send()

    cpu = time.process_time()
    await asyncio.gather(*(one() for _ in range(n)))
    return time.process_time() - cpu


async def measure(base_url: str, api_key: str, messages: Any, options: dict[str, Any], n: int,
                  rounds: int) -> dict[str, list[float]]:  # fmt: skip
    import aiohttp

    from llmframe._client import ChatClient, json_bytes, request_body

    body = json_bytes(request_body(messages, model=options["model"], params=options.get("params"),
                                   response_format=options.get("response_format")))  # fmt: skip
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    client = ChatClient(base_url=base_url, api_key=api_key, max_connections=IN_FLIGHT)
    per_request: dict[str, list[float]] = {"aiohttp": [], "SDK": []}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=IN_FLIGHT)) as session:

        async def bare() -> None:
            async with session.post(base_url + "/chat/completions", data=body, headers=headers) as response:
                await response.read()

        async def sdk() -> None:
            await client.complete(messages, **options)

        ways = {"aiohttp": bare, "SDK": sdk}
        for send in ways.values():  # connections open, caches warm
            await _timed(send, 2 * IN_FLIGHT)
        for r in range(rounds):
            order = list(ways) if r % 2 == 0 else list(reversed(ways))
            for name in order:
                per_request[name].append(await _timed(ways[name], n) / n)
    await client.aclose()
    return per_request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2_000, help="requests each way per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"folder for the JSON (default: {OUT_DIR})")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.rounds < 1:
        parser.error("--requests and --rounds must be >= 1")
    warnings.simplefilter("ignore", RuntimeWarning)  # the once-only offline-tokenizer notice
    started = datetime.now(timezone.utc)
    with ServerProcess() as server:
        messages, options, rows = capture(server.base_url, server.api_key)
        per_request = asyncio.run(measure(server.base_url, server.api_key, messages, options, args.requests,
                                          args.rounds))  # fmt: skip
    budget = rows / TARGET_ROWS_PER_SECOND  # CPU seconds a request may take, all included
    base = statistics.median(per_request["aiohttp"])
    table = []
    for name, seconds in per_request.items():
        median = statistics.median(seconds)
        table.append([name, f"{median * 1e6:,.0f}", f"{min(seconds) * 1e6:,.0f}-{max(seconds) * 1e6:,.0f}",
                      f"{median / base:.1f}x", f"{rows / median:,.0f}", f"{median / budget:.0%}"])  # fmt: skip
    print(run_header(command_line("benchmarks.sdk_floor", argv), started))
    print(f"one packed request of {rows} rows, {IN_FLIGHT} in flight, {args.rounds} rounds of {args.requests:,} "
          f"each way; the target's budget: {budget * 1e6:,.0f} us of client CPU a request")  # fmt: skip
    print(format_table(["path", "us CPU a request (median)", "range", "vs aiohttp",
                        f"rows/CPU-s at {rows} a request, no other work", "of the target's budget"], table))  # fmt: skip
    path = save_json("sdk_floor", {"machine": machine(), "rows_per_request": rows, "requests": args.requests,
                                   "rounds": args.rounds, "cpu_seconds_per_request": per_request}, args.out)  # fmt: skip
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
