"""The cache folder as its owner handles it: where it is, and what to do with it.

Where the cache lives (:func:`default_cache_dir`, and :func:`resolve_cache_dir`
for the ``cache=`` option), and the tools a user runs on a folder when no run
is going on: :func:`read_cache`, :func:`cache_info`, :func:`compact_cache` and
:func:`clear_cache`. They are public API (``llmframe.read_cache`` and the rest)
and the verbs of ``python -m llmframe cache``, which only calls them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import polars as pl

from ._cache_schema import COLUMNS
from ._cache_segments import compact, count_rows, list_segments, read_segments
from ._errors import ConfigError

__all__ = [
    "cache_info",
    "clear_cache",
    "compact_cache",
    "default_cache_dir",
    "read_cache",
    "resolve_cache_dir",
]


def default_cache_dir() -> Path:
    """The cache folder used when ``cache=True``.

    ``$LLMFRAME_CACHE_DIR`` if set, else the per-user cache folder:
    ``~/.cache/llmframe`` on Linux (``$XDG_CACHE_HOME`` respected),
    ``~/Library/Caches/llmframe`` on macOS and ``%LOCALAPPDATA%\\llmframe\\Cache``
    on Windows.
    """
    configured = os.environ.get("LLMFRAME_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
        return base / "llmframe" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "llmframe"
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says to ignore relative paths.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "llmframe"


def resolve_cache_dir(cache: bool | str | os.PathLike[str] | None) -> Path | None:
    """Turn the user's ``cache=`` option into a folder: ``True`` is :func:`default_cache_dir`,
    a path is that folder, ``False`` (or ``None``) means no cache.

    >>> resolve_cache_dir(False) is None
    True
    """
    if cache is None or cache is False:
        return None
    if cache is True:
        return default_cache_dir()
    if isinstance(cache, (str, os.PathLike)):
        text = os.fspath(cache)
        if not text:
            raise ConfigError("cache= got an empty path; pass a folder, True or False")
        return Path(text).expanduser()
    raise ConfigError(f"cache= must be True, False or a folder path, got {type(cache).__name__}")


def _folder(path: str | os.PathLike[str] | None) -> Path:
    return Path(path).expanduser() if path is not None else default_cache_dir()


def read_cache(path: str | os.PathLike[str] | None = None) -> pl.DataFrame:
    """Every record in the cache folder (default: the one ``cache=True`` uses), every column.

    The columns and types are :data:`~llmframe._cache_schema.SCHEMA`'s even when
    the folder is empty or missing. Corrupt segments are skipped with a warning.
    Example::

        llmframe.read_cache().group_by("model").agg(pl.col("cost_usd").sum())
    """
    folder = _folder(path)
    records, _read, _corrupt = read_segments(folder, list(list_segments(folder)), COLUMNS)
    return records


def cache_info(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A summary of a cache folder (default: the one ``cache=True`` uses); the CLI's ``cache info``.

    Keys: ``folder``, ``segments``, ``records``, ``keys`` (distinct), ``ok``,
    ``error``, ``bytes`` (segments on disk), ``models`` (sorted) and ``corrupt``
    (segments skipped as unreadable). Example::

        llmframe.cache_info("answers-cache")["records"]   # 90211
    """
    folder = _folder(path)
    sizes = list_segments(folder)
    records, _read, corrupt = read_segments(folder, list(sizes), ("key", "status", "model"))
    return {
        "folder": str(folder),
        "segments": len(sizes),
        "records": records.height,
        "keys": records.get_column("key").n_unique(),
        "ok": int((records.get_column("status") == "ok").sum()),
        "error": int((records.get_column("status") == "error").sum()),
        "bytes": sum(sizes.values()),
        "models": sorted(records.get_column("model").unique().to_list()),
        "corrupt": corrupt,
    }


def clear_cache(path: str | os.PathLike[str] | None = None) -> int:
    """Delete every segment in the folder (default: the one ``cache=True`` uses) and
    return how many; the CLI's ``cache clear``.

    Only files named like segments (``seg-<time_ns>-<pid>-<uuid8>.parquet``) are
    removed; anything else in the folder is left alone. Example::

        llmframe.clear_cache("answers-cache")   # 412
    """
    folder = _folder(path)
    removed = 0
    for name in list_segments(folder):
        try:
            os.remove(folder / name)
        except FileNotFoundError:
            continue
        removed += 1
    return removed


def compact_cache(path: str | os.PathLike[str] | None = None) -> dict[str, int]:
    """Merge every segment of the folder (default: the one ``cache=True`` uses) into one,
    atomically, and report the counts before and after; the CLI's ``cache compact``.

    Keeps the newest ok record per key, and for keys without any ok record the
    newest error; errors that an ok record supersedes are dropped. Safe while
    other processes read, write or compact the same folder. Example::

        llmframe.compact_cache("answers-cache")
        # {"segments_before": 412, "records_before": 90211, "bytes_before": ...,
        #  "segments_after": 1, "records_after": 88000, "bytes_after": ...}
    """
    folder = _folder(path)
    before = list_segments(folder)
    records_before = compact(folder, list(before)).records_read
    after = list_segments(folder)
    return {
        "segments_before": len(before),
        "records_before": records_before,
        "bytes_before": sum(before.values()),
        "segments_after": len(after),
        "records_after": count_rows(folder, after),
        "bytes_after": sum(after.values()),
    }
