"""The body of one ``embed``: texts in, a ``(rows, dims)`` float32 matrix out.

The path of one call, as for ``apply`` (DESIGN.md), with the same parts:

1 texts    render, key, check the per-input limit                 _embed_texts
2 cache    look every key up at once (segments and logs);
           equal texts go once                                     _embed_cache
3 plan     pack the misses up to the item and token limits        _embed_plan
4 limiter  the endpoint's shared limiter: reserve the counted
           input tokens, settle with ``usage.prompt_tokens``        _endpoint, _reserve
5 client   one attempt, retried here so each passes the limiter    _attempts, _embed_client
6 cache    each reply's vectors logged on arrival, folded into a
           segment every 2 s                                       _embed_cache
7 report   rows, cached, requests, tokens, cost                     _report

A failure that would hit every request (401/403, 404 model, a connection
refused before any reply, vectors that change length between replies) stops
the run with one :class:`EndpointError`; any other failed request fails only
its rows (null + :class:`RowError`), after its retries, and a request the
endpoint refuses as a bad or too large request is split in halves first, so
one bad input fails alone. An interrupted run (Ctrl-C, a cancelled task)
reports its unfinished rows as ``cancelled`` row errors in the report
and re-raises; every vector it received is cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ._attempts import RetryPolicy, send_with_retries
from ._budget import Budget
from ._cache_admin import resolve_cache_dir
from ._client import UNREACHABLE, CallError
from ._config import Options
from ._embed_cache import EmbeddingCache, Found
from ._embed_client import EmbedClient, EmbedReply
from ._embed_output import vector_array
from ._embed_plan import EmbedBatch, EmbedPlanner
from ._embed_texts import EmbedTexts
from ._endpoint import Endpoint
from ._errors import AuthenticationError, EndpointError, RowError, RunError
from ._limiter import RateLimiter
from ._outcomes import progress_bar
from ._pricing import price_for
from ._report import RunReport, set_last_report
from ._tokens import get_tokenizer
from ._workers import drain, every, stopped

__all__ = ["EmbedResult", "EmbedSpec", "embed_run"]

#: Seconds between cache writes while a run goes: a crash loses at most this much.
FLUSH_SECONDS = 2.0


@dataclass(frozen=True)
class EmbedSpec:
    """What ``embed`` adds to the shared options."""

    dimensions: int | None = None
    truncate: bool = False
    max_input_tokens: int = 8192
    max_batch_items: int = 2048
    max_batch_tokens: int = 300_000


@dataclass
class EmbedResult:
    vectors: pa.Array | pa.ChunkedArray  # fixed_size_list<float32>[dims], null where no vector
    errors: list[RowError]
    report: RunReport


class _Unique:
    """The distinct keys still to embed: each key's text, tokens and the rows that share it."""

    def __init__(self, prepared: EmbedTexts, found: Found | None) -> None:
        digests = prepared.digests
        n = len(prepared.texts)
        self.of_row = np.full(n, -1, dtype=np.int64)
        first: dict[bytes, int] = {}
        self.keys: list[bytes] = []
        self.texts: list[str] = []
        self.duplicates = 0
        hit = found.positions >= 0 if found is not None else np.zeros(n, dtype=bool)
        for row in np.flatnonzero(~hit).tolist():
            if row in prepared.skipped:
                continue
            key = digests[16 * row : 16 * row + 16]
            index = first.get(key)
            if index is None:
                index = first[key] = len(self.keys)
                self.keys.append(key)
                self.texts.append(prepared.texts[row])  # type: ignore[arg-type]
            else:
                self.duplicates += 1
            self.of_row[row] = index
        self.counts = np.bincount(self.of_row[self.of_row >= 0], minlength=len(self.keys))

    def rows_of(self, uniques: list[int]) -> int:
        """How many rows these keys stand for."""
        return int(self.counts[uniques].sum())


class _EmbedRun:
    """One run's wiring: workers take batches from the planner and store the vectors."""

    def __init__(
        self, opts: Options, spec: EmbedSpec, unique: _Unique, client: EmbedClient, limiter: RateLimiter,
        cache: EmbeddingCache | None, report: RunReport, progress: object, dims: int | None,
        sleep: Callable[[float], Awaitable[None]], policy: RetryPolicy,
    ) -> None:  # fmt: skip
        self.opts, self.spec, self.unique, self.client, self.limiter = opts, spec, unique, client, limiter
        self.cache, self.report, self.progress, self.dims = cache, report, progress, dims
        self.sleep, self.policy = sleep, policy
        self.budget = Budget(opts.max_cost_usd, price_for(opts.model or "", opts.prices))
        tokenizer = get_tokenizer(opts.model)
        self.tokens = [tokenizer.count(t) for t in unique.texts]
        self.planner = EmbedPlanner(self.tokens, max_items=spec.max_batch_items, max_tokens=self.batch_tokens)
        self.chunks: list[tuple[list[int], np.ndarray]] = []
        self.failed: dict[int, tuple[str, str, int | None]] = {}  # unique -> (kind, message, status)
        self.fatal: CallError | None = None
        self.replies = 0
        self.settled = np.zeros(len(unique.keys), dtype=bool)  # a vector, or a failure

    def batch_tokens(self) -> int:
        tpm = self.limiter.tpm
        return min(self.spec.max_batch_tokens, int(tpm)) if tpm else self.spec.max_batch_tokens

    def take(self) -> EmbedBatch | None:
        return None if self.fatal is not None else self.planner.take()

    def fail(self, uniques: list[int], kind: str, message: str, status: int | None = None) -> None:
        for u in uniques:
            self.failed.setdefault(u, (kind, message, status))
        self.settled[uniques] = True
        self.progress.update(self.unique.rows_of(uniques))  # type: ignore[attr-defined]

    def stop(self, err: CallError) -> None:
        if self.fatal is None:
            self.fatal = err

    async def process(self, batch: EmbedBatch) -> None:
        try:
            reply = await send_with_retries(
                batch, self.attempt, policy=self.policy, sleep=self.sleep, budget=self.budget,
                report=self.report, rows=len(batch.texts), final=self.final,
            )  # fmt: skip
        except CallError as err:
            if err.fatal or self.final(err):
                self.stop(err)
                return self.fail(batch.texts, err.kind, err.message, err.status)
            if err.kind in ("too_large", "bad_request") and len(batch.texts) > 1:
                return self.planner.split(batch)  # one input may be why: it will fail alone
            return self.fail(batch.texts, err.kind, err.message, err.status)
        except Exception as exc:  # a bug must cost its rows, never the run
            return self.fail(batch.texts, "internal", f"unexpected {type(exc).__name__}: {exc}")
        self.accept(batch, reply)

    def final(self, err: CallError) -> bool:
        # Before any reply, a connection that cannot be opened is a dead endpoint, not a blip.
        return err.fatal or self.fatal is not None or (err.code == UNREACHABLE and not self.replies)

    async def attempt(self, batch: EmbedBatch) -> EmbedReply:
        async with self.limiter.reserve(batch.input_tokens, fallback_pause=lambda: self.policy.wait(0, {})) as slot:
            if self.fatal is not None:  # it came while this request waited for its slot
                slot.cancel()
                raise self.fatal
            self.report.requests += 1
            try:
                reply = await self.client.embed([self.unique.texts[i] for i in batch.texts],
                                                model=self.opts.model or "", dimensions=self.spec.dimensions)  # fmt: skip
            except CallError as err:
                self.report.rate_limited += err.kind == "rate_limit"
                raise
            slot.settle(reply.prompt_tokens, headers=reply.headers)
        return reply

    def accept(self, batch: EmbedBatch, reply: EmbedReply) -> None:
        self.replies += 1
        self.report.latencies.append(reply.latency)
        prompt = reply.prompt_tokens if reply.prompt_tokens is not None else batch.input_tokens
        self.report.add_usage(prompt, 0, self.budget.spend(prompt, 0))
        dims = reply.vectors.shape[1]
        if self.dims is None:
            self.dims = dims
        elif dims != self.dims:
            message = (f"the model's vectors changed length: {self.dims} values, then {dims} in a later reply; "
                       "pass dimensions= (if the model takes it) or check the endpoint")  # fmt: skip
            self.stop(CallError("endpoint", message, False, fatal=True))
            return self.fail(batch.texts, "endpoint", message)
        self.chunks.append((batch.texts, reply.vectors))
        self.settled[batch.texts] = True
        if self.cache is not None:
            self.cache.add(b"".join(self.unique.keys[i] for i in batch.texts), self.opts.model or "", reply.vectors)
        self.progress.update(self.unique.rows_of(batch.texts))  # type: ignore[attr-defined]


def _assemble(n: int, found: Found | None, run: _EmbedRun | None, dims: int | None) -> tuple[np.ndarray | None, np.ndarray]:
    """The output matrix (a row of zeros where there is no vector) and which rows have one."""
    valid = np.zeros(n, dtype=bool) if found is None else found.positions >= 0
    if dims is None:
        return None, valid
    if found is not None and found.hits == n and found.vectors.shape[0] == n:
        return found.vectors, valid  # a fully cached run: the lookup's rows are the output, in order
    matrix = np.zeros((n, dims), dtype=np.float32)
    if found is not None and found.hits:
        matrix[valid] = found.vectors[found.positions[valid]]
    if run is not None and run.chunks:
        fresh = np.zeros((len(run.unique.keys), dims), dtype=np.float32)
        has = np.zeros(len(run.unique.keys), dtype=bool)
        for uniques, vectors in run.chunks:
            fresh[uniques] = vectors
            has[uniques] = True
        rows = np.flatnonzero(run.unique.of_row >= 0)
        rows = rows[has[run.unique.of_row[rows]]]
        matrix[rows] = fresh[run.unique.of_row[rows]]
        valid[rows] = True
    return matrix, valid


def _row_errors(run: _EmbedRun) -> list[RowError]:
    """One error for each row whose text failed."""
    errors: list[RowError] = []
    if run.failed:
        of_row, failed = run.unique.of_row, run.failed
        for row in np.flatnonzero(of_row >= 0).tolist():
            why = failed.get(int(of_row[row]))
            if why is not None:
                errors.append(RowError(row, why[0], why[1], why[2]))
    return errors


async def embed_run(
    prepared: EmbedTexts, opts: Options, spec: EmbedSpec, *, null_rows: int,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, limiter: RateLimiter | None = None,
    policy: RetryPolicy | None = None,
) -> EmbedResult:  # fmt: skip
    """Embed every keyed row of ``prepared``; see the module docstring."""
    start = time.monotonic()
    n = len(prepared.texts)
    model = opts.model or ""
    report = RunReport(model=model, rows=n, null_rows=null_rows)
    folder = resolve_cache_dir(opts.cache, needs_local="embed")
    cache = EmbeddingCache(folder, flush_seconds=FLUSH_SECONDS) if folder is not None else None
    found = cache.lookup(prepared.digests, spec.dimensions) if cache is not None else None
    report.cached_rows = found.hits if found is not None else 0
    dims = found.vectors.shape[1] if found is not None and found.hits else None
    unique = _Unique(prepared, found)
    report.duplicate_rows = unique.duplicates
    errors = list(prepared.errors)
    progress = progress_bar(n, opts.progress)
    progress.update(n - int((unique.of_row >= 0).sum()) - len(errors))
    run: _EmbedRun | None = None
    client: EmbedClient | None = None
    flusher: asyncio.Task[None] | None = None
    try:
        if unique.keys:
            client = EmbedClient(client=opts.client, base_url=opts.base_url, api_key=opts.api_key,
                                 timeout=opts.timeout, max_connections=max(100, opts.max_concurrency))  # fmt: skip
            endpoint = Endpoint.of(model=model, base_url=opts.base_url, api_key=opts.api_key, client=opts.client)
            run = _EmbedRun(opts, spec, unique, client, limiter or endpoint.limiter(opts.rpm, opts.tpm, opts.limiter), cache,
                            report, progress, dims, sleep, policy or RetryPolicy(opts.max_attempts))  # fmt: skip
            if cache is not None:
                flusher = every(FLUSH_SECONDS / 2, cache.flush_if_due, sleep)
            await drain(run.take, run.process, opts.max_concurrency)
            too_large = run.planner.too_large
            if too_large:
                run.fail(too_large, "too_large", f"the text needs more tokens than one request may carry "
                                                 f"({run.batch_tokens()}, the TPM limit); shorten it or raise tpm=")  # fmt: skip
            if run.fatal is not None:
                run.fail(run.planner.stop(), run.fatal.kind, run.fatal.message, run.fatal.status)
            dims = run.dims
    except BaseException:
        # Interrupted (Ctrl-C, cancellation): unfinished rows are reported; the vectors that
        # arrived are in the log already, and in a segment once the cache closes below.
        if run is not None:
            run.fail(np.flatnonzero(~run.settled).tolist(), "cancelled", "the run was interrupted")
            report.errors = sorted(errors + _row_errors(run), key=lambda e: e.row)
            received = run.settled.copy()
            received[list(run.failed)] = False
            report.answered_rows = int(received[unique.of_row[unique.of_row >= 0]].sum())
        report.finish(time.monotonic() - start)
        set_last_report(report)
        raise
    finally:
        await stopped(flusher)
        if cache is not None:
            cache.close()
        progress.close()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
    if run is not None:
        errors.extend(_row_errors(run))
    if found is not None and found.aligned is not None:  # every row cached: the segments' own buffers
        column: pa.Array | pa.ChunkedArray = found.aligned
        valid = np.ones(n, dtype=bool)
    else:
        matrix, valid = _assemble(n, found, run, dims)
        column = vector_array(matrix, valid, dims or spec.dimensions)
    errors.sort(key=lambda e: e.row)
    report.errors = errors
    report.answered_rows = int(valid.sum()) - report.cached_rows
    report.finish(time.monotonic() - start)
    set_last_report(report)
    if run is not None and run.fatal is not None:
        fatal = run.fatal
        error = AuthenticationError if fatal.kind == "auth" else EndpointError
        raise error(f"{fatal.message} ({len(errors)} of {n} rows without a vector)", errors, report)
    if errors and opts.errors == "raise":
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(report.failures.items()))
        raise RunError(f"{len(errors)} of {n} rows failed ({kinds}); first: {errors[0]}. Every other row was "
                       "embedded and cached; run again to retry only the failed rows.", errors, report)  # fmt: skip
    return EmbedResult(column, errors, report)
