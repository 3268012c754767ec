"""Temporary files in a cache folder: how they are named, and removing what a writer
that died mid-write left.

Every segment and log is written under a temporary name first (``.tmp-<name>.part``
for a segment, ``.tmp-<name>`` for a log while it is locked) and renamed into place
when whole, so a reader sees a whole file or none. pyarrow's dataset discovery skips
names starting with ``.``, and no ``*.parquet`` glob (polars, DuckDB) matches
``.part``. A writer killed between the two (``kill -9``) leaves its temporary file;
:func:`remove_stale_temporaries` gives that disk space back when a cache opens.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

__all__ = ["STALE_TEMPORARY_SECONDS", "TEMPORARY_NAME", "TEMP_PREFIX", "TEMP_SUFFIX", "remove_stale_temporaries"]

TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".part"  # of a segment being written

#: The temporaries the cache's writers make, and nothing else (a folder given as ``cache=``
#: may hold other tools' files): a segment's (``_cache_segments.new_segment``: parquet, or an
#: embedding segment's arrow) and a log's (``_cache_log.AnswerLog.create``).
TEMPORARY_NAME = re.compile(
    re.escape(TEMP_PREFIX)
    + rf"(?:seg-\d+-\d+-[0-9a-f]{{8}}\.(?:parquet|arrow){re.escape(TEMP_SUFFIX)}|\.log-\d+-[0-9a-f]{{8}}-[A-Za-z0-9._-]*\.arrows)"
)

#: A temporary file untouched this long was left by a writer that died: a live one
#: finishes in seconds, and its mtime moves with every page it writes. Hours, not
#: minutes: a writer suspended mid-write (a laptop asleep) that then resumes fails only
#: its rename, and its answers are still in its log.
STALE_TEMPORARY_SECONDS = 6 * 3600


def remove_stale_temporaries(folder: Path, *, older_than: float = STALE_TEMPORARY_SECONDS,
                             now: float | None = None) -> int:  # fmt: skip
    """Delete the cache's temporary files (:data:`TEMPORARY_NAME`) in ``folder`` not modified
    for ``older_than`` seconds; return how many. Every reader ignores them, so this only
    frees their space; a file that is gone, or cannot be removed (a read-only folder), is
    passed by."""
    limit = (time.time() if now is None else now) - older_than
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not TEMPORARY_NAME.fullmatch(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < limit:
                os.remove(entry.path)
                removed += 1
        except OSError:
            continue
    return removed
