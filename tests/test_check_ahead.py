"""Rows packed ahead of the packing check's verdict, over real HTTP: the run does not wait
for the trial where the endpoint answers requests side by side, and nothing packed
ahead is kept unless the verdict packs at least that many rows per request."""

from __future__ import annotations

from typing import Any

import pandas as pd
from test_packing_check_e2e import TEMPLATE, countries, run, want

from llmframe import _check
from llmframe.testing import Degrade, FakeServer, expected_answer


def _trial(server: FakeServer) -> Any:
    """The packing check's first trial as the server saw it: the first request of 20 items."""
    return min((r for r in server.stats.log if r.n_items >= 20), key=lambda r: r.t_start)


def test_a_wave_of_new_rows_goes_while_the_trial_is_out(fake_server_factory: Any) -> None:
    server = fake_server_factory(latency=0.2, latency_per_token=0.002)
    names = countries(400)
    got, report = run(server, names)
    assert got == want(names)
    assert report.batch_size_final == 20 and report.packing_agreement == {20: 1.0}
    trial = _trial(server)
    during = [r for r in server.stats.log if r.n_items > 1 and r is not trial and r.t_start < trial.t_end]
    # The format's small probe beside the reference rows, then packed new rows beside the trial.
    assert any(r.n_items >= 20 for r in during)
    assert report.ahead_rows >= 100 and report.ahead_again == 0  # kept: the verdict packs 20
    # Every row answered once: the ones ahead took no request more than packing after the verdict.
    answered_packed = sum(r.n_items for r in server.stats.log if r.n_items > 1) - report.canary_rows
    assert answered_packed == 400 - 10 + 10  # all but the 10 references, plus the trial's 10 copies


def test_an_endpoint_with_one_slot_gets_no_wave(fake_server_factory: Any) -> None:
    # llama-cpp-python's server works on one request at a time: a wave would queue behind the trial.
    server = fake_server_factory(latency=0.2, latency_per_token=0.0005, slots=1)
    names = countries(120)
    got, report = run(server, names)
    assert got == want(names)
    trial = _trial(server)
    during = [r for r in server.stats.log if r.n_items > 1 and r is not trial and r.t_start < trial.t_end]
    # only the format's probe, and no canary on it: it asks whether the format works, the trial
    # whether packing does
    assert [r.n_items for r in during] == [_check.PROBE_ROWS]
    assert report.ahead_rows == _check.PROBE_ROWS


def test_a_failing_check_keeps_nothing_packed_ahead(fake_server_factory: Any) -> None:
    # Past its third item every packed answer is another row's: valid JSON, every id, wrong.
    server = fake_server_factory(latency=0.1, degrade=Degrade(error_per_item=0.0, shift_after=3))
    names = countries(300)
    got, report = run(server, names)
    assert got == want(names)
    assert report.batch_size_final == 1 and report.ahead_rows > _check.PROBE_ROWS
    assert 0 < report.ahead_again <= report.ahead_rows
    alone = sum(1 for r in server.stats.log if r.n_items == 1)
    assert alone == 300  # each row answered alone exactly once: no packed answer kept


def test_a_lines_run_sends_no_probe_and_still_goes_ahead(fake_server_factory: Any) -> None:
    server = fake_server_factory(latency=0.2, latency_per_token=0.002)
    names = countries(300)
    got, report = run(server, names, response_format="lines", batch_size=None)
    assert got == want(names)
    assert report.batch_size_final == 20
    trial = _trial(server)
    early = [r for r in server.stats.log if 1 < r.n_items < 20 and r.t_start < trial.t_start]
    assert early == []  # id lines have no response_format to probe
    assert report.ahead_rows >= 100 and report.ahead_again == 0


def test_a_frame_smaller_than_a_wave_is_answered_whole_by_the_time_the_verdict_is_in(fake_server_factory: Any) -> None:
    server = fake_server_factory(latency=0.2, latency_per_token=0.002)
    frame = pd.DataFrame({"country": countries(200, "small")})
    out = frame.llm.apply(TEMPLATE, model="gpt-4o-mini", base_url=server.base_url, api_key="k", progress=False,
                          cache=False)  # fmt: skip
    assert out["answer"].tolist() == [expected_answer(TEMPLATE.format(country=c)) for c in frame["country"]]
    trial = _trial(server)
    after = [r for r in server.stats.log if r.t_start >= trial.t_end]
    assert after == []  # nothing was left to send once the verdict came
