"""Structured outputs on a real model: labels and a schema against free text, one run.

The same real server as ``bench.py`` (Qwen2.5-Coder-0.5B-Instruct Q4 under
llama.cpp's OpenAI-compatible server, which answers ``json_schema`` with a 500
and takes ``json_object``), the same countries, three ways of asking for the
continent (and the capital):

- **text**: ``bench.py``'s prompt, "Which continent is {country} in? Answer
  with one of: ...", one text column (the baseline);
- **classify**: ``df.llm.classify("Which continent is {country} in?", labels=...)``:
  the labels go in the schema, an answer outside them is asked again;
- **schema**: ``schema=Facts`` (``capital: str``, ``continent: Literal[...]``), two
  typed columns from one request per row (or per packed batch).

Each at ``batch_size=1`` and at llmframe's default (``batch_size=None``), every
run in a fresh cache folder. Per run: accuracy (normalized as in ``bench.py``),
nulls, failures by kind, requests, tokens per row, the response format the
endpoint ended with, and the packing decision.

Usage (the server must be running: ``bash benchmarks/real_model/server.sh start``)::

    python -m benchmarks.real_model.structured            # 100 rows, ~15 min on 2 cores
    python -m benchmarks.real_model.structured --rows 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel

import llmframe  # noqa: F401  (registers df.llm)
from benchmarks._common import describe_machine, format_table, git_commit, machine
from benchmarks.real_model.bench import DEFAULT_BASE_URL, TEMPLATES, countries, norm

LABELS = ["Africa", "Asia", "Europe", "North America", "South America", "Oceania", "Antarctica"]
Continent = Literal["Africa", "Asia", "Europe", "North America", "South America", "Oceania", "Antarctica"]


class Facts(BaseModel):
    capital: str
    continent: Continent


def _accuracy(answers: Sequence[Any], truths: Sequence[str], contains: bool = False) -> float:
    ok = 0
    for a, t in zip(answers, truths, strict=True):
        na, nt = norm(None if a is None or (isinstance(a, float) and a != a) else str(a)), norm(t)
        ok += bool(na) and (na == nt or (contains and nt in na))
    return ok / len(truths) if truths else 0.0


def run(way: str, batch_size: int | None, df: Any, options: dict[str, Any]) -> list[Any]:
    with tempfile.TemporaryDirectory(prefix="llmframe-real-structured-") as cache:
        started = time.monotonic()
        kw = {**options, "cache": cache, "batch_size": batch_size, "error_column": "error"}
        if way == "text":
            out = df.llm.apply(TEMPLATES["continent"], output="pred_continent", **kw)
        elif way == "classify":
            out = df.llm.classify("Which continent is {country} in?", labels=LABELS, output="pred_continent", **kw)
        else:
            out = df.llm.apply("Facts about the country {country}: its capital city and its continent.",
                               schema=Facts, prefix="pred_", **kw)  # fmt: skip
        seconds = time.monotonic() - started
    report = out.llm.report
    rows = len(df)
    capital = _accuracy(out["pred_capital"].tolist(), df["capital"].tolist(), True) if way == "schema" else None
    return [
        way, "auto" if batch_size is None else batch_size,
        f"{_accuracy(out['pred_continent'].tolist(), df['continent'].tolist()):.0%}",
        "-" if capital is None else f"{capital:.0%}",
        int(out["pred_continent"].isna().sum()),
        ", ".join(f"{k}={v}" for k, v in sorted(report.failures.items())) or "-",
        report.requests, f"{report.prompt_tokens / rows:.0f}", f"{report.completion_tokens / rows:.1f}",
        report.response_format or "-", f"{seconds:.0f}", (report.packing_reason or "-")[:70],
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL)
    parser.add_argument("--model", default="qwen-0.5b")
    parser.add_argument("--max-concurrency", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--ways", default="text,classify,schema")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)  # the offline tokenizer's notice
    df = countries(args.rows)
    options = {"model": args.model, "base_url": args.base_url, "api_key": "local", "progress": False,
               "params": {"temperature": 0}, "max_concurrency": args.max_concurrency, "timeout": args.timeout}  # fmt: skip
    print(f"# python -m benchmarks.real_model.structured {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"# {describe_machine(machine())}; commit {git_commit()}; {args.rows} countries; model {args.model}")
    header = ["way", "batch", "continent ok", "capital ok", "nulls", "failures", "requests",
              "in tok/row", "out tok/row", "format", "s", "packing"]  # fmt: skip
    rows = []
    for way in args.ways.split(","):
        for size in (1, None):
            rows.append(run(way, size, df, options))
            print(format_table(header, rows[-1:]), flush=True)
    print()
    print(format_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
