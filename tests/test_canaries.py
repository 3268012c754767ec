"""Canaries catch the packed errors that id checks cannot: shifted and guessed answers."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

import llmframe
from llmframe.testing import Degrade, FakeServer, Faults, expected_answer

TEMPLATE = "What is the capital of {country}?"


def run(server: FakeServer, n: int, **extra: Any) -> tuple[list[Any], list[str]]:
    countries = [f"country-{i}" for i in range(n)]
    options: dict[str, Any] = {
        "model": "gpt-4o-mini", "base_url": server.base_url, "api_key": server.api_key,
        "progress": False, "cache": False, "max_concurrency": 4,
    }  # fmt: skip
    options.update(extra)
    out = pd.DataFrame({"country": countries}).llm.apply(TEMPLATE, **options)
    got = [None if pd.isna(v) else v for v in out["answer"].tolist()]
    return got, [expected_answer(TEMPLATE.format(country=c)) for c in countries]


def test_without_canaries_shifted_answers_slip_through(fake_server_factory: Any) -> None:
    server = fake_server_factory(degrade=Degrade(error_per_item=0.0, shift_after=3))
    got, want = run(server, 100, batch_size=10)
    assert sum(g != w for g, w in zip(got, want, strict=True)) > 50  # silently wrong


def test_canaries_catch_every_shifted_batch(fake_server_factory: Any) -> None:
    server = fake_server_factory(degrade=Degrade(error_per_item=0.0, shift_after=3))
    got, want = run(server, 300, batch_size=10, canaries=1)
    assert got == want  # every final answer equals the one-row answer
    report = llmframe.last_report()
    assert report is not None
    # Every packed request of more than 3 items was shifted; each one must have been caught.
    packed_big = [r for r in server.stats.log if r.status == 200 and r.n_items > 3]
    assert report.canary_failures == len(packed_big)
    assert report.canary_failures >= 0.99 * len(packed_big) > 0


def test_canaries_catch_guessing_and_shrink(fake_server_factory: Any) -> None:
    """Random per-row errors are caught only as often as a canary is among them: canaries
    cut them down and shrink the batches, but calibration is the tool for this kind."""
    degrade = Degrade(error_per_item=0.08, start=2)
    plain_got, want = run(fake_server_factory(degrade=degrade), 200, batch_size=20)
    server = fake_server_factory(degrade=degrade)
    got, _ = run(server, 200, batch_size=20, canaries=2)
    wrong = sum(g != w for g, w in zip(got, want, strict=True))
    wrong_plain = sum(g != w for g, w in zip(plain_got, want, strict=True))
    assert wrong_plain > 150 and wrong < wrong_plain / 3
    report = llmframe.last_report()
    assert report is not None and report.canary_failures > 0
    assert report.batch_size_final is not None and report.batch_size_final < 20


def test_canary_rows_never_appear_in_output(fake_server: FakeServer) -> None:
    got, want = run(fake_server, 60, batch_size=10, canaries=3)
    assert got == want
    items = sum(r.n_items for r in fake_server.stats.log)
    assert items > 60  # canaries were sent ...
    assert len(got) == 60  # ... and only the frame's rows came back


def test_canaries_with_swapped_answers(fake_server_factory: Any) -> None:
    plain, want = run(fake_server_factory(faults=Faults(shuffle_rate=1.0), seed=4), 100, batch_size=5)
    server = fake_server_factory(faults=Faults(shuffle_rate=1.0), seed=4)
    got, _ = run(server, 100, batch_size=5, canaries=4)
    report = llmframe.last_report()
    assert report is not None and report.canary_failures > 0
    wrong = sum(g != w for g, w in zip(got, want, strict=True))
    assert wrong < sum(g != w for g, w in zip(plain, want, strict=True)) / 2


def test_calibrated_batch_size(fake_server_factory: Any, tmp_path: Any) -> None:
    server = fake_server_factory(degrade=Degrade(error_per_item=0.05, start=10))
    cache = str(tmp_path / "c")
    got, want = run(server, 120, batch_size="calibrated", cache=cache)
    assert got == want or sum(g != w for g, w in zip(got, want, strict=True)) <= 3
    report = llmframe.last_report()
    assert report is not None and report.batch_size_final is not None
    assert 1 < report.batch_size_final <= 10  # calibration found that packing beyond 10 costs quality
    before = server.stats.requests
    run(server, 120, batch_size="calibrated", cache=cache)
    assert server.stats.requests == before  # stored calibration + cached answers: nothing new


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_canaries_option_validated(fake_server: FakeServer, bad: Any) -> None:
    with pytest.raises(llmframe.ConfigError, match="canaries"):
        run(fake_server, 2, canaries=bad)


def test_canaries_class_schedule_placement_and_judgement() -> None:
    from llmframe._canaries import Canaries
    from llmframe._jobs import Job

    canaries = Canaries(1, every=2, seed=3)
    known = [Job(f"k{i}", {"x": str(i)}, [i]) for i in range(3)]
    for job in known:
        canaries.learn(job, f"answer {job.key}")
    assert len(canaries) == 3
    batch = [Job(f"n{i}", {"x": f"n{i}"}, [10 + i]) for i in range(4)]
    picks = [canaries.pick(batch) for _ in range(4)]
    assert [len(p) for p in picks] == [1, 0, 1, 0]  # every second packed request
    assert all(not c.rows for p in picks for c in p)  # copies: never written out
    sent = canaries.place(batch, picks[0])
    assert sent[-1] is picks[0][0] and sent[:-1] == batch  # the only canary goes last
    i = len(sent) - 1
    right = {j: "x" for j in range(len(batch))} | {i: f"answer {picks[0][0].key}"}
    assert canaries.wrong(sent, right) == []
    assert canaries.wrong(sent, right | {i: "something else"}) == [i]
    assert canaries.wrong(sent, {j: "x" for j in range(len(batch))}) == [i]  # missing
