"""The cache folder as its owner handles it: where it is, and what to do with it.

Where the cache lives (:func:`default_cache_dir`, and :func:`resolve_cache_dir`
for the ``cache=`` option), and the tools a user runs on a folder when no run
is going on: :func:`read_cache`, :func:`cache_info`, :func:`compact_cache` and
:func:`clear_cache`. They are public API (``llmframe.read_cache`` and the rest)
and the verbs of ``python -m llmframe cache``, which only calls them. They see
the answer logs as well as the segments: the records of a running process, or
of one that was killed before it could fold its log; and the embeddings of
``_embeddings/`` beside the answers (``_embed_admin``, keys ``embedding_*``).
Each takes a folder or an fsspec URL (``s3://bucket/llm-cache/``, see
:mod:`._cache_fs`) with its ``cache_options=``; for a URL they see the remote
segments and this machine's logs for it (:func:`cache_location`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from ._cache_fs import CacheLocation, is_url, local_folder, open_remote, redact
from ._cache_log import fold_orphans, list_logs, log_is_live, read_logs, remove_orphans
from ._cache_schema import COLUMNS
from ._cache_segments import compact, count_rows
from ._cache_temps import remove_stale_temporaries
from ._dask_report import clear_runs, runs_info
from ._embed_admin import clear_embeddings, compact_embeddings, embeddings_info
from ._errors import ConfigError

__all__ = [
    "cache_info",
    "cache_location",
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


def resolve_cache_dir(cache: bool | str | os.PathLike[str] | None, *, needs_local: str | None = None) -> Path | None:
    """Turn the user's ``cache=`` option into a folder: ``True`` is :func:`default_cache_dir`,
    a path is that folder, ``False`` (or ``None``) means no cache. For an fsspec URL, this
    machine's folder for it (logs, claims, what endpoints taught; :mod:`._cache_fs`),
    unless ``needs_local`` names what cannot use a URL (``needs_local="embed"``): a ConfigError.

    >>> resolve_cache_dir(False) is None
    True
    """
    if cache is None or cache is False:
        return None
    if cache is True:
        return default_cache_dir()
    if is_url(cache):
        if needs_local is not None:
            raise ConfigError(f"{needs_local} cannot keep its cache at a URL yet (cache={redact(str(cache))!r}); "
                              "pass a local folder (or an NFS mount) as cache=")  # fmt: skip
        return local_folder(str(cache), default_cache_dir())
    if isinstance(cache, (str, os.PathLike)):
        text = os.fspath(cache)
        if not text:
            raise ConfigError("cache= got an empty path; pass a folder, True or False")
        return Path(text).expanduser()
    raise ConfigError(f"cache= must be True, False, a folder path or a URL, got {type(cache).__name__}")


def cache_location(
    cache: bool | str | os.PathLike[str] | None, options: Mapping[str, Any] | None = None
) -> CacheLocation | None:
    """Where the cache ``cache=`` names keeps what: a folder keeps everything; an fsspec URL
    (opened with ``options``, its storage options) keeps the segments, and this machine's
    folder for it the logs and claims. ``None`` for no cache."""
    if is_url(cache):
        return open_remote(str(cache), options, default_cache_dir())
    folder = resolve_cache_dir(cache)
    return CacheLocation.folder(folder) if folder is not None else None


def _location(path: str | os.PathLike[str] | None, options: Mapping[str, Any] | None) -> CacheLocation:
    location = cache_location(True if path is None else path, options)
    assert location is not None
    return location


def _logged(folder: Path, columns: tuple[str, ...]) -> pl.DataFrame:
    frame = pl.from_arrow(read_logs(folder).select(list(columns)))
    assert isinstance(frame, pl.DataFrame)
    return frame


def read_cache(
    path: str | os.PathLike[str] | None = None, *, cache_options: Mapping[str, Any] | None = None
) -> pl.DataFrame:
    """Every record in the cache folder (default: the one ``cache=True`` uses), every column:
    the segments', then those of the answer logs not folded into a segment yet.

    The columns and types are :data:`~llmframe._cache_schema.SCHEMA`'s even when
    the folder is empty or missing. Corrupt segments are skipped with a warning.
    A record being folded from a log into a segment at that moment may be there
    twice. Example::

        llmframe.read_cache().group_by("model").agg(pl.col("cost_usd").sum())
    """
    where = _location(path, cache_options)
    logged = _logged(where.logs, COLUMNS)  # before the segments: a log folded meanwhile is in one
    records, _read, _corrupt = where.segments.read(list(where.segments.sizes()), COLUMNS)
    return pl.concat([records, logged], how="vertical")


def cache_info(
    path: str | os.PathLike[str] | None = None, *, cache_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A summary of a cache folder (default: the one ``cache=True`` uses); the CLI's ``cache info``.

    Keys: ``folder``, ``segments``, ``records``, ``keys`` (distinct), ``ok``,
    ``error``, ``bytes`` (segments on disk), ``models`` (sorted), ``corrupt``
    (segments skipped as unreadable), ``logs`` (answer logs: of running processes,
    and ``orphaned_logs`` of dead ones, folded by the next run or compaction) and
    ``log_bytes``. Records count those in logs. The embeddings are the ``embedding_*``
    keys: ``embedding_segments``, ``embedding_records``, ``embedding_keys``,
    ``embedding_dims``, ``embedding_models``, ``embedding_bytes``, ``embedding_logs``,
    ``embedding_orphaned_logs`` and ``embedding_log_bytes``. ``dask_runs`` and
    ``dask_run_bytes``: the report folders of Dask runs in ``_runs/``. Example::

        llmframe.cache_info("answers-cache")["records"]   # 90211
    """
    where = _location(path, cache_options)
    logs = list_logs(where.logs)
    columns = ("key", "status", "model")
    logged = _logged(where.logs, columns)
    sizes = where.segments.sizes()
    records, _read, corrupt = where.segments.read(list(sizes), columns)
    records = pl.concat([records, logged], how="vertical")
    return {
        "folder": where.name,
        "segments": len(sizes),
        "records": records.height,
        "keys": records.get_column("key").n_unique(),
        "ok": int((records.get_column("status") == "ok").sum()),
        "error": int((records.get_column("status") == "error").sum()),
        "bytes": sum(sizes.values()),
        "models": sorted(records.get_column("model").unique().to_list()),
        "corrupt": corrupt,
        "logs": len(logs),
        "orphaned_logs": sum(not log_is_live(where.logs / name) for name in logs),
        "log_bytes": sum(logs.values()),
        **embeddings_info(where.local),
        **runs_info(where.local),
    }


def clear_cache(path: str | os.PathLike[str] | None = None, *, cache_options: Mapping[str, Any] | None = None) -> int:
    """Delete every segment in the folder (default: the one ``cache=True`` uses), and the
    answer logs and temporary files dead processes left, and return how many files; the
    CLI's ``cache clear``.

    Only files named like segments (``seg-<time_ns>-<pid>-<uuid8>.parquet``, and the
    embeddings' ``_embeddings/seg-*.arrow``), logs (``.log-<pid>-<uuid8>-<host>.arrows``)
    and Dask runs' reports (``_runs/<run>/part-*.json``) are removed; anything else in the folder
    is left alone, and so are the logs of running processes, which write their
    answers to segments as they go. Example::

        llmframe.clear_cache("answers-cache")   # 412
    """
    where = _location(path, cache_options)
    removed = remove_orphans(where.logs) + remove_stale_temporaries(where.logs)
    removed += clear_embeddings(where.local) + clear_runs(where.local)
    for name in where.segments.sizes():
        where.segments.remove(name)
        removed += 1
    return removed


def compact_cache(
    path: str | os.PathLike[str] | None = None, *, cache_options: Mapping[str, Any] | None = None
) -> dict[str, int]:
    """Fold the logs dead processes left, then merge every segment of the folder (default:
    the one ``cache=True`` uses) into one, atomically, and report the counts before and
    after; the CLI's ``cache compact``.

    Keeps the newest ok record per key, and for keys without any ok record the
    newest error; errors that an ok record supersedes are dropped. Safe while
    other processes read, write or compact the same folder; their live logs are
    left to them. The embeddings are compacted too, one segment per vector length and
    one vector per key (the ``embedding_*`` keys). Example::

        llmframe.compact_cache("answers-cache")
        # {"segments_before": 412, "records_before": 90211, "bytes_before": ...,
        #  "segments_after": 1, "records_after": 88000, "bytes_after": ..., "logs_folded": 0,
        #  "embedding_segments_before": 97, ..., "embedding_segments_after": 1, ...}
    """
    where = _location(path, cache_options)
    before = where.segments.sizes()
    logs_before = len(list_logs(where.logs))
    fold_orphans(where.logs, kind=where.log_format)
    logs_folded = logs_before - len(list_logs(where.logs))
    records_before = compact(where.segments, list(where.segments.sizes())).records_read
    after = where.segments.sizes()
    return {
        "segments_before": len(before),
        "records_before": records_before,
        "bytes_before": sum(before.values()),
        "segments_after": len(after),
        "records_after": count_rows(where.segments, after),
        "bytes_after": sum(after.values()),
        "logs_folded": logs_folded,
        **compact_embeddings(where.local),
    }
