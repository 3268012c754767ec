"""The opt-in suite against a real OpenAI-compatible server (llama.cpp, vLLM, Ollama, OpenAI).

Runs only when ``LLMFRAME_TEST_BASE_URL`` and ``LLMFRAME_TEST_MODEL`` are set
(``LLMFRAME_TEST_API_KEY`` too, where the server needs a key)::

    LLMFRAME_TEST_BASE_URL=http://127.0.0.1:8765/v1 LLMFRAME_TEST_MODEL=qwen-0.5b \\
        python -m pytest -m real_endpoint tests/real_endpoint -q

``benchmarks/real_model/run.sh --tests`` builds and starts a llama.cpp server
and runs this suite against it. Frames are small (a CPU model answers about
four rows a second); every assertion is about behaviour any server must show,
not about one model's answers.
"""

from __future__ import annotations

import os
from typing import Any

import openai
import pandas as pd
import pytest

import llmframe
from llmframe._capabilities import MEMORY

BASE_URL = os.environ.get("LLMFRAME_TEST_BASE_URL", "")
MODEL = os.environ.get("LLMFRAME_TEST_MODEL", "")
API_KEY = os.environ.get("LLMFRAME_TEST_API_KEY") or "not-needed"

pytestmark = [
    pytest.mark.real_endpoint,
    pytest.mark.skipif(
        not (BASE_URL and MODEL),
        reason="set LLMFRAME_TEST_BASE_URL and LLMFRAME_TEST_MODEL to run against a real server",
    ),
]

COUNTRIES = [
    "France", "Japan", "Brazil", "Kenya", "Canada", "Germany", "India", "Mexico", "Egypt",
    "Italy", "Spain", "Peru", "Chile", "Norway", "Sweden", "Poland", "Greece", "Turkey",
    "Iran", "Iraq", "China", "Russia", "Nigeria", "Ghana", "Cuba", "Argentina", "Colombia",
    "Portugal", "Austria", "Ireland", "Finland", "Denmark", "Thailand", "Vietnam", "Nepal",
    "Morocco", "Algeria", "Tunisia", "Senegal", "Ethiopia", "Uganda", "Zambia", "Australia",
    "Indonesia", "Philippines", "Malaysia", "Pakistan", "Bangladesh",
]  # fmt: skip
TEMPLATE = "What is the capital of {country}? Answer with the city name only."
PARAMS = {"temperature": 0, "max_tokens": 16}


def options(**extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL, "base_url": BASE_URL, "api_key": API_KEY, "params": PARAMS,
        "progress": False, "cache": False, "max_concurrency": 4, **extra,
    }  # fmt: skip


@pytest.fixture(autouse=True)
def _forget() -> Any:
    MEMORY.clear()  # each test finds out what the server accepts on its own
    yield


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"country": COUNTRIES[:n]})


def test_default_call_answers_every_row_and_probes_the_format_once() -> None:
    out = frame(48).llm.apply(TEMPLATE, **options())
    report = out.llm.report
    assert out["answer"].notna().all(), report.errors[:3]
    assert report.failed_rows == 0
    assert report.retries == 0  # a rejected format or parameter is never retried
    rejected = [n for n in report.endpoint_notes if "response_format" in n]
    assert len(rejected) <= 2  # at most one per step down json_schema -> json_object -> text
    assert report.response_format in ("json_schema", "json_object", "text")
    assert report.packing_reason  # says whether and why it packed


def test_packed_and_one_row_both_answer_every_row() -> None:
    for batch_size in (1, 5):
        out = frame(10).llm.apply(TEMPLATE, **options(batch_size=batch_size))
        assert out["answer"].notna().all(), (batch_size, out.llm.report.errors[:3])
        assert out.llm.report.failed_rows == 0


def test_report_tokens_equal_the_servers_usage() -> None:
    client = openai.OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0)
    prompt = completion = 0
    for country in COUNTRIES[:4]:
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": TEMPLATE.format(country=country)}],
            **PARAMS,  # type: ignore[arg-type]
        )  # fmt: skip
        assert reply.usage is not None
        prompt += reply.usage.prompt_tokens
        completion += reply.usage.completion_tokens
    out = frame(4).llm.apply(TEMPLATE, **options(batch_size=1))
    report = out.llm.report
    assert report.prompt_tokens == prompt
    assert abs(report.completion_tokens - completion) <= 4  # sampling may differ by a token


def test_calibration_measures_real_answers_at_every_size() -> None:
    report = llmframe.calibrate(frame(20), TEMPLATE, sample=20, batch_sizes=(1, 5, 10),
                                **options())  # fmt: skip
    assert [r.batch_size for r in report.rows] == [1, 5, 10]
    assert all(r.failed_rows == 0 for r in report.rows), str(report)
    assert all(r.agreement is not None for r in report.rows)
    assert report.recommended_batch_size in (1, 5, 10)


def test_id_lines_format_is_parsed_and_the_check_guards_its_answers() -> None:
    # The compact packed format ("7 answer" per line) on a real model. Forced, every row is
    # parsed into an answer (none shifted onto another row's id). Left to the packing check,
    # the answers are the one-row answers: a small model that echoes the item lines back
    # (qwen2.5 0.5B does) must not be packed.
    forced = frame(10).llm.apply(TEMPLATE, **options(batch_size=10, response_format="lines"))
    assert forced.llm.report.failed_rows == 0, forced.llm.report.errors[:3]
    assert forced.llm.report.response_format == "lines"
    one_row = frame(20).llm.apply(TEMPLATE, **options(batch_size=1))
    checked = frame(20).llm.apply(TEMPLATE, **options(response_format="lines"))
    assert checked.llm.report.failed_rows == 0, checked.llm.report.errors[:3]
    same = (checked["answer"].str.strip().str.lower() == one_row["answer"].str.strip().str.lower()).mean()
    assert same >= 0.8, (checked.llm.report.packing_reason, list(zip(checked["answer"], one_row["answer"], strict=True)))


def test_a_nested_schema_packed_is_answered_even_when_packed_items_break_it() -> None:
    # qwen2.5 0.5B on llama.cpp flattens the nested object ("person": "Alice") in packed
    # items and gets it right alone: those rows must go again alone, not stop the run as a
    # schema the model cannot follow (it did, after the first packed replies' ten items).
    from pydantic import BaseModel

    class Who(BaseModel):
        name: str
        age: int

    class Described(BaseModel):
        person: Who
        tags: list[str]
        happy: bool | None

    reviews = ["I love this phone, best purchase ever", "Terrible, broke after one day", "It is ok I guess",
               "Absolutely fantastic service!", "Worst hotel I've stayed in", "Meh.",
               "Alice, 34, is delighted with her new bike", "Bob (51) complains the soup was cold",
               "Great great great", "not bad, not good", "Carol (28) runs marathons"]  # fmt: skip
    out = pd.DataFrame({"review": reviews}).llm.apply("Analyse this review: {review}", schema=Described,
                                                      **options(batch_size=5, params={}))  # fmt: skip
    report = out.llm.report
    assert report.answered_rows + report.failed_rows == len(reviews)
    assert report.answered_rows >= len(reviews) - 2, report.errors[:3]


def test_batch_mode_on_a_server_without_the_batch_api_is_one_clear_error(tmp_path: Any) -> None:
    # llama.cpp, vLLM and Ollama have no /v1/files or /v1/batches: mode="batch" must stop
    # before anything is charged, name the endpoint, and record no job.
    opts = {**options(), "cache": str(tmp_path)}
    with pytest.raises(llmframe.ConfigError, match="Batch API") as caught:
        frame(4).llm.apply(TEMPLATE, mode="batch", **opts)
    assert API_KEY not in str(caught.value) or API_KEY == "not-needed"
    assert llmframe.batch_jobs(cache=str(tmp_path)) == []
