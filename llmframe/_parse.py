"""Parsing answers, paranoid about packed ones.

A packed answer is accepted per id, never by position. What cannot be trusted
is reported so the engine resends only those rows:

- unparsable JSON, or a reply cut off at ``max_tokens``: every id is suspect;
- a missing id: that row;
- an id that appears twice (even with equal answers): that row, because the
  model lost track of which answer belongs where;
- an id that was not asked for: the batch's numbering is off, so every id is
  suspect (a shifted answer would otherwise slip through as "correct").

The same rules hold for a reply in the lines style (:func:`parse_packed_lines`):
``id answer`` per line (``id: answer`` and ``id<TAB>answer`` are read too), ids
in order ``0, 1, 2, ...``, after prose or in a code fence when no id line lies
outside it. As a real model writes raw text, an answer is accepted only when
its line cannot be part of another answer, else that row is asked again:

- the id lines before and after it are those of the ids before and after it,
  each once (an answer may hold a line that starts like ``3 ...``);
- no text follows it before the next id line: a continuation line, text after a
  blank line, or prose after the last answer may all belong to it;
- it opens no code fence that it leaves open, and does not start with a dash and
  a space (``0 - positive``: a separator some models write, or the answer's
  bullet? the row's one-row reply tells);
- quoted, it is one JSON string, decoded as in the JSON style (a line break is
  ``\\n`` in it). A one-row answer keeps its quotes; normalised, the two agree.

Not caught: an answer whose extra lines are numbered exactly as the ids that
follow, where those ids' own answers are missing (``0 Steps:`` ``1 mix`` ``2 bake``).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PackedAnswers",
    "json_candidates",
    "normalize",
    "parse_packed",
    "parse_packed_lines",
    "parse_single",
    "read_single",
]

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
#: A line that opens or closes a code fence: ```` ``` ```` or ```` ```lang ````.
_FENCE_LINE = re.compile(r"[ \t]*```[^`]*")
#: ``7 answer``, ``7: answer``, ``7<TAB>answer``, or a bare ``7`` or ``7:`` (an empty answer).
_ID_LINE = re.compile(r"(\d{1,6})(?::?[ \t]|:?$)(.*)")
_DASH = re.compile(r"[-\u2013\u2014][ \t]")


@dataclass
class PackedAnswers:
    """Answers by item id, and the ids that must be asked again with the reason."""

    answers: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    #: Of the failed ids, those whose answer came but does not validate against the schema.
    invalid: set[int] = field(default_factory=set)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    # Numbers, booleans, lists: keep them as the JSON the model wrote.
    return json.dumps(value, ensure_ascii=False)


def json_candidates(content: str, brackets: tuple[str, ...] = ("{}",)) -> list[str]:
    """Texts that may hold the JSON value, most likely first: the whole reply, each code
    fence, and the span from the first opening to the last closing of each bracket pair."""
    text = content.strip()
    out = [text]
    out.extend(m.strip() for m in _FENCE.findall(text))
    for pair in brackets:
        open_, close = pair[0], pair[1]
        start, end = text.find(open_), text.rfind(close)
        if 0 <= start < end:
            out.append(text[start : end + 1])
    return out


def _load_pairs(content: str) -> list[tuple[str, Any]] | None:
    for candidate in json_candidates(content):
        try:
            pairs = json.loads(candidate, object_pairs_hook=lambda p: ("__pairs__", p))
        except ValueError:
            continue
        if isinstance(pairs, tuple) and pairs[0] == "__pairs__":
            return _flatten(pairs[1])
        if isinstance(pairs, list):  # [{"id": 0, "answer": ...}, ...]
            flat: list[tuple[str, Any]] = []
            for entry in pairs:
                if not (isinstance(entry, tuple) and entry[0] == "__pairs__"):
                    return None
                d = dict(entry[1])
                if "id" not in d or len(d) != 2:
                    return None
                value = next(v for k, v in entry[1] if k != "id")
                flat.append((str(d["id"]), _unwrap(value)))
            return flat
    return None


def _unwrap(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__pairs__":
        return {k: _unwrap(v) for k, v in value[1]}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def _flatten(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    # {"answers": {...}} wrappers are common; unwrap one level when it is the only key.
    if len(pairs) == 1:
        only = pairs[0][1]
        if isinstance(only, tuple) and only[0] == "__pairs__" and not pairs[0][0].strip().isdigit():
            return _flatten(only[1])
    return [(k, _unwrap(v)) for k, v in pairs]


def parse_packed(
    content: str | None, n_items: int, *, truncated: bool = False, item: Callable[[Any], str] | None = None
) -> PackedAnswers:
    """Match a packed reply to item ids ``0..n_items-1``.

    ``item`` checks one answer on its own (a schema's validator): it returns the
    answer's stored text or raises ``ValueError`` naming what is wrong; only that
    id fails. Without it an answer is its text (JSON for a non-string).
    """
    if truncated:
        return _all_failed(n_items, "reply cut off at max_tokens (finish_reason=length)")
    pairs = _load_pairs(content or "")
    if pairs is None:
        return _all_failed(n_items, "reply is not a JSON object of answers by id")
    return _match(pairs, n_items, item)


def parse_packed_lines(content: str | None, n_items: int, *, truncated: bool = False) -> PackedAnswers:
    """Match a packed reply in the lines style to item ids ``0..n_items-1`` (see the module
    docstring). A reply without id lines that is a JSON object of answers by id is read as one."""
    if truncated:
        return _all_failed(n_items, "reply cut off at max_tokens (finish_reason=length)")
    text = content or ""
    found = _id_lines(_answer_block(text.split("\n")))
    if not found:
        pairs = _load_pairs(text)
        return _match(pairs, n_items, None) if pairs else _all_failed(n_items, "reply has no lines of answers by id")
    return _judge_lines(found, n_items)


def _is_id_line(line: str) -> bool:
    return _ID_LINE.fullmatch(line.rstrip()) is not None


def _answer_block(lines: list[str]) -> list[str]:
    # The inside of the reply's one code fence, if no id line lies outside it; else every line
    # (where fence lines are text past an answer's line).
    fences = [i for i, line in enumerate(lines) if _FENCE_LINE.fullmatch(line.rstrip())]
    if len(fences) == 2 and not any(map(_is_id_line, lines[: fences[0]] + lines[fences[1] + 1 :])):
        return lines[fences[0] + 1 : fences[1]]
    return lines


@dataclass
class _IdLine:
    id: int
    text: str
    runs_on: bool = False  # a non-blank line without an id follows, before the next id line


def _id_lines(lines: list[str]) -> list[_IdLine]:
    found: list[_IdLine] = []
    for line in lines:
        match = _ID_LINE.fullmatch(line.rstrip())
        if match is not None:
            found.append(_IdLine(int(match.group(1)), match.group(2).strip()))
        elif found and line.strip():
            found[-1].runs_on = True  # prose before the first id line is left out
    return found


def _judge_lines(found: list[_IdLine], n_items: int) -> PackedAnswers:
    unknown = next((line.id for line in found if line.id >= n_items), None)
    if unknown is not None:
        return _all_failed(n_items, f"reply has an id that was not asked for ({unknown}); numbering is off")
    result = PackedAnswers()
    count = Counter(line.id for line in found)
    for i, line in enumerate(found):
        if count[line.id] > 1:
            continue
        before = found[i - 1].id if i else -1
        after = found[i + 1].id if i + 1 < len(found) else None
        if before != line.id - 1 or count[before] > 1 or (
            after is not None and (after != line.id + 1 or count[after] > 1)
        ):
            reason = "ids out of order here: an answer may hold another id's line"
        elif line.runs_on:
            reason = "answer runs past its line (a line break not written as a JSON string)"
        else:
            answer, reason = _line_answer(line.text)
            if answer is not None:
                result.answers[line.id] = answer
                continue
        result.failed[line.id] = reason
    for i in range(n_items):
        if count[i] > 1:
            result.failed[i] = "id answered more than once"
        elif i not in count:
            result.failed[i] = "id missing from the reply"
    return result


def _line_answer(text: str) -> tuple[str | None, str]:
    """An id line's answer (a JSON string decoded), or ``None`` and why it is doubtful."""
    if not text:
        return None, "answer is empty"
    if text.startswith('"') and text.endswith('"') and len(text) > 1:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, str):
            return None, "answer is quoted but not one JSON string"
        return value, ""
    if text.count("```") % 2:
        return None, "answer opens a code fence it does not close on its line"
    if _DASH.match(text):
        return None, "answer starts with a dash: a separator or part of the answer"
    return text, ""


def _all_failed(n_items: int, reason: str) -> PackedAnswers:
    return PackedAnswers(failed=dict.fromkeys(range(n_items), reason))


#: "0", "1", ...: the ids of a reply in order, as a well-behaved model writes them.
_IDS = [str(i) for i in range(1000)]


def _match(pairs: list[tuple[str, Any]], n_items: int, item: Callable[[Any], str] | None) -> PackedAnswers:
    result = PackedAnswers()
    if item is None and len(pairs) == n_items <= len(_IDS) and all(
        key == _IDS[i] for i, (key, _) in enumerate(pairs)
    ):  # every id once, in order: only the answers to check
        answers = dict(enumerate(value for _, value in pairs))
        if all(type(value) is str for value in answers.values()):
            result.answers = answers
            return result
    ids = range(n_items)
    seen: dict[int, Any] = {}
    duplicated: set[int] = set()
    for raw_key, value in pairs:
        key = raw_key.strip()
        if not key.lstrip("-").isdigit() or int(key) not in ids:
            result.failed = dict.fromkeys(
                ids, f"reply has an id that was not asked for ({raw_key!r}); numbering is off"
            )
            return result
        i = int(key)
        if i in seen:
            duplicated.add(i)
        seen[i] = value
    for i in ids:
        if i in duplicated:
            result.failed[i] = "id answered more than once"
        elif i not in seen:
            result.failed[i] = "id missing from the reply"
        elif item is not None:
            try:
                result.answers[i] = item(seen[i])
            except ValueError as exc:
                result.failed[i] = str(exc)
                result.invalid.add(i)
        elif seen[i] is None:
            result.failed[i] = "answer is null"
        else:
            result.answers[i] = _as_text(seen[i])
    return result


def read_single(content: str | None, schema: Any = None) -> tuple[str | None, str | None]:
    """A one-row reply's answer, or ``None`` and why it does not validate (``None`` too for
    an empty reply). With a schema (:class:`~llmframe._schema.OutputSchema`), the answer
    is its validated JSON."""
    if schema is None or parse_single(content) is None:
        return parse_single(content), None
    try:
        return schema.from_reply(content), None
    except ValueError as exc:
        return None, str(exc)


def parse_single(content: str | None) -> str | None:
    """A one-row reply is the answer, stripped of surrounding white space; an empty or
    blank reply is no answer (``None``), to be asked again."""
    text = None if content is None else content.strip()
    return text or None


_EDGE = " \t\n\r\f\v.,;:!?…'\"`‘’‚“”„«»‹›*_"


def normalize(answer: str) -> str:
    """An answer reduced to what a reader would compare: Unicode-normalized (NFKC),
    casefolded, whitespace collapsed, surrounding punctuation and quotes stripped.
    Signs and units stay: "-5" is not "5".

    >>> normalize('  "Paris." ') == normalize("paris") == "paris"
    True
    >>> normalize("New   York\\n")
    'new york'
    """
    text = " ".join(unicodedata.normalize("NFKC", answer).casefold().split())
    return text.strip(_EDGE)
