"""Rejections read by meaning: real servers' words, whatever the status code."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmframe._capabilities import (
    ENDPOINTS_FILE,
    MAX_VERDICTS,
    EndpointMemory,
    Rejection,
    is_context_overflow,
    next_format,
    rejection,
)

# llama-cpp-python 0.3.36's server, verbatim (a 500 with no "param").
LLAMA_CPP_JSON_SCHEMA = (
    "HTTP 500: 1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', "
    "'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', 'ctx': "
    "{'expected': \"'text' or 'json_object'\"}}\n\n  File \"llama_cpp/server/app.py\", line 376, "
    "in create_chat_completion\n    POST /v1/chat/completions"
)
PARAMS = {"temperature": 0, "max_tokens": 50, "seed": 1}


@pytest.mark.parametrize(
    ("status", "message", "param", "mode", "expected"),
    [
        # structured outputs
        (500, LLAMA_CPP_JSON_SCHEMA, None, "json_schema", Rejection("response_format", "step_down")),
        (400, "HTTP 400: Invalid parameter: 'response_format' of type 'json_schema' is not "
              "supported with this model.", "response_format", "json_schema",
         Rejection("response_format", "step_down")),
        (422, "HTTP 422: response_format json_object is not supported", None, "json_object",
         Rejection("response_format", "step_down")),
        (400, "HTTP 400: 'strict' is not permitted in json_schema", None, "json_schema",
         Rejection("response_format", "step_down")),
        # a request without a format cannot have its format rejected
        (500, LLAMA_CPP_JSON_SCHEMA, None, None, None),
        # parameters
        (400, "HTTP 400: Unsupported parameter: 'max_tokens' is not supported with this model. "
              "Use 'max_completion_tokens' instead.", "max_tokens", "text",
         Rejection("max_tokens", "rename", "max_completion_tokens")),
        (400, "HTTP 400: max_tokens is too large: 90000. This model supports at most 16384 "
              "completion tokens", "max_tokens", "json_schema", Rejection("max_tokens", "too_large")),
        (400, "HTTP 400: Unsupported parameter: 'seed' is not supported with this model.", "seed",
         None, Rejection("seed", "drop")),
        (400, "HTTP 400: Unsupported value: 'temperature' does not support 0 with this model. "
              "Only the default (1) value is supported.", "temperature", None,
         Rejection("temperature", "stop")),
        # vLLM / pydantic "extra forbidden", no param field: the message names it
        (400, "HTTP 400: [{'type': 'extra_forbidden', 'loc': ('body', 'seed'), 'msg': 'Extra "
              "inputs are not permitted'}]", None, None, Rejection("seed", "drop")),
        # no rejection: generic failures are retried or failed per row
        (500, "HTTP 500: Internal Server Error", None, "json_schema", None),
        (503, "HTTP 503: response_format is not supported", None, "json_schema", None),
        (500, "HTTP 500: CUDA out of memory while sampling (temperature 0)", None, None, None),
        (400, "HTTP 400: 'messages' must contain the word json", "messages", "json_object", None),
        (429, "HTTP 429: Rate limit reached for max_tokens", None, None, None),
    ],
)
def test_rejections_by_meaning(
    status: int, message: str, param: str | None, mode: str | None, expected: Rejection | None
) -> None:
    assert rejection(status, message, param, PARAMS, response_format=mode) == expected


def test_a_word_inside_another_is_not_a_parameter() -> None:
    # "seed" inside "seeded", "user" inside "username": not a rejection of those params.
    message = "HTTP 400: unsupported: the seeded username field"
    assert rejection(400, message, None, {"seed": 1, "user": "u"}, response_format=None) is None


@pytest.mark.parametrize(
    ("status", "message", "overflow"),
    [
        (400, "This model's maximum context length is 4096 tokens. However, you requested 5000", True),
        (500, "Requested tokens (9000) exceed context window of 8192", True),
        (400, "prompt is too long: 200000 tokens > 128000 maximum", True),
        (500, "Internal Server Error", False),
        (429, "context length", False),
    ],
)
def test_context_overflow_in_any_servers_words(status: int, message: str, overflow: bool) -> None:
    assert is_context_overflow(status, message) is overflow


def test_formats_step_down_to_text_and_stay() -> None:
    assert next_format("json_schema") == "json_object"
    assert next_format("json_object") == "text"
    assert next_format("text") == "text"


def test_memory_is_shared_through_the_cache_folder(tmp_path: Path) -> None:
    endpoint = EndpointMemory.key("http://127.0.0.1:9/v1/", "m")
    assert endpoint == EndpointMemory.key("http://127.0.0.1:9/v1", "m")
    first = EndpointMemory()
    first.update(endpoint, tmp_path, response_format="json_object", verdicts={"t1": {"batch_size": 1}})
    first.update(endpoint, tmp_path, verdicts={"t2": {"batch_size": 20}})
    # A new process: nothing in memory, the folder answers.
    second = EndpointMemory()
    known = second.get(endpoint, tmp_path)
    assert known["response_format"] == "json_object"
    assert known["verdicts"] == {"t1": {"batch_size": 1}, "t2": {"batch_size": 20}}
    assert second.get(endpoint) == known  # now held in the process
    assert second.get("other m", tmp_path) == {}
    # A copy: changing it changes nothing stored.
    known["response_format"] = "text"
    assert second.get(endpoint)["response_format"] == "json_object"


def test_two_processes_keep_each_others_verdicts(tmp_path: Path) -> None:
    """Each process read the folder before the other stored anything: writing its own
    verdict must not write back its stale view of the endpoint over the other's."""
    first, second = EndpointMemory(), EndpointMemory()
    assert first.get("e m", tmp_path) == second.get("e m", tmp_path) == {}
    first.update("e m", tmp_path, response_format="json_object", verdicts={"t1": {"batch_size": 20}})
    second.update("e m", tmp_path, verdicts={"t2": {"batch_size": 1}})
    known = EndpointMemory().get("e m", tmp_path)
    assert known == {"response_format": "json_object", "verdicts": {"t1": {"batch_size": 20}, "t2": {"batch_size": 1}}}


def test_the_oldest_verdicts_go_past_the_cap(tmp_path: Path) -> None:
    memory = EndpointMemory()
    for i in range(MAX_VERDICTS + 3):
        memory.update("e m", tmp_path, verdicts={f"t{i}": {"batch_size": 20}})
    memory.update("e m", tmp_path, verdicts={"t3": {"batch_size": 10}})  # stored again: the newest now
    memory.update("e m", tmp_path, verdicts={"new": {"batch_size": 5}})
    for known in (EndpointMemory().get("e m", tmp_path), memory.get("e m")):
        verdicts = known["verdicts"]
        assert len(verdicts) == MAX_VERDICTS
        assert {"t0", "t1", "t2", "t4"}.isdisjoint(verdicts) and verdicts["t3"] == {"batch_size": 10}
        assert list(verdicts)[-2:] == ["t3", "new"]


def test_memory_survives_a_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / ENDPOINTS_FILE).write_text("{not json")
    memory = EndpointMemory()
    assert memory.get("e m", tmp_path) == {}
    memory.update("e m", tmp_path, response_format="text")
    assert EndpointMemory().get("e m", tmp_path) == {"response_format": "text"}


@pytest.mark.parametrize(
    "message",
    [
        "HTTP 400: The provided JSON schema contains features not supported by xgrammar.",
        "HTTP 400: JSON schema conversion failed: unsupported keyword",
        "HTTP 400: guided decoding is not available for this model",
    ],
)
def test_structured_output_rejections_in_other_servers_words(message: str) -> None:
    assert rejection(400, message, None, PARAMS, response_format="json_schema") == Rejection(
        "response_format", "step_down"
    )


def test_short_parameter_names_must_be_quoted_to_count() -> None:
    params = {"stop": ["\n"], "n": 1, "user": "u", "temperature": 0}
    prose = "HTTP 400: Unsupported: streaming must stop before n is not supported for this user"
    assert rejection(400, prose, None, params, response_format=None) is None
    quoted = "HTTP 400: Unsupported parameter: 'stop' is not supported with this model."
    assert rejection(400, quoted, None, params, response_format=None) == Rejection("stop", "stop")
    bare = "HTTP 400: temperature is not supported with this model"
    assert rejection(400, bare, None, params, response_format=None) == Rejection("temperature", "stop")


def test_the_memory_key_drops_credentials_and_query() -> None:
    key = EndpointMemory.key("https://user:sk-secret@gw.example.com:8443/v1/?api-key=sk-x", "m")
    assert key == "https://gw.example.com:8443/v1 m"
    assert "secret" not in key and "sk-x" not in key
