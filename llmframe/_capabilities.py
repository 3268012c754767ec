"""What an endpoint accepts, learned from its rejections by meaning, not by status code.

Servers refuse what they do not support in different ways: OpenAI answers 400
with ``param`` set, vLLM 400 or 422, llama-cpp-python's server **500** with a
pydantic message (``Input should be 'text' or 'json_object'``). A status code
alone cannot tell "unsupported" from "try again", so :func:`rejection` reads
the message: an error that names a parameter the request carried, in words
that say it is not accepted, is a rejection. It is never retried; the run
changes what it sends instead:

- ``response_format`` steps down ``json_schema`` → ``json_object`` → ``text``
  (tolerant parsing), once for the whole run, resends included;
- ``max_tokens`` / ``max_completion_tokens`` is renamed to the other;
- a best-effort parameter (``seed``, ``user``, ...) is dropped, with a warning;
- any other parameter the user set stops the run with one clear error: it
  would fail every row, and dropping it silently would change the answers.

What was learned is kept per (base_url, model) by :class:`EndpointMemory`, in
this process and in the cache folder, so the next run sends the working
request first time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "ENDPOINTS_FILE",
    "FORMATS",
    "MEMORY",
    "EndpointMemory",
    "Rejection",
    "atomic_write_json",
    "is_context_overflow",
    "next_format",
    "read_json",
    "rejection",
]

#: Structured-output modes, best first.
FORMATS = ("json_schema", "json_object", "text")
#: Parameters that change nothing a user relies on: dropped when an endpoint rejects them.
DROPPABLE = frozenset({"seed", "user", "store", "metadata", "service_tier", "parallel_tool_calls"})
_TOKEN_KEYS = {"max_tokens": "max_completion_tokens", "max_completion_tokens": "max_tokens"}
#: Statuses a rejection can come with (llama-cpp-python's server uses 500).
_REJECTING = frozenset({400, 404, 422, 500, 501})
#: Words that say "not accepted" rather than "bad value" or "try again".
_UNSUPPORTED = re.compile(
    r"unsupported|not supported|does not support|doesn't support|unrecognized|"
    r"unknown (?:field|param|argument|key)|not permitted|not allowed|extra (?:inputs|fields)|"
    r"input should be|invalid (?:parameter|value)|is not one of|must be one of|"
    r"unexpected keyword|use '?max_(?:completion_)?tokens'? instead",
    re.IGNORECASE,
)
_FORMAT_WORDS = re.compile(
    r"response_format|json[ _-]?schema|json_object|\bstrict\b|grammar|guided", re.IGNORECASE
)
_CONTEXT = re.compile(
    r"context (?:length|window|size)|maximum context|exceeds? (?:the )?(?:model'?s? )?context|"
    r"too many tokens|prompt is too long",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Rejection:
    """What a rejected request tells the run to change."""

    param: str  # "response_format" or the rejected parameter's name
    action: Literal["step_down", "rename", "drop", "too_large", "stop"]
    rename_to: str | None = None


def _names(text: str, name: str) -> bool:
    """Whether ``text`` names the parameter: quoted ('seed', "n", `stop`) always; bare
    only for names long enough not to be an ordinary word (``temperature``)."""
    quoted = rf"['\"`]{re.escape(name)}['\"`]"
    bare = rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])"
    return re.search(quoted if len(name) < 6 else f"{quoted}|{bare}", text) is not None


def rejection(
    status: int | None,
    message: str,
    param: str | None,
    sent: Mapping[str, Any],
    *,
    response_format: str | None,
) -> Rejection | None:
    """The rejection an error answer means, or ``None`` when it is no rejection.

    ``sent`` holds the generation parameters the request carried (not the
    messages or model); ``response_format`` the structured-output mode it used
    (``None`` or ``"text"``: none).
    """
    if status not in _REJECTING:
        return None
    named = param if param and (param in sent or param == "response_format") else None
    says_unsupported = _UNSUPPORTED.search(message) is not None
    if response_format not in (None, "text") and (
        named == "response_format"
        or (named is None and _FORMAT_WORDS.search(message) and (says_unsupported or status != 500))
    ):
        return Rejection("response_format", "step_down")
    if named is None:
        # No "param" field: take a parameter the message names, in words of rejection.
        if not says_unsupported:
            return None
        named = next((k for k in sent if _names(message, k)), None)
        if named is None:
            return None
    elif named == "response_format":
        return None  # names a format the request did not use: not ours to change
    if named in _TOKEN_KEYS:
        if says_unsupported and not _CONTEXT.search(message):
            return Rejection(named, "rename", _TOKEN_KEYS[named])
        # "max_tokens is too large": a packed request asks for n answers' worth.
        return Rejection(named, "too_large")
    if named in DROPPABLE:
        return Rejection(named, "drop")
    if status == 500 and not says_unsupported:
        return None  # a crash that happens to quote a parameter: retried as a 5xx
    return Rejection(named, "stop")


def is_context_overflow(status: int | None, message: str) -> bool:
    """A request larger than the model's context window, in any server's words."""
    return status in _REJECTING and _CONTEXT.search(message) is not None


def next_format(mode: str) -> str:
    """The structured-output mode to try after ``mode`` was rejected."""
    i = FORMATS.index(mode) if mode in FORMATS else len(FORMATS) - 1
    return FORMATS[min(i + 1, len(FORMATS) - 1)]


# --------------------------------------------------------------------------- memory


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def atomic_write_json(path: Path, data: Any, *, sort_keys: bool = True) -> None:
    """Write ``data`` as JSON so a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=sort_keys)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


#: The file, in the cache folder, that holds what endpoints taught.
ENDPOINTS_FILE = "endpoints.json"
#: Packing verdicts kept per endpoint, the newest: one per task (template, system prompt,
#: options), so a script that makes a new template per call would grow the file forever.
MAX_VERDICTS = 256


def _merge(entry: dict[str, Any], values: dict[str, Any]) -> None:
    """``values`` into ``entry``, dict values one level deep, the newest key of each last;
    past :data:`MAX_VERDICTS`, the oldest verdicts go."""
    for name, value in values.items():
        held = entry.get(name)
        if isinstance(value, dict) and isinstance(held, dict):
            for key, item in value.items():
                held.pop(key, None)
                held[key] = item
        else:
            entry[name] = dict(value) if isinstance(value, dict) else value
    verdicts = entry.get("verdicts")
    if isinstance(verdicts, dict):
        for key in list(verdicts)[: max(0, len(verdicts) - MAX_VERDICTS)]:
            del verdicts[key]


class EndpointMemory:
    """What each (base_url, model) accepts, and packing verdicts per task.

    Shared by every run in the process (thread-safe) and mirrored to
    ``endpoints.json`` in the cache folder when there is one, so a new
    process or kernel does not pay a rejected request to learn it again.
    Nothing secret is stored: endpoints are named by URL and model only.
    """

    __slots__ = ("_entries", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}

    @staticmethod
    def key(base_url: str, model: str) -> str:
        """``base_url model``, the URL without credentials or query (a key can hide there)."""
        parts = urlsplit(base_url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        url = urlunsplit((parts.scheme, netloc, parts.path, "", "")) if parts.scheme else base_url
        return f"{url.rstrip('/')} {model}"

    def get(self, endpoint: str, cache_dir: Path | None = None) -> dict[str, Any]:
        """A copy of what is known of ``endpoint`` (the process first, then the folder)."""
        with self._lock:
            entry = self._entries.get(endpoint)
            if entry is None and cache_dir is not None:
                stored = read_json(cache_dir / ENDPOINTS_FILE).get(endpoint)
                if isinstance(stored, dict):
                    entry = self._entries[endpoint] = stored
            return json.loads(json.dumps(entry)) if entry else {}

    def update(self, endpoint: str, cache_dir: Path | None = None, **values: Any) -> None:
        """Merge ``values`` into what is known of ``endpoint``; dict values merge one level deep.

        The file gets ``values`` merged into what it holds now, not this process's whole
        entry: another process's verdicts for other tasks, stored since this one read the
        file, stay. Its keys keep their order (the newest verdict last, for the cap)."""
        with self._lock:
            _merge(self._entries.setdefault(endpoint, {}), values)
            if cache_dir is None:
                return
            path = cache_dir / ENDPOINTS_FILE
            on_disk = read_json(path)
            stored = on_disk.get(endpoint)
            on_disk[endpoint] = stored = stored if isinstance(stored, dict) else {}
            _merge(stored, json.loads(json.dumps(values)))
            with contextlib.suppress(OSError):  # an optimization: a run never depends on it
                atomic_write_json(path, on_disk, sort_keys=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


#: The process-wide memory.
MEMORY = EndpointMemory()
