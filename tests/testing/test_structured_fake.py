"""Structured output: the fake answers JSON-schema requests with values a test recomputes.

The requests are built here by hand, to the wire protocol, so the fake is checked
against the protocol rather than against llmframe's own schema code.
"""

from __future__ import annotations

import copy
import datetime as dt
import doctest
import hashlib
import json
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import openai
import pytest
from _support import ask, fails
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

import llmframe.testing._schema
from llmframe._packing import answers_schema, packed_messages
from llmframe.testing import Degrade, FakeServer, Faults, expected_answer, expected_value
from llmframe.testing._schema import fill

TEMPLATE = "Review: {review} ({stars} stars)"
ITEMS = [
    {"review": "Great value", "stars": "5"},
    {"review": "Broke after a day", "stars": "1"},
    {"review": "Très bien, mais cher", "stars": "4"},
    {"review": "Said meh", "stars": "3"},
    {"review": "Fine", "stars": "2"},
    {"review": "Would buy again", "stars": "5"},
]
PROMPTS = [TEMPLATE.format_map(item) for item in ITEMS]


class Address(BaseModel):
    city: str
    zip_code: Annotated[int, Field(ge=10000, le=99999)]


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "mixed"]
    stars: Annotated[int, Field(ge=1, le=5)]
    confidence: Annotated[float, Field(gt=0, lt=1)]
    summary: str
    tags: list[str]
    refund: bool | None = None
    seen: dt.date
    address: Address


REVIEW = Review.model_json_schema()


# ------------------------------------------------------------------------ fill rules


def test_fill_rules() -> None:
    assert expected_value("p", {"type": "integer", "minimum": 3, "maximum": 3}) == 3
    open_int = {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 2}
    assert expected_value("p", open_int) == 1
    open_unit = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
    assert all(0 < expected_value(f"p{i}", open_unit) < 1 for i in range(300))
    assert {expected_value(f"p{i}", {"type": "integer"}) for i in range(2000)} == set(range(101))
    assert expected_value("p", {"const": "fixed"}) == "fixed"
    assert expected_value("p", {"type": "null"}) is None
    assert expected_value("p", {"type": "string"}) == expected_answer("p")
    obj = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}}
    assert expected_value("p", obj) == {
        "a": expected_answer("p\x00/a"),
        "b": expected_answer("p\x00/b"),
    }
    assert list(expected_value("p", {"properties": {"z": {}, "a": {}}})) == ["z", "a"]
    nested = {"type": "array", "items": {"type": "string"}, "minItems": 5, "maxItems": 5}
    assert expected_value("p", nested) == [expected_answer(f"p\x00/{i}") for i in range(5)]
    # A type list and anyOf with null: null a quarter of the time, else the first other type.
    nullable = [expected_value(f"p{i}", {"type": ["integer", "null"]}) for i in range(400)]
    assert {type(v) for v in nullable} == {int, type(None)}
    either_schema = {"anyOf": [{"type": "boolean"}, {"type": "string"}]}
    either = [expected_value(f"p{i}", either_schema) for i in range(50)]
    assert {type(v) for v in either} == {bool, str}
    refs = {
        "definitions": {"N": {"type": "integer", "minimum": 7, "maximum": 7}},
        "type": "object",
        "properties": {"n": {"$ref": "#/definitions/N"}},
    }
    assert expected_value("p", refs) == {"n": 7}


def h(prompt: str, path: str = "") -> int:
    digest = hashlib.blake2b(f"{prompt}\x00{path}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest, "big")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_values_follow_the_documented_formulas(prompt: str) -> None:
    x = h(prompt)
    assert expected_value(prompt, {"type": "integer", "minimum": 1, "maximum": 5}) == 1 + x % 5
    assert expected_value(prompt, {"type": "integer", "minimum": 10}) == 10 + x % 101
    assert expected_value(prompt, {"type": "number"}) == round((x % 1000) / 1000 * 100, 3)
    bounded = {"type": "number", "minimum": -1, "maximum": 1}
    assert expected_value(prompt, bounded) == round(-1 + (x % 1000) / 1000 * 2, 3)
    assert expected_value(prompt, {"type": "boolean"}) is (x % 2 == 1)
    assert expected_value(prompt, {"enum": ["a", "b", "c"]}) == ["a", "b", "c"][x % 3]
    day = dt.date(2000, 1, 1) + dt.timedelta(days=x % 9000)
    assert expected_value(prompt, {"type": "string", "format": "date"}) == day.isoformat()
    stamp = dt.datetime.fromisoformat(
        expected_value(prompt, {"type": "string", "format": "date-time"})
    )
    assert stamp.utcoffset() == dt.timedelta(0) and stamp.year >= 2000
    nullable = expected_value(prompt, {"anyOf": [{"type": "integer"}, {"type": "null"}]})
    assert nullable == (None if x % 4 == 0 else x % 101)
    array = expected_value(prompt, {"type": "array", "items": {"type": "boolean"}})
    assert array == [h(prompt, f"/{i}") % 2 == 1 for i in range(1 + x % 3)]
    obj = {"type": "object", "properties": {"n": {"type": "integer"}}}
    assert expected_value(prompt, obj) == {"n": h(prompt, "/n") % 101}


def test_enum_labels() -> None:
    labels = {"enum": ["a", "b", "c"]}
    assert {expected_value(f"p{i}", labels) for i in range(60)} == {"a", "b", "c"}
    assert expected_value("p", labels, answer_fn=lambda _: "c") == "c"
    # A label but for case, spaces and edge marks is said as answer_fn says it.
    for sloppy in ("  C.", '"c"', "C\n", "\u201cc\u201d!"):
        assert expected_value("p", labels, answer_fn=lambda _, s=sloppy: s) == sloppy
    for other in ("cc", "c d", "", "-c"):
        assert expected_value("p", labels, answer_fn=lambda _, o=other: o) in ("a", "b", "c")
    below = {"type": "object", "properties": {"label": labels}}
    # An object's label field follows answer_fn too, but only exactly; a list's items
    # follow the hash (so a list of labels stays varied).
    assert {expected_value(f"p{i}", below, answer_fn=lambda _: "c")["label"] for i in range(60)} == {"c"}
    assert {
        expected_value(f"p{i}", below, answer_fn=lambda _: " C.")["label"] for i in range(60)
    } == {"a", "b", "c"}
    listed = {"type": "array", "items": labels, "minItems": 3, "maxItems": 3}
    assert len({tuple(expected_value(f"p{i}", listed, answer_fn=lambda _: "c")) for i in range(30)}) > 1
    multi = {"type": "array", "items": labels, "uniqueItems": True}
    picks = [expected_value(f"p{i}", multi) for i in range(100)]
    assert all(len(set(p)) == len(p) for p in picks) and {len(p) for p in picks} == {1, 2, 3}
    two = {"type": "array", "items": {"enum": ["x", "y"]}}
    assert {tuple(sorted(expected_value(f"p{i}", two))) for i in range(60)} == {
        ("x",),
        ("y",),
        ("x", "y"),
    }
    at_least = {"type": "array", "items": {"enum": ["x", "y"]}, "minItems": 4}
    assert len(expected_value("p", at_least)) == 4  # repeats only when the enum is too short


def test_pydantic_field_kinds_cover_their_range() -> None:
    values = [expected_value(f"row {i}", REVIEW) for i in range(400)]
    for value in values:
        Review.model_validate(value)
        assert 1 <= len(value["tags"]) <= 3 and 0 < value["confidence"] < 1
    assert {v["stars"] for v in values} == {1, 2, 3, 4, 5}
    assert {v["sentiment"] for v in values} == {"positive", "negative", "mixed"}
    assert {v["refund"] for v in values} == {None, True, False}
    assert 0.15 < sum(v["refund"] is None for v in values) / len(values) < 0.35
    assert len({v["seen"] for v in values}) > 300
    assert all(10000 <= v["address"]["zip_code"] <= 99999 for v in values)
    assert all(re.fullmatch(r"a[0-9a-f]{7}", v["address"]["city"]) for v in values)


def test_recursive_schema_stays_finite() -> None:
    class Node(BaseModel):
        name: str
        children: list[Node]
        parent: Node | None = None

    schema = Node.model_json_schema()
    for i in range(20):
        Node.model_validate(expected_value(f"tree {i}", schema))


def test_fill_does_not_change_the_schema() -> None:
    schema = copy.deepcopy(REVIEW)
    fill("p", schema, schema)
    assert schema == REVIEW


def test_expected_value_doctest() -> None:
    result = doctest.testmod(llmframe.testing._schema)
    assert result.attempted >= 5 and result.failed == 0


@pytest.fixture
def server(fake_server: FakeServer) -> FakeServer:
    return fake_server


# ------------------------------------------------------------------ the wire protocol


def wrapped(item: dict[str, Any]) -> dict[str, Any]:
    """ROOT for a single value: llmframe's wrapper (the item's $defs lifted to the root)."""
    item = dict(item)
    defs = item.pop("$defs", None)
    root = {
        "type": "object",
        "title": "llmframe_value",
        "properties": {"value": item},
        "required": ["value"],
        "additionalProperties": False,
    }
    return {**root, "$defs": defs} if defs else root


def json_schema(root: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": root}}


def packed_format(item: dict[str, Any], n: int) -> dict[str, Any]:
    """Packed structured response_format: ITEM in $defs, every id a $ref to it."""
    item = dict(item)
    defs = {"llmframe_item": item, **item.pop("$defs", {})}
    ids = [str(i) for i in range(n)]
    return json_schema(
        {
            "type": "object",
            "$defs": defs,
            "properties": {i: {"$ref": "#/$defs/llmframe_item"} for i in ids},
            "required": ids,
            "additionalProperties": False,
        }
    )


def tag(schema: dict[str, Any]) -> str:
    return f"<schema>\n{json.dumps(schema, indent=1)}\n</schema>"


def one_row(server: FakeServer, prompt: str, **params: Any) -> Any:
    return json.loads(ask(server, prompt, **params).choices[0].message.content)


def packed(
    server: FakeServer, item: dict[str, Any], *, via: str = "defs", items: Any = ITEMS
) -> str:
    """The content of a packed structured request; ``via`` is "defs" or "tag"."""
    if via == "defs":
        messages = packed_messages(TEMPLATE, "Be brief.", items)
        reply = ask(server, messages=messages, response_format=packed_format(item, len(items)))
    else:
        messages = packed_messages(TEMPLATE, f"Be brief.\n{tag(item)}", items)
        reply = ask(server, messages=messages, response_format={"type": "json_object"})
    return str(reply.choices[0].message.content)


def expected_items(item: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return {str(i): expected_value(prompt, item, **kwargs) for i, prompt in enumerate(PROMPTS)}


# -------------------------------------------------------------------- one-row requests


def test_one_row_json_schema_answers_every_field(server: FakeServer) -> None:
    prompt = PROMPTS[0]
    reply = ask(server, prompt, response_format=json_schema(REVIEW))
    content = reply.choices[0].message.content
    want = expected_value(prompt, REVIEW)
    assert content == json.dumps(want, ensure_ascii=False, separators=(",", ":"))
    assert Review.model_validate_json(content).model_dump(mode="json") == want
    assert want["sentiment"] in ("positive", "negative", "mixed")
    # Only the answer itself is at path ""; a property is a string of its own.
    assert want["summary"] == expected_answer(f"{prompt}\x00/summary") != expected_answer(prompt)
    assert want["address"]["city"] == expected_answer(f"{prompt}\x00/address/city")


def test_one_row_schema_tag_takes_the_last_block(server: FakeServer) -> None:
    other = {"type": "object", "properties": {"wrong": {"type": "integer"}}}
    messages = [
        {"role": "system", "content": f"Old:\n{tag(other)}"},
        {"role": "developer", "content": f"Answer in JSON.\n{tag(other)}\nthen\n{tag(REVIEW)}"},
        {"role": "user", "content": PROMPTS[1]},
    ]
    want = expected_value(PROMPTS[1], REVIEW)
    assert json.loads(ask(server, messages=messages).choices[0].message.content) == want
    assert one_row(server, "", messages=messages, response_format={"type": "json_object"}) == want


@pytest.mark.parametrize(
    "kind",
    [
        Literal["positive", "negative"],
        int,
        Annotated[int, Field(ge=1, le=5)],
        list[str],
        dt.date,
        float | None,
        list[Address],
    ],
)
def test_wrapped_single_value_equals_the_packed_item(server: FakeServer, kind: Any) -> None:
    item = TypeAdapter(kind).json_schema()
    for prompt in PROMPTS[:3]:
        got = one_row(server, prompt, response_format=json_schema(wrapped(item)))
        assert got == {"value": expected_value(prompt, item)}
        TypeAdapter(kind).validate_python(got["value"])
    answers = json.loads(packed(server, item))
    assert answers == expected_items(item)
    first = one_row(server, PROMPTS[0], response_format=json_schema(wrapped(item)))
    assert answers["0"] == first["value"]


def test_wrapped_string_and_label_are_the_text_answer(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory(answer_fn=lambda p: "negative" if "Broke" in p else "shout")
    label = {"enum": ["positive", "negative"], "type": "string"}
    text = {"type": "string"}
    assert one_row(server, PROMPTS[1], response_format=json_schema(wrapped(label))) == {
        "value": "negative"
    }
    assert one_row(server, PROMPTS[1], response_format=json_schema(wrapped(text))) == {
        "value": "negative"
    }
    assert one_row(server, PROMPTS[0], response_format=json_schema(wrapped(text))) == {
        "value": "shout"
    }
    # "shout" is not a label: the label comes from the hash, and is a label.
    assert expected_value(PROMPTS[0], label) in ("positive", "negative")
    sloppy = fake_server_factory(answer_fn=lambda p: "  Negative." if "Broke" in p else "shout")
    assert one_row(sloppy, PROMPTS[1], response_format=json_schema(wrapped(label))) == {
        "value": "  Negative."
    }
    answers = json.loads(packed(sloppy, label))
    assert answers["1"] == "  Negative." and answers["0"] in ("positive", "negative")


# --------------------------------------------------------------------- packed requests


@pytest.mark.parametrize("via", ["defs", "tag"])
def test_packed_answers_every_field_of_every_item(server: FakeServer, via: str) -> None:
    content = packed(server, REVIEW, via=via)
    answers = json.loads(content)
    assert answers == expected_items(REVIEW)
    assert content == json.dumps(expected_items(REVIEW), ensure_ascii=False, separators=(",", ":"))
    for i, prompt in enumerate(PROMPTS):
        assert Review.model_validate(answers[str(i)]).model_dump(mode="json") == answers[str(i)]
        assert one_row(server, prompt, response_format=json_schema(REVIEW)) == answers[str(i)]
    assert server.stats.packing_faults == {}


def test_packed_tag_inside_the_template_is_not_the_schema(server: FakeServer) -> None:
    template = "Review {review}: <schema>{{}}</schema>"
    system = f"Rules.\n{tag(REVIEW)}"  # before the <task> block, which holds a decoy
    messages = packed_messages(template, system, ITEMS[:2])
    answers = json.loads(ask(server, messages=messages).choices[0].message.content)
    assert answers == {
        str(i): expected_value(template.format_map(item), REVIEW)
        for i, item in enumerate(ITEMS[:2])
    }


def test_packed_item_missing_a_field_gets_a_valid_guess(server: FakeServer) -> None:
    items = [ITEMS[0], {"review": "no stars"}]
    answers = json.loads(packed(server, REVIEW, items=items))
    assert answers["0"] == expected_value(PROMPTS[0], REVIEW)
    assert answers["1"] == expected_value("", REVIEW, answer_fn=lambda _: "?")
    Review.model_validate(answers["1"])


def test_answers_are_deterministic_and_differ_between_rows(server: FakeServer) -> None:
    first, again = packed(server, REVIEW), packed(server, REVIEW)
    assert first == again
    answers = list(json.loads(first).values())
    assert len({a["summary"] for a in answers}) == len(answers)
    assert len({json.dumps(a) for a in answers}) == len(answers)
    server.configure(seed=99)  # the seed drives faults, never answers
    assert packed(server, REVIEW) == first


def test_unresolvable_ref_is_a_400(server: FakeServer) -> None:
    broken = {"type": "object", "properties": {"x": {"$ref": "#/$defs/Missing"}}}
    error = fails(server, openai.BadRequestError, response_format=json_schema(broken))
    assert error.param == "response_format" and "Missing" in error.message
    assert server.stats.bad_requests == 1 and server.stats.ok == 0


# ------------------------------------------------------------ degrading, compatibility


def test_degrading_model_gives_valid_wrong_structured_answers(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory(degrade=Degrade(error_per_item=1.0, start=0))
    want = expected_items(REVIEW)
    answers = json.loads(packed(server, REVIEW))
    assert sorted(answers) == sorted(want)
    assert all(answers[key] != want[key] for key in want)
    for value in answers.values():
        Review.model_validate(value)
    assert server.stats.degraded == len(want)
    shifted = fake_server_factory(degrade=Degrade(error_per_item=0.0, shift_after=2))
    answers = json.loads(packed(shifted, REVIEW))
    order = [want[str(i)] for i in range(len(want))]
    assert [answers[str(i)] for i in range(len(want))] == order[:2] + order[1:-1]
    assert shifted.stats.degraded == len(want) - 2


def test_text_answers_unchanged(server: FakeServer) -> None:
    # No schema, a plain-string ROOT, and plain-string items: today's answers, byte for byte.
    assert ask(server, PROMPTS[0]).choices[0].message.content == expected_answer(PROMPTS[0])
    plain = ask(server, PROMPTS[0], response_format=json_schema({"type": "string"}))
    assert plain.choices[0].message.content == expected_answer(PROMPTS[0])
    text = {str(i): expected_answer(prompt) for i, prompt in enumerate(PROMPTS)}
    correct = json.dumps(text, ensure_ascii=False, separators=(",", ":"))
    assert packed(server, {"type": "string"}) == correct
    assert packed(server, {"type": "string"}, via="tag") == correct
    messages = packed_messages(TEMPLATE, None, ITEMS)
    old = ask(server, messages=messages, response_format=answers_schema(len(ITEMS)))
    assert old.choices[0].message.content == correct


@pytest.mark.parametrize("rejects_like", ["openai", "llama.cpp"])
def test_json_schema_off_rejects_structured_requests_as_before(
    fake_server_factory: Callable[..., FakeServer], rejects_like: str
) -> None:
    server = fake_server_factory(json_schema=False, rejects_like=rejects_like)
    error_type = openai.BadRequestError if rejects_like == "openai" else openai.InternalServerError
    for response_format in (json_schema(REVIEW), packed_format(REVIEW, 2)):
        error = fails(server, error_type, response_format=response_format)
        if rejects_like == "openai":
            assert error.param == "response_format" and "json_schema" in error.message
        else:
            assert "Input should be 'text' or 'json_object'" in error.message
    # The <schema> tag with json_object is how such a server gets structured answers.
    assert json.loads(packed(server, REVIEW, via="tag")) == expected_items(REVIEW)
    assert server.stats.bad_requests == 2 and server.stats.ok == 1


# ---------------------------------------------------------------------------- faults


class _Pairs(list[tuple[str, Any]]):
    pass


def top_pairs(content: str) -> list[tuple[str, Any]]:
    """The top-level (key, value) pairs of a JSON object, repeated keys kept."""

    def plain(value: Any) -> Any:
        if isinstance(value, _Pairs):
            return {key: plain(sub) for key, sub in value}
        return [plain(sub) for sub in value] if isinstance(value, list) else value

    return [(key, plain(value)) for key, value in json.loads(content, object_pairs_hook=_Pairs)]


def differing(content: str, want: dict[str, Any]) -> list[str]:
    answers = json.loads(content)
    assert sorted(answers) == sorted(want), "every id, once"
    return [key for key in want if answers[key] != want[key]]


WRONG_TYPES = [
    ({"type": "integer"}, "n/a"),
    ({"type": "number"}, "n/a"),
    ({"type": "string"}, 12345),
    ({"type": "string", "format": "date"}, 12345),
    ({"enum": ["a", "b"], "type": "string"}, 12345),
    ({"type": "boolean"}, "maybe"),
    ({"type": "array", "items": {"type": "integer"}}, "x"),
    ({"anyOf": [{"type": "boolean"}, {"type": "null"}]}, "maybe"),
    ({"type": ["integer", "null"]}, "n/a"),
]


@pytest.mark.parametrize(
    ("item", "damaged"),
    # An object item: its one field is damaged. A scalar item: the item itself.
    [({"type": "object", "properties": {"f": s}}, {"f": w}) for s, w in WRONG_TYPES]
    + [({"type": "object", "properties": {"f": {"type": "object", "properties": {}}}}, {"f": 7})]
    + [(s, w) for s, w in WRONG_TYPES],
)
def test_wrong_type_fault(
    fake_server_factory: Callable[..., FakeServer], item: Any, damaged: Any
) -> None:
    for seed in range(3):
        server = fake_server_factory(faults=Faults(wrong_type_rate=1.0), seed=seed)
        want = expected_items(item)
        content = packed(server, item)
        (key,) = differing(content, want)
        assert json.loads(content)[key] == damaged
        assert server.stats.packing_faults == {"wrong_type": 1}


def test_wrong_type_damages_one_field_of_a_pydantic_item(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    damaged = set()
    for seed in range(12):
        server = fake_server_factory(faults=Faults(wrong_type_rate=1.0), seed=seed)
        want = expected_items(REVIEW)
        content = packed(server, REVIEW)
        (key,) = differing(content, want)
        got = json.loads(content)[key]
        (name,) = [name for name in got if got[name] != want[key][name]]
        with pytest.raises(ValidationError) as caught:
            Review.model_validate(got)
        assert [error["loc"][0] for error in caught.value.errors()] == [name]
        damaged.add(name)
    assert len(damaged) >= 4  # the field is drawn, not always the same one


@pytest.mark.parametrize("via", ["defs", "tag"])
def test_bad_enum_fault(fake_server_factory: Callable[..., FakeServer], via: str) -> None:
    item = {
        "type": "object",
        "properties": {
            "note": {"type": "string"},
            "first": {"anyOf": [{"$ref": "#/$defs/Mood"}, {"type": "null"}]},
            "second": {"enum": ["x", "y"]},
        },
        "$defs": {"Mood": {"enum": ["happy", "sad"], "type": "string"}},
    }
    server = fake_server_factory(faults=Faults(bad_enum_rate=1.0))
    want = expected_items(item)
    content = packed(server, item, via=via)
    (key,) = differing(content, want)
    assert json.loads(content)[key] == {**want[key], "first": "not_a_label"}
    assert server.stats.packing_faults == {"bad_enum": 1}


def test_bad_enum_on_a_label_item_and_without_an_enum(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory(faults=Faults(bad_enum_rate=1.0))
    label = TypeAdapter(Literal["positive", "negative"]).json_schema()
    content = packed(server, label)
    (key,) = differing(content, expected_items(label))
    assert json.loads(content)[key] == "not_a_label"
    assert server.stats.packing_faults == {"bad_enum": 1}
    no_enum = Address.model_json_schema()
    assert json.loads(packed(server, no_enum)) == expected_items(no_enum)
    assert server.stats.packing_faults == {"bad_enum": 1}  # not applied, not counted


@pytest.mark.parametrize("kind", ["drop", "duplicate", "shuffle", "wrong_id", "truncate", "prose"])
def test_old_faults_on_structured_answers(
    fake_server_factory: Callable[..., FakeServer], kind: str
) -> None:
    server = fake_server_factory(faults=Faults(**{f"{kind}_rate": 1.0}))
    want = expected_items(REVIEW)
    correct = json.dumps(want, ensure_ascii=False, separators=(",", ":"))
    content = packed(server, REVIEW)
    assert server.stats.packing_faults == {kind: 1}
    if kind == "truncate":
        assert correct.startswith(content) and len(content) < len(correct)
        with pytest.raises(ValueError):
            json.loads(content)
        return
    if kind == "prose":
        fenced = re.search(r"```json\n(.*?)\n```", content, re.DOTALL)
        assert fenced and json.loads(fenced.group(1)) == want
        return
    pairs = top_pairs(content)
    keys = [key for key, _ in pairs]
    if kind == "drop":
        assert len(pairs) == len(want) - 1 and all(want[k] == v for k, v in pairs)
    elif kind == "duplicate":
        (twice,) = {key for key in keys if keys.count(key) == 2}
        values = [v for k, v in pairs if k == twice]
        assert want[twice] in values and values[0] != values[1]
        for value in values:
            Review.model_validate(value)  # the other answer is valid, only not the right one
    elif kind == "shuffle":
        got = dict(pairs)
        wrong = [k for k in want if got[k] != want[k]]
        assert len(wrong) == 2
        a, b = wrong
        assert got[a] == want[b] and got[b] == want[a]
    elif kind == "wrong_id":
        (extra,) = set(keys) - set(want)
        got = dict(pairs)
        assert all(got[k] == want[k] for k in want)
        Review.model_validate(got[extra])


def test_duplicate_of_a_constant_item_still_differs(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory(faults=Faults(duplicate_rate=1.0))
    pairs = top_pairs(packed(server, {"const": "same"}))
    keys = [key for key, _ in pairs]
    (twice,) = {key for key in keys if keys.count(key) == 2}
    values = [value for key, value in pairs if key == twice]
    assert "same" in values and len({json.dumps(v) for v in values}) == 2


def test_structured_faults_spare_text_packing_and_one_row_requests(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    server = fake_server_factory(faults=Faults(wrong_type_rate=1.0, bad_enum_rate=1.0))
    messages = packed_messages(TEMPLATE, None, ITEMS)
    for response_format in (answers_schema(len(ITEMS)), {"type": "json_object"}, None):
        reply = ask(server, messages=messages, response_format=response_format)
        assert json.loads(reply.choices[0].message.content) == {
            str(i): expected_answer(prompt) for i, prompt in enumerate(PROMPTS)
        }
    assert one_row(server, PROMPTS[0], response_format=json_schema(REVIEW)) == expected_value(
        PROMPTS[0], REVIEW
    )
    assert ask(server, "plain").choices[0].message.content == expected_answer("plain")
    assert server.stats.packing_faults == {}


def test_structured_fault_rates_leave_text_packing_draws_alone(
    fake_server_factory: Callable[..., FakeServer],
) -> None:
    # A text run sees the same faults whether or not structured fault rates are set.
    def contents(**rates: float) -> list[str]:
        server = fake_server_factory(
            faults=Faults(shuffle_rate=0.5, drop_rate=0.5, **rates), seed=7
        )
        messages = packed_messages(TEMPLATE, None, ITEMS)
        return [ask(server, messages=messages).choices[0].message.content for _ in range(8)]

    plain = contents()
    assert len(set(plain)) > 1
    assert contents(wrong_type_rate=0.5, bad_enum_rate=0.5) == plain
