"""Calibration end to end against the degrading fake model, and its pure parts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import llmframe
from llmframe._agreement import agreement
from llmframe._cache_admin import default_cache_dir
from llmframe._calibrate import (
    CALIBRATIONS_FILE,
    CalibrationReport,
    CalibrationRow,
    _sample_positions,
    acalibrate,
    acalibrated_batch_size,
    answer_agreement,
    calibrate,
    calibration_key,
    load_calibration,
    load_calibration_report,
    normalize,
    recommend,
    store_calibration,
)
from llmframe._errors import ConfigError
from llmframe.testing import Degrade, FakeServer

TEMPLATE = "What is the capital of {country}? Answer with the city only."
MODEL = "gpt-4o-mini"
SIZES = (1, 5, 10, 20, 50)


def opts(server: FakeServer, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": MODEL,
        "base_url": server.base_url,
        "api_key": server.api_key,
        "progress": False,
    }
    base.update(extra)
    return base


def countries(n: int) -> dict[str, list[Any]]:
    return {"country": [f"country {i}" for i in range(n)], "n": list(range(n))}


def row(batch_size: int, agreement: float | None) -> CalibrationRow:
    return CalibrationRow(batch_size, agreement, 50, 0, 10, 5.0, 20.0, 5.0, None, 0.1)


# --------------------------------------------------------------------- comparing answers


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("Paris", "paris", True),
        ('  "Paris." ', "Paris", True),
        ("New  York\n", "new york", True),
        ("**Paris**", "Paris", True),
        ("ＰＡＲＩＳ", "paris", True),  # full-width letters, NFKC
        ("Paris", "Lyon", False),
        ("-5", "5", False),  # a sign is not punctuation to strip
        ("50%", "50", False),
    ],
)
def test_normalize(a: str, b: str, same: bool) -> None:
    assert (normalize(a) == normalize(b)) is same


def test_structured_answers_agree_per_field() -> None:
    ref = json.dumps({"city": "Paris", "country": "France", "population": 2100000})
    assert (
        answer_agreement(
            ref, json.dumps({"city": "paris.", "country": "France", "population": 2100000})
        )
        == 1.0
    )
    assert answer_agreement(
        ref, json.dumps({"city": "Lyon", "country": "France", "population": 2100000})
    ) == pytest.approx(2 / 3)
    assert answer_agreement(
        ref, json.dumps({"city": "Paris", "country": "France"})
    ) == pytest.approx(2 / 3)
    assert answer_agreement(ref, "Paris") == 0.0  # not an object: compared as text
    assert answer_agreement("{}", "{}") == 1.0


def test_failed_rows_disagree_and_rows_without_reference_are_left_out() -> None:
    assert agreement(["a", "b", "c", None], ["a", None, "C", "x"]) == (pytest.approx(2 / 3), 3)
    assert agreement([None], ["x"]) == (None, 0)


def test_recommendation_is_where_agreement_crosses_the_threshold() -> None:
    size, verdict = recommend(
        [row(1, 1.0), row(5, 1.0), row(10, 0.96), row(20, 0.8), row(50, 0.99)], 0.95
    )
    # 50 agrees again by chance, but 20 did not: recommend the last size before the first miss.
    assert size == 10 and "use batch_size=10" in verdict and "at 20 rows" in verdict
    size, verdict = recommend([row(1, 1.0), row(5, 0.6), row(10, 0.5)], 0.95)
    assert size == 1 and verdict.startswith("do not pack this task on this model")
    size, verdict = recommend([row(1, 1.0), row(5, 1.0), row(10, 0.99)], 0.95)
    assert size == 10 and "pack up to 10" in verdict
    size, verdict = recommend([row(1, 1.0)], 0.95)
    assert size == 1 and "nothing to compare" in verdict


# ---------------------------------------------------------- against the degrading model


@pytest.mark.parametrize(
    ("degrade", "expected"),
    [
        # p(n) = error_per_item * max(0, n - start): 0 up to 10, 0.2 at 20, 0.8 at 50.
        (Degrade(error_per_item=0.02, start=10), 10),
        # 0 at 5, 0.1 at 10: 10 rows per request already agree on only ~90%.
        (Degrade(error_per_item=0.02, start=5), 5),
        # No random errors; batches of more than 20 run one row behind after row 20.
        (Degrade(error_per_item=0.0, shift_after=20), 20),
    ],
)
def test_calibrate_recommends_the_crossing_point(
    fake_server_factory: Callable[..., FakeServer], degrade: Degrade, expected: int
) -> None:
    server = fake_server_factory(degrade=degrade)
    df = pl.DataFrame(countries(120))
    report = calibrate(df, TEMPLATE, sample=50, batch_sizes=SIZES, **opts(server))
    assert report.recommended_batch_size == expected
    assert [r.batch_size for r in report.rows] == list(SIZES)
    by_size = {r.batch_size: r for r in report.rows}
    for size in SIZES:
        agreement = by_size[size].agreement
        assert agreement is not None
        assert (agreement >= 0.95) is (size <= expected), (size, agreement)
        assert by_size[size].rows == 50 and by_size[size].failed_rows == 0
    assert by_size[1].agreement == 1.0 and by_size[1].requests == 50
    assert by_size[10].requests == 5 and by_size[50].requests == 1
    assert by_size[50].items_per_request == 50.0
    assert f"use batch_size={expected}" in report.verdict


def test_says_do_not_pack_when_even_five_disagree(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory(degrade=Degrade(error_per_item=0.1, start=1))  # p(5) = 0.4
    report = calibrate(pl.DataFrame(countries(60)), TEMPLATE, **opts(server))
    assert report.recommended_batch_size == 1 and not report.pack
    assert report.verdict.startswith("do not pack this task on this model")
    assert "do not pack this task on this model" in str(report)
    assert report.rows[1].batch_size == 5 and report.rows[1].agreement is not None
    assert report.rows[1].agreement < 0.8


def test_shift_mode_small_batches_do_not_pack(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory(degrade=Degrade(error_per_item=0.0, shift_after=2))
    report = calibrate(pl.DataFrame(countries(60)), TEMPLATE, batch_sizes=(5, 10), **opts(server))
    assert [r.batch_size for r in report.rows] == [1, 5, 10]  # 1 is always the reference
    assert report.rows[1].agreement == pytest.approx(0.4)  # 2 of every 5 right
    assert report.recommended_batch_size == 1 and "do not pack" in report.verdict


def test_stores_and_loads_the_calibration(fake_server_factory: Callable[..., FakeServer]) -> None:
    server = fake_server_factory(degrade=Degrade(error_per_item=0.02, start=10))
    report = calibrate(pl.DataFrame(countries(80)), TEMPLATE, **opts(server))
    cache_dir = default_cache_dir()  # conftest points LLMFRAME_CACHE_DIR at the test's folder
    key = calibration_key(MODEL, TEMPLATE, None, None)
    assert report.key == key
    assert load_calibration(cache_dir, key) == 10
    stored = load_calibration_report(cache_dir, key)
    assert stored is not None and stored.to_dict() == report.to_dict()
    # The key holds everything that decides the answers.
    assert load_calibration(cache_dir, calibration_key(MODEL, TEMPLATE, "Be terse.", None)) is None
    assert (
        load_calibration(cache_dir, calibration_key(MODEL, TEMPLATE, None, {"temperature": 0}))
        is None
    )
    assert load_calibration(cache_dir, calibration_key("gpt-4o", TEMPLATE, None, None)) is None
    assert calibration_key(MODEL, TEMPLATE, None, {"a": 1, "b": 2}) == calibration_key(
        MODEL, TEMPLATE, None, {"b": 2, "a": 1}
    )


def test_the_following_full_run_does_not_pay_for_the_sample(
    fake_server_factory: Callable[..., FakeServer], make_frame: Any
) -> None:
    server = fake_server_factory(degrade=Degrade(error_per_item=0.02, start=10))
    df = make_frame(countries(150))
    report = calibrate(df, TEMPLATE, sample=40, batch_sizes=(1, 10, 20), **opts(server))
    assert report.sample_rows == 40
    server.configure(degrade=None)
    server.reset_stats()
    out = df.llm.apply(TEMPLATE, output="capital", batch_size=1, **opts(server))
    assert server.stats.items == 150 - 40
    assert llmframe.last_report().cached_rows == 40  # type: ignore[union-attr]
    assert len(out) == 150


def test_reference_is_fresh_even_when_the_cache_holds_packed_answers(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    # A full packed run first: the cache now holds wrong answers for most rows (p(50) = 0.8).
    server = fake_server_factory(degrade=Degrade(error_per_item=0.02, start=10))
    df = pl.DataFrame(countries(50))
    df.llm.apply(TEMPLATE, batch_size=50, **opts(server))
    report = calibrate(df, TEMPLATE, **opts(server))
    # Compared with those cached answers, size 50 would look perfect; it is not.
    by_size = {r.batch_size: r for r in report.rows}
    assert by_size[1].requests == 50
    assert by_size[50].agreement is not None and by_size[50].agreement < 0.5
    assert report.recommended_batch_size == 10
    # ... and the cache now serves the one-row answers.
    server.configure(degrade=None)
    server.reset_stats()
    again = df.llm.apply(TEMPLATE, batch_size=1, **opts(server))
    assert server.stats.requests == 0
    fresh = df.llm.apply(TEMPLATE, batch_size=1, **opts(server, cache=False))
    assert again.get_column("answer").to_list() == fresh.get_column("answer").to_list()


def test_without_a_cache_nothing_is_stored(
    fake_server_factory: Callable[..., FakeServer], tmp_path: Path
) -> None:
    server = fake_server_factory()
    report = calibrate(
        pl.DataFrame(countries(30)), TEMPLATE, batch_sizes=(1, 5), **opts(server, cache=False)
    )
    assert report.recommended_batch_size == 5 and "pack up to 5" in report.verdict
    assert not (default_cache_dir() / CALIBRATIONS_FILE).exists()
    # Only the endpoint's rate limits are remembered (limits.json), never an answer.
    assert not default_cache_dir().exists() or {p.name for p in default_cache_dir().iterdir()} <= {"limits.json"}


def test_sample_skips_nulls_duplicates_and_sizes_beyond_it(
    fake_server_factory: Callable[..., FakeServer], make_frame: Any
) -> None:
    server = fake_server_factory()
    values = [f"c{i % 7}" for i in range(30)] + [None] * 5  # 7 distinct prompts, then nulls
    df = make_frame({"country": values})
    with pytest.warns(UserWarning, match="batch sizes 10, 20, 50 were not measured"):
        report = calibrate(df, TEMPLATE, **opts(server))
    assert report.sample_rows == 7
    assert [r.batch_size for r in report.rows] == [1, 5]
    assert report.skipped_batch_sizes == [10, 20, 50]
    assert server.stats.items == 7 + 7
    assert "not measured (larger than the sample): 10, 20, 50" in str(report)


def test_sample_is_seeded_and_in_frame_order(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    df = pl.DataFrame(countries(500))
    first = _sample_positions(df, ("country",), 30, 1)
    assert first == _sample_positions(df, ("country",), 30, 1) == sorted(set(first))
    assert len(first) == 30 and first != _sample_positions(df, ("country",), 30, 2)
    server = fake_server_factory(degrade=Degrade(error_per_item=0.01, start=1))
    a, b = (
        calibrate(df, TEMPLATE, sample=30, batch_sizes=(1, 10), seed=1, **opts(server, cache=False))
        for _ in range(2)
    )
    assert a.rows[1].agreement == b.rows[1].agreement


def test_report_to_dict_to_frame_and_str(fake_server_factory: Callable[..., FakeServer]) -> None:
    server = fake_server_factory(degrade=Degrade(error_per_item=0.02, start=10))
    report = calibrate(
        pl.DataFrame(countries(60)), TEMPLATE, batch_sizes=(1, 10, 20), **opts(server)
    )
    d = report.to_dict()
    assert d["recommended_batch_size"] == 10 and d["min_agreement"] == 0.95
    assert d["model"] == MODEL and d["template_hash"] and d["verdict"] == report.verdict
    assert [r["batch_size"] for r in d["rows"]] == [1, 10, 20]
    assert json.loads(json.dumps(d)) == d  # plain JSON
    assert CalibrationReport.from_dict(d) == report
    frame = report.to_frame()
    assert isinstance(frame, pl.DataFrame) and frame.height == 3
    assert frame.columns[:3] == ["batch_size", "agreement", "rows"]
    assert frame.schema["agreement"] == pl.Float64 and frame.schema["cost_per_row"] == pl.Float64
    assert frame.get_column("requests").to_list() == [50, 5, 3]
    text = str(report)
    assert "gpt-4o-mini" in text and "batch" in text and "agreement" in text
    assert "recommended batch_size: 10" in text and report.verdict in text
    assert "100.0%" in text


def test_unknown_price_shows_as_unknown(fake_server_factory: Callable[..., FakeServer]) -> None:
    server = fake_server_factory()
    report = calibrate(pl.DataFrame(countries(10)), TEMPLATE, batch_sizes=(1, 5),
                       **opts(server, model="my-local-model"))  # fmt: skip
    assert all(r.cost_per_row is None for r in report.rows)
    assert "unknown" in str(report)


def test_invalid_arguments(fake_server: FakeServer) -> None:
    df = pl.DataFrame(countries(5))
    with pytest.raises(ConfigError, match="batch_sizes="):
        calibrate(df, TEMPLATE, batch_size=5, **opts(fake_server))
    with pytest.raises(ConfigError, match="sample"):
        calibrate(df, TEMPLATE, sample=0, **opts(fake_server))
    with pytest.raises(ConfigError, match="min_agreement"):
        calibrate(df, TEMPLATE, min_agreement=95, **opts(fake_server))
    with pytest.raises(ConfigError, match="batch_sizes"):
        calibrate(df, TEMPLATE, batch_sizes=(0, 5), **opts(fake_server))
    with pytest.raises(ConfigError, match="without nulls"):
        calibrate(pl.DataFrame({"country": [None, None]}, schema={"country": pl.String}),
                  TEMPLATE, **opts(fake_server))  # fmt: skip
    with pytest.raises(llmframe.TemplateError):
        calibrate(df, "Capital of {nation}?", **opts(fake_server))
    assert fake_server.stats.requests == 0


# ------------------------------------------------------------------------------- storage


def test_corrupt_calibration_file_is_ignored_with_a_warning(tmp_path: Path) -> None:
    report = CalibrationReport([row(1, 1.0), row(5, 1.0)], 5, 0.95, MODEL, "abc", "pack up to 5")
    (tmp_path / CALIBRATIONS_FILE).write_text("{not json")
    with pytest.warns(UserWarning, match="not a valid calibration file"):
        assert load_calibration(tmp_path, "k") is None
    with pytest.warns(UserWarning, match="not a valid calibration file"):
        store_calibration(tmp_path, "k", report)
    assert load_calibration(tmp_path, "k") == 5
    store_calibration(tmp_path, "other", report)
    assert load_calibration(tmp_path, "k") == load_calibration(tmp_path, "other") == 5
    assert [p.name for p in tmp_path.iterdir()] == [CALIBRATIONS_FILE]  # no temp files left
    data = json.loads((tmp_path / CALIBRATIONS_FILE).read_text())
    data["calibrations"]["k"]["recommended_batch_size"] = "ten"
    (tmp_path / CALIBRATIONS_FILE).write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="malformed calibration"):
        assert load_calibration(tmp_path, "k") is None
    assert load_calibration(tmp_path / "missing", "k") is None


def test_calibrated_batch_size_uses_the_stored_calibration(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory(degrade=Degrade(error_per_item=0.02, start=10))
    df = pl.DataFrame(countries(60))

    async def main() -> tuple[int, int]:
        first = await acalibrated_batch_size(
            df, TEMPLATE, output="x", batch_size="calibrated", **opts(server)
        )
        requests = server.stats.requests
        second = await acalibrated_batch_size(df, TEMPLATE, **opts(server))
        assert server.stats.requests == requests  # read back, not measured again
        return first, second

    assert asyncio.run(main()) == (10, 10)


def test_acalibrate_runs_in_an_event_loop(fake_server_factory: Callable[..., FakeServer]) -> None:
    server = fake_server_factory()
    report = asyncio.run(acalibrate(pl.DataFrame(countries(12)), TEMPLATE, batch_sizes=(1, 5, 10),
                                    **opts(server)))  # fmt: skip
    assert report.recommended_batch_size == 10
