"""A packed request's input tokens, added up from its items' counts, against a full count.

Where the encoding allows (``_requests.LINE_ADDITIVE``), the builder counts each row's
item line once (to size batches) and adds those counts up for the request instead of
encoding the whole user message again. Two properties make that exact; both are checked
here: (1) with the real BPE encoding available offline, every request's count equals a
full count of what it sends, over values chosen to straddle token boundaries; (2) for the
pre-tokenizer patterns of cl100k and o200k, splitting a packed message at its line breaks
splits no pre-token, and an item's id is pre-tokens of its own.
"""

from __future__ import annotations

import random
import warnings
from typing import Any, ClassVar

import pytest
import regex
import tiktoken_ext.openai_public as openai_public

from llmframe import _packing
from llmframe._jobs import Job
from llmframe._requests import LINE_ADDITIVE, RequestBuilder
from llmframe._template import parse_template
from llmframe._tokens import count_messages, get_tokenizer

# Ends and starts that BPE or the pre-tokenizer may join to what is next to them.
PIECES = [
    "", " ", "  ", "a", "Great value", "it's", "ab'", "K0000042", "<<x>>", ".", "!?", '"', "\\", "}", "{", "\n",
    "\r\n", "\t", "\u2028", "\x85", "\u3000", "é", "naïve", "日本語", "🙂", "12", "1234", "x1", ":", ",", "'s",
    "/", "//", "</task>", "<|endoftext|>", " end ", "- item", "Ünïcödé", "\u0301", "null", "[1, 2]",
]


def values(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 4)))


class Sends:
    params: ClassVar[dict[str, Any]] = {}
    response_format = "json_schema"


def bpe_tokenizer() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # offline: the fallback notice
        tokenizer = get_tokenizer("gpt-4o-mini")
    if tokenizer.name not in LINE_ADDITIVE:
        pytest.skip(f"no BPE encoding here ({tokenizer.name})")
    return tokenizer


@pytest.mark.parametrize("style", [_packing.JSON, _packing.LINES])
@pytest.mark.parametrize("fields", [("text",), ("text", "note")])
def test_packed_requests_count_exactly_what_they_send(style: str, fields: tuple[str, ...]) -> None:
    tokenizer = bpe_tokenizer()
    template = parse_template(" / ".join(f"{{{f}}}" for f in fields))
    builder = RequestBuilder(template, None, tokenizer, Sends())
    builder.use_style(style)
    assert builder.additive
    rng = random.Random(f"{style}{fields}")
    for n in (2, 3, 11, 40, 1002):  # ids of one to four digits
        jobs = [Job(f"k{i}", {f: values(rng) for f in fields}, [i]) for i in range(n)]
        request = builder.build(jobs)
        assert request.input_tokens == count_messages(request.messages, tokenizer), n


def test_an_item_count_is_its_line_and_line_break() -> None:
    tokenizer = bpe_tokenizer()
    builder = RequestBuilder(parse_template("{text}"), None, tokenizer, Sends())
    job = Job("k", {"text": "Broke after a day."}, [0])
    assert builder.item_tokens(job) == tokenizer.count('{"id":0,"text":"Broke after a day."}\n')


def test_other_tokenizers_count_the_whole_message() -> None:
    class Halves:
        """Not additive over lines: the builder must count the whole message."""

        name = "halves"

        def count(self, text: str) -> int:
            return (len(text) + 1) // 2

    builder = RequestBuilder(parse_template("{text}"), None, Halves(), Sends())
    assert not builder.additive
    jobs = [Job(f"k{i}", {"text": "abc" * i}, [i]) for i in range(5)]
    request = builder.build(jobs)
    assert request.input_tokens == count_messages(request.messages, Halves())


def pattern(encoding: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The pre-tokenizer pattern of an encoding, without its ranks (no download)."""
    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *a, **k: {})
    return regex.compile(encoding()["pat_str"])


@pytest.mark.parametrize("encoding", [openai_public.cl100k_base, openai_public.o200k_base])
@pytest.mark.parametrize("style", [_packing.JSON, _packing.LINES])
def test_line_breaks_and_ids_split_no_pretoken(encoding: Any, style: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pat = pattern(encoding, monkeypatch)
    assert encoding.__name__ in LINE_ADDITIVE
    rng = random.Random(f"{encoding.__name__}{style}")
    for fields in (("text",), ("text", "note")):
        items = [{f: values(rng) for f in fields} for _ in range(1500)]
        user = _packing.packed_user(items, style)
        lines = user.split("\n")
        assert len(lines) == len(items)  # values' line breaks are escaped
        whole = pat.findall(user)
        per_line = [t for i, line in enumerate(lines) for t in pat.findall(line if i == len(lines) - 1 else line + "\n")]
        assert whole == per_line
        for i in (7, 42, 999, 1000, 1234):  # the id's own pre-tokens, the rest as with id 0
            zero = pat.findall(_packing.item_text(0, items[i], style))
            own = pat.findall(_packing.item_text(i, items[i], style))
            ids = pat.findall(str(i))
            k = zero.index("0")  # after '{"', 'id', '":' (or at the line's start): the id's
            assert k == (3 if style == _packing.JSON else 0)
            assert own == zero[:k] + ids + zero[k + 1 :]


def test_jobs_sized_in_one_style_are_sent_right_in_another() -> None:
    """A job keeps its item's text and count from the first request that sized it; a
    builder in the other style must not reuse them (the text would be the wrong style's)."""
    tokenizer = bpe_tokenizer()
    template = parse_template("{text}")
    jobs = [Job(f"k{i}", {"text": f"row {i}."}, [i]) for i in range(4)]
    for style in (_packing.JSON, _packing.LINES, _packing.JSON):
        builder = RequestBuilder(template, None, tokenizer, Sends())
        builder.use_style(style)
        request = builder.build(jobs)
        assert request.messages[1]["content"] == _packing.packed_user([j.values for j in jobs], style)
        assert request.input_tokens == count_messages(request.messages, tokenizer)
        assert [j.item_tokens for j in jobs] == [builder.count_item(j.values, style) for j in jobs]
