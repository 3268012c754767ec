"""What a notebook shows: reports as HTML tables, calibration as a plot."""

from __future__ import annotations

from typing import Any

import pandas as pd

import llmframe
from llmframe._calibrate import CalibrationReport, CalibrationRow
from llmframe._report import RunReport
from llmframe.testing import FakeServer


def test_run_report_says_why_it_packed_and_escapes(fake_server: FakeServer) -> None:
    df = pd.DataFrame({"text": [f"<b>row {i}</b>" for i in range(60)]})
    template = ("Label the text below with its language, as the English name of the language, "
                "in lower case. Text in several languages gets the language of its first "
                "sentence; markup and code do not count as a language. Answer with the name "
                "alone, with no other words.\n\nText: {text}")  # worth packing: see test_economy
    out = df.llm.apply(template, model="gpt-4o-mini", base_url=fake_server.base_url,
                       api_key=fake_server.api_key, progress=False, cache=False)  # fmt: skip
    page = out.llm.report._repr_html_()
    assert page.startswith('<div class="llmframe-report">') and "<table" in page
    assert "packed 20 rows per request" in page and "agreement 100% at 20" in page
    assert "JSON packing ~$" in page and "against one row per request ~$" in page
    short = df.llm.apply("Label {text}", model="gpt-4o-mini", base_url=fake_server.base_url,
                         api_key=fake_server.api_key, progress=False, cache=False)  # fmt: skip
    assert "would cost more per row" in short.llm.report._repr_html_()
    report = RunReport(model="<script>", endpoint_notes=["a & b"])
    page = report._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page and "a &amp; b" in page


def test_estimate_html_has_both_columns(fake_server: FakeServer) -> None:
    df = pd.DataFrame({"text": [f"row {i}" for i in range(100)]})
    est = llmframe.estimate(df, "Label {text}", model="gpt-4o-mini", base_url=fake_server.base_url,
                            batch_size=20, params={"max_tokens": 3}, cache=False)  # fmt: skip
    page = est._repr_html_()
    assert "one row per request" in page and "packed" in page and f"{est.requests:,}" in page


def calibration() -> CalibrationReport:
    def row(size: int, agreement: float) -> CalibrationRow:
        return CalibrationRow(size, agreement, 30, 0, 30 // size, float(size), 60.0 / size + 20,
                              8.0, None, 1.0)  # fmt: skip

    return CalibrationReport(
        rows=[row(1, 1.0), row(5, 0.6), row(10, 0.2)], recommended_batch_size=1,
        min_agreement=0.95, model="qwen-0.5b", template_hash="t", verdict="do not pack",
        sample_rows=30,
    )  # fmt: skip


def test_calibration_html_and_plot(tmp_path: Any) -> None:
    report = calibration()
    page = report._repr_html_()
    assert "recommended batch_size 1" in page and "60.0%" in page and "do not pack" in page
    import matplotlib

    matplotlib.use("Agg")
    ax = report.plot()
    agreement_line = ax.get_lines()[0]
    assert list(agreement_line.get_xdata()) == [1, 5, 10]
    assert list(agreement_line.get_ydata()) == [100.0, 60.0, 20.0]
    path = tmp_path / "calibration.png"
    ax.figure.savefig(path)
    assert path.stat().st_size > 1000
