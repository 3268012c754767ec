"""RequestBuilder with a schema: what one-row and packed requests carry, mode by mode."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import BaseModel

from llmframe._jobs import Job
from llmframe._packing import PACKED_INSTRUCTIONS, STRUCTURED_INSTRUCTIONS, answers_schema
from llmframe._requests import (
    DEFAULT_ANSWER_TOKENS,
    LEARNED_OUTPUT_SLACK,
    LEARNED_OUTPUT_WEIGHT,
    PACKED_TOKENS_PER_ROW,
    RequestBuilder,
    expected_tokens,
)
from llmframe._schema import OutputSchema, classify_schema, output_schema
from llmframe._template import parse_template
from llmframe._tokens import count_messages


class WordTokenizer:
    """One token per whitespace-separated word: offline, and easy to reason about."""

    name = "words"

    def count(self, text: str) -> int:
        return len(text.split())


@dataclass
class Sends:
    """What the endpoint accepts now (the part of EndpointState the builder reads)."""

    params: dict[str, Any] = field(default_factory=dict)
    response_format: str = "json_schema"


class Address(BaseModel):
    city: str


class Place(BaseModel):
    name: str
    population: int
    address: Address


TOKENIZER = WordTokenizer()
TEMPLATE = parse_template("Describe {place} briefly.")
MODES = ["json_schema", "json_object", "text"]


def jobs(n: int) -> list[Job]:
    return [Job(f"k{i}", {"place": f"town {i}"}, [i]) for i in range(n)]


def builder(schema: OutputSchema | None, mode: str = "json_schema", system: str | None = "Be exact.",
            **params: Any) -> RequestBuilder:  # fmt: skip
    return RequestBuilder(TEMPLATE, system, TOKENIZER, Sends(dict(params), mode), schema)


def schema_in(text: str) -> Any:
    assert text.count("<schema>") == 1
    return json.loads(text.split("<schema>", 1)[1].split("</schema>", 1)[0])


# ---- one row ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("annotation", [Place, int, list[Address]])
def test_one_row_carries_the_schema_in_the_system_message(mode: str, annotation: Any) -> None:
    schema = output_schema(annotation)
    request = builder(schema, mode).build(jobs(1))
    system, user = request.messages
    assert system["role"] == "system" and user == {"role": "user", "content": "Describe town 0 briefly."}
    assert system["content"] == "Be exact.\n\n" + schema.instructions(packed=False)
    assert schema_in(system["content"]) == schema.single_root()
    assert not request.packed and request.mode == mode
    assert request.input_tokens == count_messages(request.messages, TOKENIZER)
    assert request.output_tokens == expected_tokens(schema, TOKENIZER)


def test_one_row_in_json_schema_mode_sends_the_strict_single_root() -> None:
    for annotation in (Place, int):
        schema = output_schema(annotation)
        request = builder(schema, "json_schema").build(jobs(1))
        assert request.response_format == {
            "type": "json_schema",
            "json_schema": {"name": "answer", "strict": True, "schema": schema.single_root()},
        }
    assert request.response_format["json_schema"]["schema"]["properties"] == {"value": {"type": "integer"}}


def test_one_row_in_json_object_and_text_modes() -> None:
    schema = output_schema(Place)
    assert builder(schema, "json_object").build(jobs(1)).response_format == {"type": "json_object"}
    assert builder(schema, "text").build(jobs(1)).response_format is None


def test_one_row_without_a_system_prompt_gets_one_for_the_schema() -> None:
    schema = classify_schema(["pos", "neg"])
    system, user = builder(schema, system=None).build(jobs(1)).messages
    assert system == {"role": "system", "content": schema.instructions(packed=False)}
    assert user["content"] == "Describe town 0 briefly."


def test_one_row_without_a_schema_is_the_prompt_alone() -> None:
    for mode in MODES:
        request = builder(None, mode, system=None).build(jobs(1))
        assert request.messages == [{"role": "user", "content": "Describe town 0 briefly."}]
        assert request.response_format is None and request.mode == "text" and not request.packed
        assert request.output_tokens == DEFAULT_ANSWER_TOKENS


# ---- packed ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_packed_rows_carry_the_item_schema_in_the_system_message(mode: str) -> None:
    schema = output_schema(Place)
    request = builder(schema, mode).build(jobs(3))
    system, user = request.messages
    assert system["content"].startswith("Be exact.\n\n" + STRUCTURED_INSTRUCTIONS)
    assert schema_in(system["content"]) == schema.item
    assert "<task>\nDescribe {place} briefly.\n</task>" in system["content"]
    assert [json.loads(line) for line in user["content"].splitlines()] == [
        {"id": i, "place": f"town {i}"} for i in range(3)
    ]
    assert request.packed and request.mode == mode
    assert request.input_tokens == count_messages(request.messages, TOKENIZER)


@pytest.mark.parametrize("style", ["json", "lines"])
@pytest.mark.parametrize("system", [None, "Be exact."])
def test_packed_text_requests_count_what_they_send(style: str, system: str | None) -> None:
    """The system message is built and counted once per style: every request still counts
    exactly what it sends, and sends the same system message as packed_messages."""
    from llmframe._packing import packed_messages

    made = builder(None, "text", system=system)
    made.use_style(style)
    for n in (2, 7):
        items = jobs(n)
        request = made.build(items)
        assert request.messages == packed_messages(TEMPLATE.text, system, [j.values for j in items], None, style,
                                                   TEMPLATE.fields)  # fmt: skip
        assert request.input_tokens == count_messages(request.messages, TOKENIZER)
        assert made.request_tokens(style) + TOKENIZER.count(request.messages[1]["content"]) == request.input_tokens


def test_packed_rows_in_json_schema_mode_send_one_ref_per_id() -> None:
    schema = output_schema(Place)
    fmt = builder(schema, "json_schema").build(jobs(3)).response_format
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "answers" and fmt["json_schema"]["strict"] is True
    root = fmt["json_schema"]["schema"]
    assert root == schema.packed_root(3)
    assert root["properties"] == {str(i): {"$ref": "#/$defs/llmframe_item"} for i in range(3)}
    assert root["required"] == ["0", "1", "2"] and root["additionalProperties"] is False
    assert root["$defs"]["llmframe_item"] == schema.body() and "Address" in root["$defs"]


def test_packed_rows_in_json_object_and_text_modes() -> None:
    schema = output_schema(Place)
    assert builder(schema, "json_object").build(jobs(2)).response_format == {"type": "json_object"}
    assert builder(schema, "text").build(jobs(2)).response_format is None


def test_packed_rows_without_a_schema_keep_the_plain_answers() -> None:
    request = builder(None, "json_schema").build(jobs(2))
    assert request.response_format == answers_schema(2)
    assert PACKED_INSTRUCTIONS in request.messages[0]["content"] and "<schema>" not in request.messages[0]["content"]


def test_packed_output_tokens_count_every_row() -> None:
    schema = output_schema(Place)
    b = builder(schema)
    per_row = expected_tokens(schema, TOKENIZER) + PACKED_TOKENS_PER_ROW
    assert b.per_row_output == per_row
    for n in (2, 5):
        assert b.build(jobs(n)).output_tokens == n * per_row + 8


def test_a_users_max_tokens_is_per_answer() -> None:
    schema = output_schema(Place)
    sends = Sends({"max_tokens": 40, "temperature": 0}, "json_schema")
    before = copy.deepcopy(sends.params)
    b = RequestBuilder(TEMPLATE, None, TOKENIZER, sends, schema)
    assert b.answer_tokens == 40  # the user's, not the schema's guess
    one = b.build(jobs(1))
    assert one.params == {"max_tokens": 40, "temperature": 0} and one.output_tokens == 40
    packed = b.build(jobs(3))
    assert packed.params == {"max_tokens": 3 * (40 + PACKED_TOKENS_PER_ROW) + 8, "temperature": 0}
    assert packed.output_tokens == packed.params["max_tokens"]
    assert sends.params == before


def reply(n: int) -> str:
    return json.dumps({str(i): "a" for i in range(n)})


def test_packed_replies_teach_what_later_packed_requests_reserve() -> None:
    b = builder(None)
    guess = b.build(jobs(10))
    assert guess.output_tokens == 10 * (DEFAULT_ANSWER_TOKENS + PACKED_TOKENS_PER_ROW) + 8
    assert guess.reserved_output is None and guess.reserve_tokens == guess.tokens
    b.parse(reply(10), 10, truncated=True, used=500)  # a reply cut off says nothing of the length
    b.parse(reply(7), 10, used=20)  # nor one that answered under 80% of its rows (a refusal)
    b.parse(reply(1), 1, used=500)  # nor one row (no packing overhead in it)
    assert b.row_output is None and b.build(jobs(10)).reserved_output is None
    b.parse(reply(10), 10, used=80)  # 8 a row
    learned = b.build(jobs(10))
    assert learned.reserved_output == round(10 * 8 * LEARNED_OUTPUT_SLACK) + 8 < guess.output_tokens
    assert learned.reserve_tokens == learned.input_tokens + learned.reserved_output
    # the budget and the too-large checks keep the guess
    assert learned.output_tokens == guess.output_tokens and learned.tokens == guess.tokens
    b.parse(reply(10), 10, used=140)  # 14 a row: the average moves a fifth of the way
    average = 8 + LEARNED_OUTPUT_WEIGHT * (14 - 8)
    assert b.row_output == pytest.approx(average)
    assert b.build(jobs(20)).reserved_output == math.ceil(20 * average * LEARNED_OUTPUT_SLACK) + 8
    assert b.build(jobs(1)).reserved_output is None  # one row: its own guess


def test_a_remembered_row_output_serves_until_the_first_reply() -> None:
    """What an earlier run's packed rows took (stored with its verdict) is reserved from the
    first packed request; this run's first packed reply replaces it outright, with no
    average with the earlier figure; a value that is no count, or of another style, is ignored."""
    b = builder(None)
    b.use_style(b.style, remembered={"batch_size": 20, "style": b.style, "row_output": 6.0})
    assert b.row_output == 6.0 and b.remembered_output
    assert b.build(jobs(10)).reserved_output == math.ceil(10 * 6.0 * LEARNED_OUTPUT_SLACK) + 8
    b.parse(reply(10), 10, used=120)  # 12 a row
    assert b.row_output == 12 and not b.remembered_output
    b.parse(reply(10), 10, used=20)  # 2 a row: now averaged
    assert b.row_output == pytest.approx(12 + LEARNED_OUTPUT_WEIGHT * (2 - 12))
    for bad in ({"row_output": True}, {"row_output": -3}, {"row_output": float("inf")}, {"row_output": "6"},
                {"row_output": 6.0, "style": "lines" if b.style != "lines" else "json"}, "6.0", None):  # fmt: skip
        fresh = builder(None)
        fresh.use_style(fresh.style, remembered=bad)
        assert fresh.row_output is None and not fresh.remembered_output, bad
    tiny = builder(None)
    tiny.use_style(tiny.style, remembered={"style": tiny.style, "row_output": 1e-9})
    assert tiny.row_output == tiny.per_row_output / 4  # a floor under a figure that cannot be right


def test_what_replies_took_never_reserves_more_than_the_guess() -> None:
    """A model that reasons before it answers spends a fixed amount a reply: spread over a
    2-row reply's rows it says nothing of a 40-row request."""
    b = builder(None)
    b.parse(reply(2), 2, used=1516)
    packed = b.build(jobs(40))
    assert packed.reserved_output == packed.output_tokens == 40 * (DEFAULT_ANSWER_TOKENS + PACKED_TOKENS_PER_ROW) + 8


def test_a_users_max_tokens_is_reserved_whatever_replies_took() -> None:
    """The server counts a request's ``max_tokens`` against its TPM when it admits it."""
    sends = Sends({"max_tokens": 40}, "text")
    b = RequestBuilder(TEMPLATE, None, TOKENIZER, sends, None)
    b.parse(reply(10), 10, used=30)
    packed = b.build(jobs(10))
    assert packed.reserved_output is None
    assert packed.reserve_tokens == packed.tokens and packed.params["max_tokens"] == 10 * (40 + PACKED_TOKENS_PER_ROW) + 8


def test_what_sends_says_is_read_at_each_build() -> None:
    schema = output_schema(Place)
    sends = Sends({}, "json_schema")
    b = RequestBuilder(TEMPLATE, None, TOKENIZER, sends, schema)
    assert b.build(jobs(2)).response_format["type"] == "json_schema"
    sends.response_format = "json_object"  # the endpoint refused json_schema
    assert b.build(jobs(2)).response_format == {"type": "json_object"}
    assert b.build(jobs(1)).mode == "json_object"
    sends.response_format = "text"
    assert b.build(jobs(2)).response_format is None and b.build(jobs(1)).response_format is None


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("annotation", [Place, list[Address]])
def test_the_schema_sent_is_not_the_schemas_own_item(n: int, annotation: Any) -> None:
    # a client= or gateway that edits the request must not change later requests or the hash
    schema = output_schema(annotation)
    before, hash_before = copy.deepcopy(schema.item), schema.hash
    sent = builder(schema).build(jobs(n)).response_format["json_schema"]["schema"]
    for node in (sent, *sent.get("$defs", {}).values(), *sent["properties"].values()):
        node.pop("properties", None)
        node.pop("items", None)
    assert schema.item == before and schema.hash == hash_before


# ---- expected_tokens -----------------------------------------------------------------------------
def test_expected_tokens_grows_with_the_answer() -> None:
    small = expected_tokens(output_schema(int), TOKENIZER)
    big = expected_tokens(output_schema(Place), TOKENIZER)
    assert 0 < small < big


def test_expected_tokens_counts_the_longest_label() -> None:
    short = expected_tokens(classify_schema(["a", "b"]), TOKENIZER)
    long = expected_tokens(classify_schema(["a", "a label of quite a few words"]), TOKENIZER)
    assert long > short


def test_expected_tokens_of_a_recursive_model_is_finite() -> None:
    class Node(BaseModel):
        name: str
        children: list[Node] = []

    assert 0 < expected_tokens(output_schema(Node), TOKENIZER) < 10_000


def test_the_builder_uses_expected_tokens_without_max_tokens() -> None:
    schema = output_schema(Place)
    assert builder(schema).answer_tokens == expected_tokens(schema, TOKENIZER)
    assert builder(None).answer_tokens == DEFAULT_ANSWER_TOKENS
