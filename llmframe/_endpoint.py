"""The endpoint of a call: who it is, and what one run has learned it accepts.

:class:`Endpoint` is worked out once from the options (``client=``, else
``base_url=``, else ``OPENAI_BASE_URL``, else OpenAI; the key likewise), and the
run and :func:`llmframe.estimate` both use it, so they share one limiter even
for a keyless local server or a client passed in.

:class:`EndpointState` is one run's view: the parameters and the
structured-output mode it sends now, the changes a rejection forced
(:func:`~llmframe._capabilities.rejection`), and the gate that sends the first
request alone, so that a rejection costs one request and not one per worker.
What it learns goes to :data:`~llmframe._capabilities.MEMORY`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._capabilities import MEMORY, EndpointMemory, Rejection, next_format, rejection
from ._client import UNREACHABLE, CallError, credentials
from ._errors import ConfigError
from ._jobs import Batch
from ._limiter import RateLimiter
from ._requests import Request
from ._shared_limiter import shared_limiter

__all__ = ["DEFAULT_BASE_URL", "UNREACHABLE_SECONDS", "Endpoint", "EndpointState"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"

#: Seconds an endpoint that had answered in this run may refuse connections, with no
#: reply in between, before the run stops: a restart passes within a few retries, a dead
#: server does not. Counted in time, not attempts: with 32 requests in flight, one blip
#: refuses 32 attempts at once. Before any reply, the first such attempt stops the run.
UNREACHABLE_SECONDS = 10.0

@dataclass(frozen=True)
class Endpoint:
    """(base_url, model) and a hash of the key: never the key itself."""

    base_url: str
    model: str
    key_hash: str = field(default="", repr=False)

    @classmethod
    def of(cls, *, model: str, base_url: str | None = None, api_key: str | None = None,
           client: Any = None) -> Endpoint:  # fmt: skip
        if client is not None:
            url, key = str(client.base_url), getattr(client, "api_key", None)
        else:  # as ChatClient resolves them, so the run and this agree
            given_url, key = credentials(base_url, api_key)
            url = given_url or DEFAULT_BASE_URL
        digest = hashlib.sha256((key or "").encode()).hexdigest()[:16]
        return cls(url.rstrip("/"), model, digest)

    @property
    def memory_key(self) -> str:
        return EndpointMemory.key(self.base_url, self.model)

    def limiter(
        self, rpm: float | None = None, tpm: float | None = None, kind: str | None = None
    ) -> RateLimiter:
        """The shared limiter of this endpoint (key and model included): the process's, or
        with ``kind="machine"`` the machine's (the ``limiter=`` option; None: the process's)."""
        try:
            return shared_limiter(self.base_url, self.key_hash, self.model, rpm=rpm, tpm=tpm,
                                  kind=kind or "process")  # fmt: skip
        except OSError as exc:  # the machine limiter's state folder
            raise ConfigError(f"cannot use limiter={kind!r}: {exc}") from exc


class EndpointState:
    """What one run sends, changed by what the endpoint rejects."""

    __slots__ = (
        "down_since",
        "endpoint_confirmed",
        "fatal",
        "format_confirmed",
        "known",
        "learns",
        "memory_dir",
        "memory_key",
        "notes",
        "params",
        "probe_in_flight",
        "renamed",
        "replies",
        "response_format",
        "structured",
        "user_format",
    )

    def __init__(
        self,
        memory_key: str,
        memory_dir: Path | None,
        params: dict[str, Any],
        user_format: str,
        *,
        learns: bool = True,
        structured: bool = False,
    ) -> None:
        known = MEMORY.get(memory_key, memory_dir)
        self.structured = structured  # every request, one row too, carries the format
        self.memory_key = memory_key
        self.memory_dir = memory_dir
        self.learns = learns  # False for estimates: what they assume is not what an endpoint said
        self.params = dict(params)
        for old, new in (known.get("renames") or {}).items():
            if old in self.params:
                self.params[new] = self.params.pop(old)
        for name in known.get("drops") or {}:
            self.params.pop(name, None)
        self.user_format = user_format
        if user_format == "auto":
            self.response_format = known.get("response_format") or "json_schema"
            self.format_confirmed = "response_format" in known
        else:
            self.response_format = user_format
            self.format_confirmed = False
        # Until the endpoint has answered a request with these parameter names once, and
        # until a packed reply came back in the current format, one request goes alone.
        self.endpoint_confirmed = bool((known.get("answered") or {}).get(self.signature))
        self.probe_in_flight = False
        self.fatal: CallError | None = None
        self.replies = 0  # replies in this run
        self.down_since: float | None = None  # when connections began to be refused
        self.notes: list[str] = []  # what was rejected and what changed, for the report
        self.renamed: set[str] = set()  # parameter names renamed away from in this run
        self.known = known  # as the run started: packing verdicts are read from it

    @property
    def signature(self) -> str:
        """The parameter names requests carry: what a new endpoint may reject."""
        return ",".join(sorted(self.params))

    # ---- the gate ---------------------------------------------------------------------
    def gate(self, batch: Batch) -> Batch:
        """Mark ``batch`` to go alone if it is a probe (see the module docstring)."""
        if not self.endpoint_confirmed or ((batch.packed or self.structured) and not self.format_confirmed):
            batch.probe = self.probe_in_flight = True
        return batch

    def probe_done(self, batch: Batch) -> None:
        if batch.probe:
            self.probe_in_flight = False
            if not batch.rejected and self.fatal is None:
                # Answered, or failed for another reason than a rejection: what the
                # endpoint said is about the rows, so the others may go.
                self.endpoint_confirmed = True

    def confirm(self, request: Request) -> None:
        """A reply came back for ``request``."""
        if not self.endpoint_confirmed:
            self.endpoint_confirmed = True
            self.learned(answered={self.signature: True})
        mode = request.mode
        if (request.packed or self.structured) and mode == self.response_format and not self.format_confirmed:
            self.format_confirmed = True
            # A structured run's step-down may be about its schema (a construct the endpoint
            # refuses), not the endpoint: only a text run's lesson, or json_schema working, is kept.
            if self.user_format == "auto" and (not self.structured or mode == "json_schema"):
                self.learned(response_format=mode)

    def learned(self, **values: Any) -> None:
        if self.learns:
            MEMORY.update(self.memory_key, self.memory_dir, **values)

    # ---- rejections -------------------------------------------------------------------
    def rejection_of(self, err: CallError, request: Request) -> Rejection | None:
        if err.fatal or err.kind in ("rate_limit", "timeout", "connection", "budget"):
            return None
        mode = request.mode if request.response_format is not None else None
        return rejection(err.status, err.message, err.param, request.params, response_format=mode)

    def adapt(self, rejected: Rejection, err: CallError, request: Request) -> bool:
        """Change what every later request sends; True when the request should go again.

        Requests in flight with the old settings come back rejected too: they find
        the change made already and are simply sent again.
        """
        name = rejected.param
        status = f"HTTP {err.status}" if err.status else "an error"
        if rejected.action == "step_down":
            if self.user_format != "auto":
                self.stop(err, f"the endpoint rejects response_format={request.mode!r} ({err.message}); "
                               "use response_format='auto' to let llmframe find one it accepts")  # fmt: skip
                return False
            if self.response_format == request.mode:
                self.response_format = next_format(request.mode)
                self.format_confirmed = False
                self.notes.append(
                    f"response_format {request.mode!r} rejected ({status}); using {self.response_format!r}"
                )
            return True
        if rejected.action == "rename":
            target = rejected.rename_to or ""
            if target in self.renamed:  # it rejected that name too: neither works
                self.stop(err, f"the endpoint rejects both params[{target!r}] and params[{name!r}] "
                               f"({err.message}); remove it from params=")  # fmt: skip
                return False
            if name in self.params:
                self.renamed.add(name)
                self.params[target] = self.params.pop(name)
                self.notes.append(f"{name!r} rejected ({status}); sent as {target!r}")
                self.learned(renames={name: target})
            return True
        if rejected.action == "drop":
            if name in self.params:
                del self.params[name]
                self.notes.append(f"params[{name!r}] rejected ({status}); dropped for this endpoint")
                from ._warn import warn_user

                warn_user(f"llmframe: the endpoint rejects params[{name!r}]; sending without it")
                self.learned(drops={name: True})
            return True
        if rejected.action == "stop":
            self.stop(err, f"the endpoint rejects params[{name!r}] ({err.message}); remove it from "
                           "params= or change its value. Rows answered so far are cached")  # fmt: skip
        return False

    # ---- reachability -----------------------------------------------------------------
    def attempted(self, err: CallError | None, now: float | None = None) -> None:
        """Told of every attempt's outcome (``None``: a reply), at ``now`` (monotonic). Stops
        the run on an endpoint that cannot be connected to: at once before any reply came,
        else once it has refused for :data:`UNREACHABLE_SECONDS` with no reply between."""
        now = time.monotonic() if now is None else now
        if err is None:
            self.replies += 1
            self.down_since = None
            return
        if err.code != UNREACHABLE:
            return
        if self.down_since is None:
            self.down_since = now
        down = now - self.down_since
        if not self.replies or down >= UNREACHABLE_SECONDS:
            tail = f" (for {down:.0f} s, after it had answered)" if self.replies else ""
            self.stop(err, f"{err.message}{tail}. Rows answered so far are cached")

    def stop(self, err: CallError, message: str) -> None:
        """Stop the run: a failure that every later request would meet too."""
        if self.fatal is None:
            self.fatal = CallError("endpoint", message, False, err.status, err.code, fatal=True)
