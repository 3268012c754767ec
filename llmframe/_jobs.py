"""The units of work of a run: a job per distinct prompt, a batch per request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Batch", "BatchKind", "Job"]


@dataclass(slots=True)
class Job:
    """One distinct prompt: the rows that share a key get one answer.

    Slotted: a run holds one per row to send until the end (448 -> 400 bytes a job with its
    one-field ``values`` dict and ``rows`` list, its key and value strings aside).

    A job with no ``rows`` is a copy sent only to check packing (a canary or a
    packing-check row): its answer is compared, never written out or cached.
    """

    key: str
    values: dict[str, str]
    rows: list[int]
    item_tokens: int = -1
    resends: int = 0
    done: bool = False
    max_batch: int = 0  # when resent: the largest batch it may go in next (0: any)
    no_canaries: bool = False  # its request was too large with canaries added
    reference: bool = False  # answered alone to check packing (a packing-check row)
    invalid_alone: int = 0  # one-row answers that did not validate against the schema
    item: str = ""  # its packed item's text after the id (``_packing.item_rest``), made with item_tokens


    def copy(self) -> Job:
        """A row-less copy, to send again as a check without touching the output."""
        return Job(self.key, self.values, [], self.item_tokens, item=self.item)


#: What a batch is for: ``rows`` answers rows; ``reference`` is one row answered alone
#: to check packing against; ``trial`` packs reference rows to compare; ``ahead`` packs
#: new rows before the check's verdict, their answers held until it (:mod:`._check`).
BatchKind = Literal["rows", "reference", "trial", "ahead"]


@dataclass
class Batch:
    jobs: list[Job]
    kind: BatchKind = "rows"
    canaries: list[Job] = field(default_factory=list)  # row-less copies with known answers
    probe: bool = False  # sent alone: the endpoint's first request, or a format's
    rejected: bool = False  # the endpoint rejected what it carried; it goes again, changed
    recorded: bool = False  # a trial whose outcome the packing check has been told
    size: int = 0  # ``ahead``: the rows per request it was packed at (kept if the verdict allows that many)

    @property
    def packed(self) -> bool:
        return len(self.jobs) + len(self.canaries) > 1
