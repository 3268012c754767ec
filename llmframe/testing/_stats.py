"""Live counters of the fake server, readable from any thread.

The server's event loop thread writes them under a lock; tests and benchmarks
read single attributes directly (each read is atomic) or take a consistent
:meth:`ServerStats.snapshot`. ``log`` keeps one :class:`RequestRecord` per chat
request, with ``time.monotonic()`` times, from which a benchmark computes the
request and token rates it actually achieved.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

__all__ = ["RequestRecord", "ServerStats"]

#: Status logged for a request whose client went away, or that stop() cancelled (as nginx logs it).
CLIENT_CLOSED = 499


class RequestRecord(NamedTuple):
    """One chat request as the server saw it.

    ``status`` is the HTTP status sent (499: the client hung up or the server
    stopped first). ``prompt_tokens`` is known for every request that got past
    parsing, 429s included; ``completion_tokens`` and ``n_items`` (rows carried)
    only for answers. For achieved rates, keep the records with status 200.
    """

    t_start: float
    t_end: float
    status: int
    prompt_tokens: int
    completion_tokens: int
    n_items: int


_COUNTERS = (
    "requests",
    "ok",
    "rate_limited",
    "server_errors",
    "hangs",
    "garbage",
    "bad_requests",
    "unauthorized",
    "prompt_tokens",
    "completion_tokens",
    "items",
    "degraded",
    "files_uploaded",
    "batches_created",
)


class ServerStats:
    """Counters of chat requests since the server started (or since ``reset_stats()``).

    ``requests`` counts every chat request; ``ok`` the 200s with a real answer;
    ``rate_limited`` the 429s; ``server_errors`` the injected 5xx; ``hangs``,
    ``garbage`` and ``packing_faults`` (kind -> count) the other injected faults;
    ``bad_requests`` the 400s; ``unauthorized`` the 401s. ``prompt_tokens``,
    ``completion_tokens`` and ``items`` (rows carried) sum over the 200 answers.
    ``degraded`` counts the packed items that the degrading model (the server's
    ``degrade=``) answered wrong on purpose, shifted answers included.
    ``in_flight`` is the number of chat requests being handled now and
    ``max_in_flight`` its peak.

    The Batch API counts ``files_uploaded`` and ``batches_created``, and logs in
    ``batch_lines`` one ``(batch_id, custom_id)`` per line of every batch created,
    in the order of its input file (its answers are not counted above, nor in ``log``).
    """

    __slots__ = (
        *_COUNTERS,
        "_lock",
        "batch_lines",
        "in_flight",
        "log",
        "max_in_flight",
        "packing_faults",
    )

    requests: int
    ok: int
    rate_limited: int
    server_errors: int
    hangs: int
    garbage: int
    bad_requests: int
    unauthorized: int
    prompt_tokens: int
    completion_tokens: int
    items: int
    degraded: int
    files_uploaded: int
    batches_created: int
    in_flight: int
    max_in_flight: int
    packing_faults: dict[str, int]
    log: list[RequestRecord]
    batch_lines: list[tuple[str, str]]

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self._clear()

    def _clear(self) -> None:
        for name in _COUNTERS:
            setattr(self, name, 0)
        self.max_in_flight = self.in_flight
        self.packing_faults = {}
        self.log = []
        self.batch_lines = []

    def reset(self) -> None:
        """Zero every counter; ``in_flight`` stays, as it describes the present."""
        with self._lock:
            self._clear()

    def snapshot(self) -> dict[str, Any]:
        """All counters at one instant, as a plain dict (``log`` and ``packing_faults`` copied)."""
        with self._lock:
            data: dict[str, Any] = {name: getattr(self, name) for name in _COUNTERS}
            data["in_flight"] = self.in_flight
            data["max_in_flight"] = self.max_in_flight
            data["packing_faults"] = dict(self.packing_faults)
            data["log"] = list(self.log)
            data["batch_lines"] = list(self.batch_lines)
        return data

    def __repr__(self) -> str:
        with self._lock:
            shown = ", ".join(f"{name}={getattr(self, name)}" for name in _COUNTERS[:8])
        return f"ServerStats({shown}, in_flight={self.in_flight})"

    # Written by the server only.

    def _begin(self) -> None:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            if self.in_flight > self.max_in_flight:
                self.max_in_flight = self.in_flight

    def _end(self, record: RequestRecord, counter: str | None) -> None:
        with self._lock:
            self.in_flight -= 1
            self.log.append(record)
            if counter is not None:
                setattr(self, counter, getattr(self, counter) + 1)
            if counter == "ok":
                self.prompt_tokens += record.prompt_tokens
                self.completion_tokens += record.completion_tokens
                self.items += record.n_items

    def _add(self, counter: str, amount: int) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + amount)

    def _batch(self, batch_id: str, custom_ids: list[str]) -> None:
        with self._lock:
            self.batches_created += 1
            self.batch_lines.extend((batch_id, custom_id) for custom_id in custom_ids)

    def _count(self, counter: str | None = None, kinds: list[str] | None = None) -> None:
        with self._lock:
            if counter is not None:
                setattr(self, counter, getattr(self, counter) + 1)
            for kind in kinds or ():
                self.packing_faults[kind] = self.packing_faults.get(kind, 0) + 1
