"""Rate limits: how close llmframe runs to an endpoint's RPM and TPM, against two baselines.

Run ``python -m benchmarks.rate_limits [--scale 0.1]``. Every variant gets a
fresh fake server with the same limits: RPM 1,200 and TPM 300,000, enforced
over a short burst window (``--burst-seconds``, 1 s by default, as OpenAI
enforces per-minute limits over short periods) and answering after
0.2 s + 0.01 s per output token. One request per row (``batch_size=1``).
2,000 rows: most are short (~50 tokens, RPM binds), one contiguous block in
the middle is long (~420 tokens, TPM binds), so a run has an RPM phase, a TPM
phase and an RPM phase again.

Variants:

- **naive gather**: ``asyncio.gather`` over every row with ``openai.AsyncOpenAI``
  at its defaults (2 SDK retries honoring ``retry-after``, 1,000 connections),
  as a user would first write it (``return_exceptions=True``, so that the
  rows that did succeed can be counted).
- **sequential loop**: one ``await`` after another, on 200 rows spread evenly
  over the 2,000 (the same mix), because 2,000 x ~0.25 s would take minutes.
- **llmframe, limits given**: ``df.llm.apply(..., rpm=1200, tpm=300_000)``.
- **llmframe, limits learned**: no ``rpm`` / ``tpm``; learned from the headers.
- **llmframe + faults**: limits given; 5 % 5xx, 1 % hangs (the server hangs
  30 s, llmframe's ``timeout=3``), 1 % garbage bodies.
- **llmframe, two calls**: two threads, each ``df.llm.apply`` on 500 rows
  (1,000 of the 2,000, evenly spread, alternating between the calls) with the
  full ``rpm`` / ``tpm``, at the same time on the same key. Half the rows keep
  the whole benchmark under ~8 minutes.

For each: correct rows/s (and as a multiple of the sequential loop), requests/s and
tokens/s over the window the server was busy as a fraction of the limits,
the fraction of the binding limit (see ``_common.Rates``), 429s, and answers
checked against ``expected_answer(rendered prompt)``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import openai

from benchmarks._common import (
    MODEL,
    Rates,
    achieved_rates,
    add_standard_arguments,
    apply_on_server,
    command_line,
    format_table,
    machine,
    rate_timeline,
    run_header,
    save_json,
    scaled,
)
from llmframe._tokens import count_messages, get_tokenizer
from llmframe.testing import FakeServer, Faults, expected_answer

TEMPLATE = "Classify the sentiment of this review as positive, negative or neutral: {review}"

ROWS = 2_000
#: The sequential loop runs on this many rows, spread evenly, so that it ends in under a minute.
SEQUENTIAL_ROWS = 200
#: The two concurrent calls share every other row (half each), to keep the whole run short.
TWO_CALLS_ROWS = 1_000
#: The long rows: this slice of the run (as fractions of the rows) binds TPM.
LONG_SPAN = (0.45, 0.60)
SHORT_WORDS = 22  # ~50 tokens with the template: RPM binds
LONG_WORDS = 380  # ~420 tokens: TPM binds (5,000 tokens/s / 420 = ~12 requests/s < 20)

RPM = 1_200
TPM = 300_000
BURST_SECONDS = 1.0
LATENCY = 0.2
LATENCY_PER_TOKEN = 0.01

FAULTS = Faults(error_rate=0.05, hang_rate=0.01, garbage_rate=0.01)
TIMEOUT = 3.0  # llmframe's timeout= in the faults variant
HANG_SECONDS = 30.0  # how long the server hangs: far past the timeout

#: What llmframe must reach (its targets).
TARGET_BINDING = 0.90
TARGET_429_SHARE = 0.01

# fmt: off
_VOCABULARY = [
    "battery", "screen", "delivery", "price", "quality", "sound", "camera", "charger", "cable",
    "box", "manual", "warranty", "seller", "refund", "color", "size", "weight", "grip", "button",
    "strap", "fabric", "zipper", "pocket", "handle", "wheel", "lid", "seal", "smell", "taste",
    "texture", "flavor", "portion", "service", "support", "update", "app", "signal", "range",
    "speed", "noise", "heat", "cold", "light", "dark", "soft", "hard", "loud", "quiet", "cheap",
    "sturdy", "flimsy", "broken", "perfect", "fine", "great", "awful", "decent", "lovely",
    "solid", "poor", "excellent", "terrible", "okay", "worth", "late", "early", "fast", "slow",
]
# fmt: on

VARIANTS = ("naive", "sequential", "given", "learned", "faults", "two_calls")
LABELS = {
    "naive": "naive gather (openai SDK)",
    "sequential": "sequential loop",
    "given": "llmframe, limits given",
    "learned": "llmframe, limits learned",
    "faults": "llmframe + faults",
    "two_calls": "llmframe, 2 calls at once",
}


@dataclass(frozen=True)
class Settings:
    """One run's sizes and the fake server's behaviour."""

    rows: int
    sequential_rows: int
    two_calls_rows: int
    rpm: float
    tpm: float
    burst_seconds: float
    latency: float
    latency_per_token: float
    timeout: float
    hang_seconds: float
    faults: Faults

    def server(self, name: str, *, faults: bool = False) -> FakeServer:
        """A fresh server for one variant. Its own API key gives it its own llmframe
        limiter even if the OS hands out a port an earlier variant used."""
        return FakeServer(
            rpm=self.rpm,
            tpm=self.tpm,
            burst_seconds=self.burst_seconds,
            latency=self.latency,
            latency_per_token=self.latency_per_token,
            faults=self.faults if faults else None,
            hang_seconds=self.hang_seconds,
            api_keys=f"bench-{name}-{time.monotonic_ns()}",
        )


@dataclass
class Outcome:
    """What one variant did, as measured by the client and by the server."""

    name: str
    rows: int
    seconds: float
    correct: int
    requests: int
    rate_limited: int
    rates: Rates
    client: dict[str, Any] = field(default_factory=dict)
    timeline: list[tuple[float, float, float, int]] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        """Correctly answered rows per second: a row lost to an error does not count."""
        return self.correct / self.seconds if self.seconds > 0 else 0.0

    @property
    def share_429(self) -> float:
        return self.rate_limited / self.requests if self.requests else 0.0


# -- the data ---------------------------------------------------------------------


def make_reviews(n: int, seed: int = 7) -> list[str]:
    """``n`` distinct reviews; those in ``LONG_SPAN`` are long."""
    rng = random.Random(seed)
    start, end = round(n * LONG_SPAN[0]), round(n * LONG_SPAN[1])
    reviews = []
    for i in range(n):
        words = LONG_WORDS if start <= i < end else SHORT_WORDS
        # The row number keeps every review distinct: equal rows would be asked once.
        reviews.append(f"#{i}: " + " ".join(rng.choice(_VOCABULARY) for _ in range(words)))
    return reviews


def prompts_of(reviews: Sequence[str]) -> list[str]:
    return [TEMPLATE.format(review=r) for r in reviews]


def count_correct(answers: Sequence[Any], prompts: Sequence[str]) -> int:
    return sum(1 for a, p in zip(answers, prompts, strict=True) if a == expected_answer(p))


# -- the variants ---------------------------------------------------------------------


def _outcome(
    name: str,
    server: FakeServer,
    settings: Settings,
    seconds: float,
    answers: Sequence[Any],
    prompts: Sequence[str],
    client: dict[str, Any] | None = None,
) -> Outcome:
    log = server.stats.snapshot()["log"]
    return Outcome(
        name=name,
        rows=len(prompts),
        seconds=seconds,
        correct=count_correct(answers, prompts),
        requests=len(log),
        rate_limited=sum(1 for r in log if r.status == 429),
        rates=achieved_rates(
            log, rpm=settings.rpm, tpm=settings.tpm, burst_seconds=settings.burst_seconds
        ),
        client=client or {},
        timeline=rate_timeline(log),
    )


async def _naive(server: FakeServer, prompts: Sequence[str]) -> list[Any]:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key)

    async def one(prompt: str) -> str | None:
        reply = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}]
        )
        return reply.choices[0].message.content

    try:
        return await asyncio.gather(*(one(p) for p in prompts), return_exceptions=True)
    finally:
        await client.close()


async def _sequential(server: FakeServer, prompts: Sequence[str]) -> list[Any]:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key)
    answers: list[Any] = []
    try:
        for prompt in prompts:
            try:
                reply = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": prompt}]
                )
                answers.append(reply.choices[0].message.content)
            except openai.OpenAIError as exc:
                answers.append(exc)
    finally:
        await client.close()
    return answers


def _errors_by_kind(answers: Sequence[Any]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for a in answers:
        if isinstance(a, BaseException):
            kinds[type(a).__name__] = kinds.get(type(a).__name__, 0) + 1
    return kinds


def run_sdk(name: str, settings: Settings, prompts: Sequence[str]) -> Outcome:
    """The naive gather or the sequential loop, with the openai SDK at its defaults."""
    runner = _naive if name == "naive" else _sequential
    with settings.server(name) as server:
        started = time.perf_counter()
        answers = asyncio.run(runner(server, prompts))
        seconds = time.perf_counter() - started
        return _outcome(
            name, server, settings, seconds, answers, prompts, {"errors": _errors_by_kind(answers)}
        )


def _apply(
    server: FakeServer, reviews: Sequence[str], **options: Any
) -> tuple[list[Any], dict[str, Any]]:
    run = apply_on_server(server, TEMPLATE, "review", reviews, batch_size=1, cache=False, **options)
    summary = {
        k: v
        for k, v in run.report.to_dict().items()
        if k not in ("errors", "latencies") and not isinstance(v, list)
    }
    return run.answers, summary


def run_llmframe(name: str, settings: Settings, reviews: Sequence[str]) -> Outcome:
    limits = {} if name == "learned" else {"rpm": settings.rpm, "tpm": settings.tpm}
    extra: dict[str, Any] = {"timeout": settings.timeout} if name == "faults" else {}
    with settings.server(name, faults=name == "faults") as server:
        started = time.perf_counter()
        answers, report = _apply(server, reviews, **limits, **extra)
        seconds = time.perf_counter() - started
        return _outcome(name, server, settings, seconds, answers, prompts_of(reviews), report)


def run_two_calls(settings: Settings, reviews: Sequence[str]) -> Outcome:
    """Two ``apply`` calls in two threads at once, on the same endpoint, key and model,
    each told the full limits: the shared limiter must keep them within them together."""
    # Alternate rows, so that both calls reach the long block together.
    halves = [list(reviews[0::2]), list(reviews[1::2])]
    results: list[tuple[list[Any], dict[str, Any]] | BaseException | None] = [None, None]
    with settings.server("two_calls") as server:
        barrier = threading.Barrier(2)

        def call(i: int) -> None:
            try:
                barrier.wait()
                results[i] = _apply(server, halves[i], rpm=settings.rpm, tpm=settings.tpm)
            except BaseException as exc:  # reported below, in the main thread
                results[i] = exc

        threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        for r in results:
            if isinstance(r, BaseException):
                raise r
        done = [r for r in results if isinstance(r, tuple)]
        answers = done[0][0] + done[1][0]
        prompts = prompts_of(halves[0] + halves[1])
        client = {f"call_{i}": report for i, (_, report) in enumerate(done)}
        return _outcome("two_calls", server, settings, seconds, answers, prompts, client)


# -- the table ---------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def targets(outcome: Outcome) -> dict[str, bool]:
    """The targets that apply to this variant (none for the baselines)."""
    if outcome.name in ("naive", "sequential"):
        return {}
    checks = {"100% correct": outcome.correct == outcome.rows}
    if outcome.name != "faults":  # with faults, the target is correct answers only
        checks["429s <= 1%"] = outcome.share_429 <= TARGET_429_SHARE
    if outcome.name in ("given", "learned"):
        binding = outcome.rates.binding_fraction or 0.0
        checks = {f"binding >= {TARGET_BINDING:.0%}": binding >= TARGET_BINDING, **checks}
    return checks


def table(outcomes: Sequence[Outcome]) -> str:
    baseline = next((o for o in outcomes if o.name == "sequential"), None)
    header = [
        "variant", "rows", "seconds", "ok rows/s", "vs loop", "req/s %RPM", "tok/s %TPM",
        "binding %", "requests", "429s", "429 %", "correct", "targets",
    ]  # fmt: skip
    rows = []
    for o in outcomes:
        speedup = (
            f"{o.rows_per_second / baseline.rows_per_second:.1f}x"
            if baseline is not None and baseline.rows_per_second > 0
            else "-"
        )
        checks = targets(o)
        missed = [name for name, ok in checks.items() if not ok]
        verdict = "-" if not checks else ("met" if not missed else "MISSED " + "; ".join(missed))
        rows.append(
            [
                LABELS[o.name],
                o.rows,
                o.seconds,
                o.rows_per_second,
                speedup,
                _pct(o.rates.rpm_fraction),
                _pct(o.rates.tpm_fraction),
                _pct(o.rates.binding_fraction),
                o.requests,
                o.rate_limited,
                f"{100 * o.share_429:.1f}%",
                f"{100 * o.correct / o.rows:.1f}%" if o.rows else "-",
                verdict,
            ]
        )
    return format_table(header, rows)


def describe(settings: Settings, reviews: Sequence[str]) -> list[str]:
    tokenizer = get_tokenizer(MODEL)
    sizes = [
        count_messages([{"role": "user", "content": p}], tokenizer) for p in prompts_of(reviews)
    ]
    long = [s for s in sizes if s * settings.rpm > settings.tpm]
    short = [s for s in sizes if s * settings.rpm <= settings.tpm]
    f = settings.faults
    lines = [
        f"server:  fake OpenAI server, RPM {settings.rpm:,.0f}, TPM {settings.tpm:,.0f}, "
        f"burst_seconds={settings.burst_seconds:g} (buckets hold {settings.burst_seconds:g} s of "
        f"each limit), latency {settings.latency:g} s + {settings.latency_per_token:g} s per "
        "output token; a fresh server per variant",
        f"rows:    {settings.rows:,}, one request each (batch_size=1); "
        f"{len(short):,} short (~{_mean(short):.0f} prompt tokens: RPM binds), "
        f"{len(long):,} long in one block in the middle (~{_mean(long):.0f} tokens: TPM binds); "
        f"tokens counted with {tokenizer.name}",
        f"loop:    the sequential loop runs on {settings.sequential_rows:,} of the {settings.rows:,} "
        "rows (evenly spread: the same mix), as a full pass would take minutes",
        f"faults:  {f.error_rate:.0%} 5xx, {f.hang_rate:.0%} hangs ({settings.hang_seconds:g} s; "
        f"llmframe timeout={settings.timeout:g} s), {f.garbage_rate:.0%} garbage bodies",
        f"2 calls: two threads at once, each df.llm.apply on {settings.two_calls_rows // 2:,} rows "
        f"({settings.two_calls_rows:,} of the {settings.rows:,}, evenly spread, alternating between "
        "the calls) with the full rpm=/tpm=, on the same endpoint, key and model",
    ]
    return lines


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


FOOTNOTES = (
    "req/s %RPM, tok/s %TPM: what the server admitted over the window it was busy (first request "
    "in to last answer out), divided by the limit; neither reaches 100% when RPM binds in one "
    "phase and TPM in another.",
    "binding %: how long a perfect client needs to send the same requests in the same order, "
    "each at the first instant the server's buckets admit it, divided by how long this client "
    "took (first to last admission): 100% = whichever limit binds is kept saturated.",
    "429s: counted by the server, as a share of all requests it got. correct: answers equal to "
    "expected_answer(rendered prompt). ok rows/s: correct answers per second of the variant's "
    "wall time. vs loop: ok rows/s over the sequential loop's.",
)


# -- the plot ------------------------------------------------------------------------


def plot(outcomes: Sequence[Outcome], settings: Settings, path: Path) -> Path | None:
    """Requests/s and tokens/s per second of each variant, as a fraction of the limits."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    shown = [o for o in outcomes if o.timeline]
    fig, axes = plt.subplots(len(shown), 1, figsize=(10, 2.2 * len(shown)), squeeze=False)
    rps = settings.rpm / 60
    for ax, o in zip(axes[:, 0], shown, strict=True):
        t = [p[0] for p in o.timeline]
        ax.step(t, [p[1] / rps for p in o.timeline], where="post", label="requests / RPM")
        ax.step(t, [p[2] / (settings.tpm / 60) for p in o.timeline], where="post",
                label="tokens / TPM")  # fmt: skip
        ax.bar(t, [p[3] / rps for p in o.timeline], width=1.0, align="edge", color="red",
               alpha=0.3, label="429s / RPM")  # fmt: skip
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_ylim(0, 1.6)
        ax.set_title(LABELS[o.name], fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
    axes[0, 0].legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("seconds since the first request")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- main ------------------------------------------------------------------------------


def _every_nth(rows: Sequence[str], n: int) -> list[str]:
    """About ``n`` rows spread evenly over ``rows``, so they keep its mix of short and long."""
    step = max(1, len(rows) // n)
    return list(rows[::step][:n])


def run(settings: Settings, variants: Sequence[str], log: Callable[[str], None]) -> list[Outcome]:
    reviews = make_reviews(settings.rows)
    outcomes = []
    for name in variants:
        log(f"running: {LABELS[name]} ...")
        if name == "naive":
            outcome = run_sdk(name, settings, prompts_of(reviews))
        elif name == "sequential":
            outcome = run_sdk(
                name, settings, prompts_of(_every_nth(reviews, settings.sequential_rows))
            )
        elif name == "two_calls":
            outcome = run_two_calls(settings, _every_nth(reviews, settings.two_calls_rows))
        else:
            outcome = run_llmframe(name, settings, reviews)
        log(f"         {outcome.seconds:.1f} s, {outcome.correct}/{outcome.rows} correct, "
            f"{outcome.rate_limited} 429s")  # fmt: skip
        outcomes.append(outcome)
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.rate_limits", description=__doc__.split("\n\n")[0]
    )
    add_standard_arguments(parser)
    parser.add_argument(
        "--burst-seconds",
        type=float,
        default=BURST_SECONDS,
        help="how many seconds of each limit the fake server's buckets hold (default: 1)",
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)}",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not save the PNG plot")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")

    settings = Settings(
        rows=scaled(ROWS, args.scale),
        sequential_rows=scaled(SEQUENTIAL_ROWS, args.scale),
        two_calls_rows=scaled(TWO_CALLS_ROWS, args.scale, minimum=2),
        rpm=RPM,
        tpm=TPM,
        burst_seconds=args.burst_seconds,
        latency=LATENCY,
        latency_per_token=LATENCY_PER_TOKEN,
        timeout=TIMEOUT,
        hang_seconds=HANG_SECONDS,
        faults=FAULTS,
    )
    started = datetime.now(timezone.utc)
    command = command_line("benchmarks.rate_limits", argv)
    info = machine()
    clock = time.perf_counter()
    outcomes = run(settings, variants, lambda line: print(line, flush=True))
    total = time.perf_counter() - clock

    print()
    print(run_header(command, started, info))
    for line in describe(settings, make_reviews(settings.rows)):
        print(line)
    print()
    print(table(outcomes))
    print()
    for note in FOOTNOTES:
        print(note)
    print(f"total time: {total:.0f} s")

    payload = {
        "benchmark": "rate_limits",
        "command": command,
        "date": started,
        "machine": info,
        "settings": asdict(settings),
        "scale": args.scale,
        "total_seconds": total,
        "variants": [
            {
                **asdict(o),
                "label": LABELS[o.name],
                "rows_per_second": o.rows_per_second,
                "share_429": o.share_429,
                "targets": targets(o),
            }
            for o in outcomes
        ],
    }
    path = save_json("rate_limits", payload, args.out)
    print(f"saved:   {path}")
    if not args.no_plot:
        png = plot(outcomes, settings, path.with_suffix(".png"))
        print(f"plot:    {png}" if png else "plot:    skipped (matplotlib is not installed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
