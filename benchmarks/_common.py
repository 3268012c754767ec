"""What every benchmark script shares: scale, machine, achieved rates, a table, JSON results.

A benchmark script is ``python -m benchmarks.<name> [--scale S] [--out DIR]``.
It measures llmframe and a baseline in the same run against the fake server,
prints one plain-text table with the command, the machine and the date above
it, and saves everything it measured as JSON under ``benchmarks/out/``
(gitignored)::

    parser = argparse.ArgumentParser(description=__doc__)
    add_standard_arguments(parser)
    args = parser.parse_args(argv)
    rows = scaled(2_000, args.scale)                 # 2,000 rows at --scale 1, 20 at 0.01
    ...
    rates = achieved_rates(server.stats.log, rpm=1_200, tpm=300_000)
    print(run_header(command_line("benchmarks.rate_limits", argv), started))
    print(format_table(["variant", "rows/s"], [["llmframe", 19.7]]))
    save_json("rate_limits", {"machine": machine(), ...}, args.out)

**Scale.** ``--scale 1`` is the size the benchmark is specified at (and what
its numbers in the docs come from); every row count is multiplied by the
scale through :func:`scaled`, while rates, latencies and limits stay as they
are, so a small scale is the same experiment, shorter. The smoke test runs
each script at a tiny scale so that none of them rots.

**Rows and runs.** :func:`phrase_rows` makes the synthetic rows (the same on
every call), and :func:`apply_on_server` is the one ``df.llm.apply`` against a
fake server that the benchmarks time and check.

**Achieved rates** come from the server's own request log, over the window in
which it was busy (first request in to last answer out), so client start-up
and shutdown do not dilute them, and a client cannot claim a rate the server
did not see.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # at run time only on use: the cache benchmark's measuring processes import
    # this module before their memory baseline, and llmframe.testing pulls in aiohttp
    from llmframe import RunReport
    from llmframe.testing import FakeServer
    from llmframe.testing._stats import RequestRecord

__all__ = [
    "MODEL",
    "OUT_DIR",
    "Applied",
    "Rates",
    "achieved_rates",
    "add_standard_arguments",
    "apply_on_server",
    "command_line",
    "describe_machine",
    "format_table",
    "ideal_send_seconds",
    "machine",
    "phrase_rows",
    "rate_timeline",
    "run_header",
    "save_json",
    "scaled",
]

#: The model every benchmark asks for (the fake server answers any name; prices follow it).
MODEL = "gpt-4o-mini"

#: Where results go unless ``--out`` says otherwise (gitignored).
OUT_DIR = Path(__file__).resolve().parent / "out"

#: Packages whose versions explain a result; missing ones are left out.
PACKAGES = (
    "llmframe",
    "openai",
    "httpx",
    "httpx2",
    "aiohttp",
    "pandas",
    "polars",
    "pyarrow",
    "tiktoken",
    "numpy",
)

# Statuses the server answered without admitting the request against its limits.
_NOT_ADMITTED = frozenset({400, 401, 429})


# -- scale and arguments --------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_standard_arguments(parser: argparse.ArgumentParser) -> None:
    """``--scale`` (row counts multiplied by it; 1 is the specified size) and ``--out``."""
    parser.add_argument(
        "--scale",
        type=_positive_float,
        default=1.0,
        help="multiply every row count by this (1 = the size the benchmark is specified at)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=OUT_DIR,
        help=f"folder for the JSON results (default: {OUT_DIR})",
    )


def scaled(n: int, scale: float, minimum: int = 1) -> int:
    """``n`` rows at this scale, never fewer than ``minimum``.

    >>> scaled(2_000, 0.1), scaled(200, 0.001), scaled(200, 0.001, minimum=4)
    (200, 1, 4)
    """
    return max(minimum, round(n * scale))


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that reproduces this run, as a user would type it."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", "-m", module, *args])


# -- rows and runs --------------------------------------------------------------


def phrase_rows(
    n: int, parts: Sequence[Sequence[str]], *, step: int = 1, distinct: bool = False
) -> list[tuple[str, ...]]:
    """``n`` rows of one phrase from each of ``parts``, the same on every call.

    Row ``i`` picks by the mixed-radix digits of ``i * step`` modulo the number of
    combinations, the first part changing fastest. A ``step`` coprime with that
    number visits every combination once before any repeats, in a scattered order;
    ``distinct=True`` refuses to go past that.

    >>> phrase_rows(5, ("ab", "xy"))
    [('a', 'x'), ('b', 'x'), ('a', 'y'), ('b', 'y'), ('a', 'x')]
    >>> phrase_rows(4, ("ab", "xy"), step=3, distinct=True)
    [('a', 'x'), ('b', 'y'), ('a', 'y'), ('b', 'x')]
    """
    sizes = [len(part) for part in parts]
    total = math.prod(sizes)
    if distinct and math.gcd(step, total) != 1:
        raise ValueError(f"step {step} shares a factor with the {total} combinations: rows repeat")
    if distinct and n > total:
        raise ValueError(f"at most {total} distinct rows, asked for {n}")
    rows = []
    for i in range(n):
        j = i * step % total
        row = []
        for part, size in zip(parts, sizes, strict=True):
            j, r = divmod(j, size)
            row.append(part[r])
        rows.append(tuple(row))
    return rows


@dataclasses.dataclass(frozen=True)
class Applied:
    """One ``df.llm.apply`` against a fake server."""

    answers: list[Any]  #: one per row, ``None`` where the row got none
    report: RunReport
    seconds: float  #: the call alone, not building the frame


def apply_on_server(
    server: FakeServer,
    template: str,
    column: str,
    values: Sequence[Any],
    *,
    model: str = MODEL,
    api_key: str | None = None,
    **options: Any,
) -> Applied:
    """``df.llm.apply(template, ...)`` over a pandas frame whose ``column`` holds ``values``,
    against ``server``, with progress off; ``options`` go to ``apply`` as they are.

    ``api_key`` defaults to the server's. A fresh one gives the run a limiter of its own:
    limiters are shared per (base URL, key, model), and the OS may hand a later
    server the port of an earlier one.
    """
    import pandas as pd

    import llmframe  # noqa: F401  (registers df.llm)

    df = pd.DataFrame({column: list(values)})
    start = time.perf_counter()
    out = df.llm.apply(
        template,
        output="answer",
        model=model,
        base_url=server.base_url,
        api_key=server.api_key if api_key is None else api_key,
        progress=False,
        **options,
    )
    seconds = time.perf_counter() - start
    report = out.llm.report
    if report is None:
        raise RuntimeError("apply returned a frame without its run report")
    answers = [None if pd.isna(a) else a for a in out["answer"].tolist()]
    return Applied(answers, report, seconds)


# -- the machine ----------------------------------------------------------------


def git_commit() -> str | None:
    """The repository's short HEAD, with ``+dirty`` when llmframe/ has uncommitted changes."""
    repo = Path(__file__).parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=repo, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "llmframe")
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def _ram_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):  # Windows, or a platform without sysconf
        return None


def _usable_cores() -> int | None:
    # A container or taskset may allow fewer cores than the machine has.
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is None:
        return os.cpu_count()
    return len(getaffinity(0))


def machine() -> dict[str, Any]:
    """Cores, RAM, OS, Python and the versions of the packages that matter."""
    ram = _ram_bytes()
    versions: dict[str, str] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "ram_gb": None if ram is None else round(ram / 2**30, 1),
        "platform": platform.platform(terse=True),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "packages": versions,
    }


def describe_machine(info: Mapping[str, Any] | None = None) -> str:
    """One line: ``2 cores, 23.4 GB RAM, Linux-6.1 x86_64, Python 3.11.7; openai 1.2, ...``."""
    info = machine() if info is None else info
    cores = f"{info['cores']} cores"
    if info.get("usable_cores") not in (None, info["cores"]):
        cores += f" ({info['usable_cores']} usable)"
    ram = "RAM unknown" if info.get("ram_gb") is None else f"{info['ram_gb']} GB RAM"
    packages = ", ".join(f"{name} {version}" for name, version in info["packages"].items())
    return (
        f"{cores}, {ram}, {info['platform']} {info['machine']}, Python {info['python']}; {packages}"
    )


def run_header(command: str, started: datetime, info: Mapping[str, Any] | None = None) -> str:
    """The lines printed above a result table: command, machine, date."""
    return "\n".join(
        [
            f"command: {command}",
            f"machine: {describe_machine(info)}",
            f"date:    {started.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC",
        ]
    )


# -- achieved rates -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rates:
    """What the server admitted over the window it was busy, against its limits.

    ``requests`` and ``tokens`` count what the server charged to its limits:
    every request it admitted (answered, failed with a 5xx, hung, or answered
    with a garbage body) and their tokens (none for a 5xx, which the server
    refunds). ``rpm_fraction`` / ``tpm_fraction`` are the achieved rates over
    the busy window (first request in to last answer out) divided by the limits.

    When the binding limit changes during a run (long rows bind TPM, short
    rows RPM), neither of those reaches 1, so ``binding_fraction`` compares
    with a perfect client instead: one that sends the same requests in the
    same order, each at the first instant the server's buckets admit it (see
    :func:`ideal_send_seconds`). It is the seconds that client needs from the
    first request to the last, divided by the seconds the measured client
    needed between the same two (admission times, so the last answer's
    latency counts for neither). 1 means the client kept whichever limit
    bound at each moment saturated.
    """

    window_seconds: float
    requests: int
    answered: int
    rate_limited: int
    tokens: int
    requests_per_second: float
    tokens_per_second: float
    rpm_fraction: float | None
    tpm_fraction: float | None
    binding_fraction: float | None


def _charged_tokens(record: RequestRecord) -> int:
    if 500 <= record.status < 600:
        return 0
    return record.prompt_tokens + record.completion_tokens


def ideal_send_seconds(
    tokens: Sequence[int],
    *,
    rpm: float | None,
    tpm: float | None,
    burst_seconds: float | None,
) -> float:
    """Seconds from the first to the last of these requests for a perfect client.

    The client sends them in order, each at the first instant both of the
    server's buckets (holding ``burst_seconds`` of each limit, both full at
    the start) admit one request and its ``tokens``; a request larger than
    the token bucket waits for a full bucket and takes it into debt. With
    ``burst_seconds=None`` there is no burst at all: each request takes
    ``max(1 / requests per second, tokens / tokens per second)``.

    >>> ideal_send_seconds([100] * 5, rpm=60, tpm=60_000, burst_seconds=None)
    4.0
    >>> ideal_send_seconds([100] * 5, rpm=60, tpm=60_000, burst_seconds=2.0)
    3.0
    """
    rps = None if rpm is None else rpm / 60
    tps = None if tpm is None else tpm / 60
    if len(tokens) < 2:
        return 0.0
    if burst_seconds is None:
        return sum(
            max(0.0 if rps is None else 1 / rps, 0.0 if tps is None else t / tps)
            for t in tokens[1:]
        )
    request_cap = 0.0 if rps is None else max(1.0, rps * burst_seconds)
    token_cap = 0.0 if tps is None else tps * burst_seconds
    requests, token_level = request_cap, token_cap  # full at the start
    elapsed = 0.0
    for i, t in enumerate(tokens):
        wait = 0.0
        if i > 0:  # the first request defines the start
            if rps is not None:
                wait = max(wait, (1.0 - requests) / rps)
            if tps is not None:
                wait = max(wait, (min(t, token_cap) - token_level) / tps)
        elapsed += wait
        if rps is not None:
            requests = min(request_cap, requests + wait * rps) - 1.0
        if tps is not None:
            token_level = min(token_cap, token_level + wait * tps) - t
    return elapsed


def achieved_rates(
    log: Iterable[RequestRecord],
    *,
    rpm: float | None,
    tpm: float | None,
    burst_seconds: float | None = None,
) -> Rates:
    """Rates achieved against ``rpm`` / ``tpm`` (None: no such limit) from ``server.stats.log``.

    ``burst_seconds`` is the server's: how much of each limit its buckets hold
    (see :func:`ideal_send_seconds`; None for no burst).
    """
    records = list(log)
    if not records:
        return Rates(0.0, 0, 0, 0, 0, 0.0, 0.0, None, None, None)
    window = max(r.t_end for r in records) - min(r.t_start for r in records)
    admitted = sorted(
        (r for r in records if r.status not in _NOT_ADMITTED), key=lambda r: r.t_start
    )
    tokens = [_charged_tokens(r) for r in admitted]
    answered = sum(1 for r in admitted if r.status == 200 and r.n_items > 0)
    rate_limited = sum(1 for r in records if r.status == 429)
    span = admitted[-1].t_start - admitted[0].t_start if admitted else 0.0
    binding = None
    if span > 0 and (rpm is not None or tpm is not None):
        ideal = ideal_send_seconds(tokens, rpm=rpm, tpm=tpm, burst_seconds=burst_seconds)
        binding = ideal / span
    per_second = 1 / window if window > 0 else 0.0
    return Rates(
        window_seconds=window,
        requests=len(admitted),
        answered=answered,
        rate_limited=rate_limited,
        tokens=sum(tokens),
        requests_per_second=len(admitted) * per_second,
        tokens_per_second=sum(tokens) * per_second,
        rpm_fraction=None
        if rpm is None or window <= 0
        else len(admitted) * per_second / (rpm / 60),
        tpm_fraction=None if tpm is None or window <= 0 else sum(tokens) * per_second / (tpm / 60),
        binding_fraction=binding,
    )


def rate_timeline(
    log: Iterable[RequestRecord], bin_seconds: float = 1.0
) -> list[tuple[float, float, float, int]]:
    """Per time bin from the first request: ``(t, requests/s, tokens/s, 429s)``.

    Requests and tokens are counted when the server admitted them (their start).
    """
    records = list(log)
    if not records:
        return []
    t0 = min(r.t_start for r in records)
    n_bins = int((max(r.t_end for r in records) - t0) // bin_seconds) + 1
    requests = [0] * n_bins
    tokens = [0] * n_bins
    limited = [0] * n_bins
    for r in records:
        i = min(n_bins - 1, int((r.t_start - t0) // bin_seconds))
        if r.status == 429:
            limited[i] += 1
        elif r.status not in _NOT_ADMITTED:
            requests[i] += 1
            tokens[i] += _charged_tokens(r)
    return [
        (i * bin_seconds, requests[i] / bin_seconds, tokens[i] / bin_seconds, limited[i])
        for i in range(n_bins)
    ]


# -- output ---------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0 or abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: text left-aligned, numbers right-aligned, ``None`` as ``-``.

    Pass strings for cells that need their own format (``"97%"``).

    >>> print(format_table(["variant", "rows/s"], [["llmframe", 19.71], ["loop", 3.2]]))
    variant   rows/s
    --------  ------
    llmframe    19.7
    loop        3.20
    """
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [
        all(
            isinstance(row[i], (int, float)) or row[i] is None or _looks_numeric(row[i])
            for row in rows
        )
        for i in range(len(header))
    ]
    widths = [max([len(header[i]), *(len(row[i]) for row in cells)]) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line([str(h) for h in header]), rule, *(line(row) for row in cells)])


def _looks_numeric(value: Any) -> bool:
    """``"97%"``, ``"1,234"``, ``"12/200"``, ``"3.2x"`` align like numbers."""
    if not isinstance(value, str) or not value:
        return False
    return value.rstrip("%x").replace(",", "").replace(".", "").replace("/", "").isdigit()


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "_asdict"):  # a NamedTuple: keep its field names
        return _jsonable(value._asdict())
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no inf/nan
    if isinstance(value, (Path, datetime)):
        return str(value)
    return value


def save_json(name: str, payload: Mapping[str, Any], out_dir: Path | None = None) -> Path:
    """Write ``payload`` to ``<out_dir>/<name>-<UTC timestamp>.json``; return the path.

    Dataclasses, named tuples, paths and dates are converted; inf and nan become null.
    """
    folder = OUT_DIR if out_dir is None else Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = folder / f"{name}-{stamp}.json"
    path.write_text(json.dumps(_jsonable(payload), indent=2) + "\n", encoding="utf-8")
    return path
