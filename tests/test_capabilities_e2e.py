"""Unsupported formats and parameters over real HTTP: never retried, one rejection per run."""

from __future__ import annotations

import warnings
from typing import Any

import pandas as pd
import pytest

import llmframe
from llmframe import EndpointError
from llmframe.testing import FakeServer, expected_answer

TEMPLATE = "Label this: {text}"
# Instructions long enough that the default packs (in JSON): a bare "Label this: {text}"
# costs less one row per request, so the default would not pack it at all.
PACKED_TEMPLATE = (
    "Label the support message below with the team that should handle it: billing, shipping, "
    "returns or technical. A message about a charge is billing even when it mentions a parcel; a "
    "message about a broken device is technical. Answer with the team's name alone, in lower "
    "case, with no other words.\n\nMessage: {text}"
)


def opts(server: FakeServer, **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini", "base_url": server.base_url, "api_key": server.api_key,
        "progress": False, **extra,
    }  # fmt: skip


def statuses(server: FakeServer) -> list[int]:
    return [r.status for r in server.stats.log]


def texts(n: int, tag: str = "item") -> list[str]:
    return [f"{tag} {i}" for i in range(n)]


def answers(out: Any) -> list[Any]:
    return [None if pd.isna(v) else v for v in out["answer"].tolist()]


@pytest.mark.parametrize("batch_size", [None, 10])
def test_llama_cpp_500_on_json_schema_steps_down_after_one_rejection(
    fake_server_factory: Any, batch_size: int | None
) -> None:
    server = fake_server_factory(json_schema=False, rejects_like="llama.cpp")
    rows = texts(200)
    template = TEMPLATE if batch_size else PACKED_TEMPLATE
    out = pd.DataFrame({"text": rows}).llm.apply(template, **opts(server, batch_size=batch_size))
    assert answers(out) == [expected_answer(template.format(text=t)) for t in rows]
    assert statuses(server).count(500) == 1  # one rejected request, never retried
    report = out.llm.report
    assert report.failed_rows == 0 and report.retries == 0
    assert report.response_format == "json_object"
    assert report.endpoint_notes == ["response_format 'json_schema' rejected (HTTP 500); using 'json_object'"]
    # The next run on the same endpoint sends the working format first time.
    server.reset_stats()
    again = pd.DataFrame({"text": texts(100, "other")}).llm.apply(template, **opts(server, batch_size=batch_size))
    assert again.llm.report.failed_rows == 0 and 500 not in statuses(server)


def test_the_lesson_is_kept_in_the_cache_folder_for_a_new_process(fake_server_factory: Any) -> None:
    from llmframe._capabilities import MEMORY

    server = fake_server_factory(json_schema=False, rejects_like="llama.cpp")
    pd.DataFrame({"text": texts(50)}).llm.apply(TEMPLATE, **opts(server, batch_size=10))
    MEMORY.clear()  # as in a new process; the cache folder is the same
    server.reset_stats()
    out = pd.DataFrame({"text": texts(50, "new")}).llm.apply(TEMPLATE, **opts(server, batch_size=10))
    assert out.llm.report.response_format == "json_object" and 500 not in statuses(server)


def test_down_to_text_when_no_format_is_supported(fake_server_factory: Any) -> None:
    server = fake_server_factory(json_schema=False, json_object=False)
    rows = texts(120)
    out = pd.DataFrame({"text": rows}).llm.apply(TEMPLATE, **opts(server, batch_size=20))
    assert answers(out) == [expected_answer(TEMPLATE.format(text=t)) for t in rows]
    assert statuses(server).count(400) == 2  # json_schema, then json_object
    assert out.llm.report.response_format == "text"


def test_a_format_the_user_chose_is_not_changed_behind_their_back(fake_server_factory: Any) -> None:
    server = fake_server_factory(json_schema=False, rejects_like="llama.cpp")
    df = pd.DataFrame({"text": texts(60)})
    with pytest.raises(EndpointError, match="response_format='json_schema'") as info:
        df.llm.apply(TEMPLATE, **opts(server, batch_size=10, response_format="json_schema"))
    assert statuses(server).count(500) == 1
    assert len(info.value.errors) == 60


def test_max_tokens_is_renamed_when_the_endpoint_wants_the_other_name(fake_server_factory: Any) -> None:
    server = fake_server_factory(unsupported_params=("max_tokens",))
    rows = texts(30)
    out = pd.DataFrame({"text": rows}).llm.apply(TEMPLATE, **opts(server, params={"max_tokens": 20}))
    assert answers(out) == [expected_answer(TEMPLATE.format(text=t)) for t in rows]
    assert statuses(server).count(400) == 1
    assert out.llm.report.endpoint_notes == ["'max_tokens' rejected (HTTP 400); sent as 'max_completion_tokens'"]


def test_a_best_effort_parameter_is_dropped_with_one_warning(fake_server_factory: Any) -> None:
    server = fake_server_factory(unsupported_params=("seed",))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = pd.DataFrame({"text": texts(30)}).llm.apply(TEMPLATE, **opts(server, params={"seed": 7}))
    assert out.llm.report.failed_rows == 0
    assert statuses(server).count(400) == 1
    said = [str(w.message) for w in caught if "seed" in str(w.message)]
    assert said == ["llmframe: the endpoint rejects params['seed']; sending without it"]
    assert all(w.filename == __file__ for w in caught if "seed" in str(w.message))


def test_a_rejected_user_parameter_stops_the_run_with_one_error(fake_server_factory: Any) -> None:
    server = fake_server_factory(unsupported_params=("temperature",))
    df = pd.DataFrame({"text": texts(300)})
    with pytest.raises(EndpointError, match=r"rejects params\['temperature'\]") as info:
        df.llm.apply(TEMPLATE, **opts(server, params={"temperature": 0}))
    assert server.stats.requests <= 3  # stopped, not 300 rejected requests
    assert len(info.value.errors) == 300 and {e.kind for e in info.value.errors} == {"endpoint"}
    assert "temperature" in str(info.value) and server.api_key not in str(info.value)


def test_an_unknown_model_stops_the_run_early(fake_server_factory: Any) -> None:
    server = fake_server_factory(models=["gpt-4o-mini"])
    df = pd.DataFrame({"text": texts(200)})
    with pytest.raises(EndpointError, match="check model= and base_url=") as info:
        df.llm.apply(TEMPLATE, **opts(server, model="no-such-model"))
    assert server.stats.requests <= 3
    assert len(info.value.errors) == 200
    assert isinstance(info.value, llmframe.RunError)  # one except RunError catches every stop


def test_text_mode_is_confirmed_too_so_packed_requests_go_concurrently(fake_server_factory: Any) -> None:
    server = fake_server_factory(json_schema=False, json_object=False, latency=0.05)
    rows = texts(400)
    out = pd.DataFrame({"text": rows}).llm.apply(TEMPLATE, **opts(server, batch_size=10, max_concurrency=8))
    assert answers(out) == [expected_answer(TEMPLATE.format(text=t)) for t in rows]
    assert server.stats.max_in_flight > 1  # not every packed request alone
    # Remembered: the next run starts in text mode, with no rejection.
    server.reset_stats()
    pd.DataFrame({"text": texts(50, "more")}).llm.apply(TEMPLATE, **opts(server, batch_size=10))
    assert 400 not in statuses(server)


def test_an_endpoint_that_rejects_both_token_names_stops_instead_of_looping(fake_server_factory: Any) -> None:
    server = fake_server_factory(unsupported_params=("max_tokens", "max_completion_tokens"))
    df = pd.DataFrame({"text": texts(100)})
    with pytest.raises(EndpointError, match="rejects both"):
        df.llm.apply(TEMPLATE, **opts(server, params={"max_tokens": 20}))
    assert server.stats.requests <= 4

