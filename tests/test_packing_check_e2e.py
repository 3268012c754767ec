"""The default path packs only where packed answers agree: measured over real HTTP."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pandas as pd
import pytest

from llmframe import _check, _check_plan
from llmframe._capabilities import MEMORY
from llmframe._requests import (
    DEFAULT_ANSWER_TOKENS,
    LEARNED_OUTPUT_SLACK,
    PACKED_TOKENS_PER_ROW,
    RequestBuilder,
)
from llmframe.testing import Degrade, FakeServer, expected_answer

# A task worth packing: its instructions, repeated in every one-row request, cost more than
# the packed format's ids and the check (a bare "What is the capital of {country}?" does not:
# see test_a_short_prompt_is_not_packed_where_that_is_dearer).
TEMPLATE = (
    "You answer geography questions for a school quiz. Give the capital city of the country "
    "named below: the seat of its government, as an atlas in English would spell it. If the "
    "country has more than one capital, give the one its constitution names first. Answer with "
    "the city's name alone, with no other words, no punctuation and no explanation.\n\nCountry: {country}"
)


def run(server: FakeServer, countries: list[str], template: str = TEMPLATE, **extra: Any) -> tuple[list[Any], Any]:
    # Not conftest's apply_column: the warning must point at the line that calls apply, here.
    options: dict[str, Any] = {
        "model": "gpt-4o-mini", "base_url": server.base_url, "api_key": server.api_key,
        "progress": False, "cache": False,
    }  # fmt: skip
    options.update(extra)
    out = pd.DataFrame({"country": countries}).llm.apply(template, **options)
    return [None if pd.isna(v) else v for v in out["answer"].tolist()], out.llm.report


def countries(n: int, tag: str = "country") -> list[str]:
    return [f"{tag}-{i}" for i in range(n)]


def want(names: list[str]) -> list[str]:
    return [expected_answer(TEMPLATE.format(country=c)) for c in names]


def test_a_model_that_loses_its_place_is_run_one_row_with_one_warning(fake_server_factory: Any) -> None:
    # Every packed item past the third is shifted by one: valid JSON, every id, wrong answers.
    server = fake_server_factory(degrade=Degrade(error_per_item=0.0, shift_after=3))
    names = countries(150)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, report = run(server, names)
    assert got == want(names)  # nothing wrong slipped through: the check refused packing
    assert report.batch_size_final == 1
    assert all(a < 0.95 for a in report.packing_agreement.values())
    assert report.packing_reason.startswith("one row per request: packed answers did not agree")
    said = [w for w in caught if "did not agree" in str(w.message)]
    assert len(said) == 1 and said[0].filename == __file__  # points at the user's line
    # The cost of finding out: the trial requests (the 10 sampled rows with 10 new ones at
    # 20, then the sampled rows 5 at a time), the packed requests of new rows sent ahead of
    # the verdict (the format's small probe, then at most one wave), then one row each: every
    # row packed ahead was asked again (held until the verdict, or its reply refused at once
    # by its canary), none of those answers kept: each of the 150 rows went alone once.
    assert _check_plan.check_rows(150) == 10
    assert report.packing_agreement.keys() == {20, 5}
    assert report.check_requests == 3
    ahead = sum(1 for r in server.stats.log if r.n_items > 1) - report.check_requests
    assert 1 <= ahead <= 1 + 32
    assert report.ahead_rows >= _check.PROBE_ROWS and 0 < report.ahead_again <= report.ahead_rows
    assert server.stats.requests == 150 + 3 + ahead


def test_a_sturdy_model_packs_and_the_check_costs_under_3_percent(fake_server_factory: Any) -> None:
    server = fake_server_factory()
    names = countries(10_000)
    got, report = run(server, names)
    assert got == want(names)
    assert report.batch_size_final == 20 and report.packing_agreement == {20: 1.0}
    default_tokens = report.prompt_tokens + report.completion_tokens
    # The same rows packed by 20 with no check and no canaries, as the baseline.
    _, plain = run(server, names, batch_size=20, canaries=0)
    plain_tokens = plain.prompt_tokens + plain.completion_tokens
    assert default_tokens <= 1.03 * plain_tokens, (default_tokens, plain_tokens)
    assert report.canary_rows > 0 and report.check_tokens > 0


def test_the_verdict_is_remembered_for_the_same_task(fake_server_factory: Any) -> None:
    server = fake_server_factory()
    run(server, countries(100))
    server.reset_stats()
    got, report = run(server, countries(100, "other"))
    assert got == want(countries(100, "other"))
    assert report.check_requests == 0 and "earlier run" in report.packing_reason
    # A few rows alone to seed the canaries, then packed by 20.
    assert server.stats.requests == _check_plan.REMEMBERED_WARMUP_ROWS + 5


def test_a_remembered_verdict_packs_while_the_canaries_are_seeded(fake_server_factory: Any) -> None:
    # The size is known: packed requests need not wait for the warm-up's one-row answers.
    server = fake_server_factory()
    run(server, countries(100))
    server.configure(latency=0.3)
    server.reset_stats()
    got, _ = run(server, countries(100, "other"))
    assert got == want(countries(100, "other"))
    log = server.stats.snapshot()["log"]
    alone = [r for r in log if r.n_items == 1]
    packed = [r for r in log if r.n_items > 1]
    assert len(alone) == _check_plan.REMEMBERED_WARMUP_ROWS and len(packed) == 5
    assert min(r.t_start for r in packed) < min(r.t_end for r in alone)  # sent before any came back


def test_a_refusal_is_remembered_too(fake_server_factory: Any) -> None:
    server = fake_server_factory(degrade=Degrade(error_per_item=0.0, shift_after=3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(server, countries(60))
    server.reset_stats()
    with pytest.warns(UserWarning, match="did not agree"):
        got, report = run(server, countries(60, "other"))
    assert got == want(countries(60, "other"))
    assert server.stats.requests == 60 and report.check_requests == 0


def test_small_frames_go_one_row_without_a_check(fake_server_factory: Any) -> None:
    server = fake_server_factory()
    names = countries(_check_plan.SMALL_FRAME_ROWS)
    got, report = run(server, names)
    assert got == want(names)
    assert server.stats.requests == len(names) and report.check_requests == 0
    assert "too few to check packing" in report.packing_reason


def test_a_fixed_batch_size_is_not_checked(fake_server_factory: Any) -> None:
    server = fake_server_factory(degrade=Degrade(error_per_item=0.0, shift_after=3))
    got, report = run(server, countries(100), batch_size=10)
    assert report.check_requests == 0 and report.batch_size_final == 10
    assert sum(g != w for g, w in zip(got, want(countries(100)), strict=True)) > 50  # as asked


def test_a_short_prompt_is_not_packed_where_that_is_dearer(fake_server_factory: Any) -> None:
    server = fake_server_factory()
    names = countries(100)
    short = "What is the capital of {country}?"
    got, report = run(server, names, short)
    assert got == [expected_answer(short.format(country=c)) for c in names]
    assert server.stats.requests == 100 and report.check_requests == 0
    assert report.packing_reason.startswith("one row per request: packing 20 rows per request would cost more")
    assert "id lines ~$" in report.packing_reason and "than one row per request (~$" in report.packing_reason


def test_what_a_packed_row_took_is_remembered_with_the_verdict(
    fake_server_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run that checked packing stores what a packed row took (``row_output``) beside
    its verdict; the next run's first packed requests reserve that, not the 16-token guess
    (whose TPM pacing held a second process's first burst back), and its first packed
    reply replaces it."""
    server = fake_server_factory()
    run(server, countries(100))
    [verdict] = MEMORY.get(MEMORY.key(server.base_url, "gpt-4o-mini"))["verdicts"].values()
    learned = verdict["row_output"]
    log = [r for r in server.stats.snapshot()["log"] if r.n_items > 1]
    per_row = [r.completion_tokens / r.n_items for r in log]
    assert min(per_row) * 0.9 <= learned <= max(per_row) * 1.1  # what replies took, roughly

    built: list[tuple[int | None, int, bool]] = []
    original = RequestBuilder.build

    def build(self: RequestBuilder, jobs: Any, *args: Any, **kwargs: Any) -> Any:
        request = original(self, jobs, *args, **kwargs)
        if request.packed:
            built.append((request.reserved_output, len(jobs), self.remembered_output))
        return request

    monkeypatch.setattr(RequestBuilder, "build", build)
    server.reset_stats()
    got, report = run(server, countries(200, "other"), max_concurrency=2)  # later requests after replies
    assert got == want(countries(200, "other")) and "earlier run" in report.packing_reason
    reserved, n, remembered = built[0]
    assert remembered and reserved == math.ceil(n * learned * LEARNED_OUTPUT_SLACK) + 8
    assert reserved < n * (DEFAULT_ANSWER_TOKENS + PACKED_TOKENS_PER_ROW) + 8  # below the guess
    assert not built[-1][2]  # a reply of this run's took over
