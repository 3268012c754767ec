"""A cache folder given as an fsspec URL (``s3://``, ``gs://``, ``memory://``, ``file://``...).

``cache="s3://bucket/llm-cache/"`` keeps the segments at that URL and everything
that needs a real file system on this machine, in a folder of its own for that
URL (:func:`local_folder`: ``<default cache folder>/remote/<hash>/``, the hash of
the URL without credentials or query)::

    s3://bucket/llm-cache/                           # shared: segments only
        seg-1732896000123456789-4242-1f2e3d4c.parquet   # one PUT each, under a unique name
    ~/.cache/llmframe/remote/3f9c0a1b2c3d4e5f/       # this machine's, for that URL
        url.txt                                      # the URL, redacted: for a person to read
        logs/.log-4242-9a8b7c6d-build01.arrows       # the answer logs (_cache_log), flock-ed
        .claims.sqlite                               # the claim store (_claims): this machine's
        endpoints.json                               # what the endpoints taught (_capabilities)

Why so: an object store cannot append, lock or rename. A segment is written
once, whole, under a name no other writer uses (``seg-<time_ns>-<pid>-<uuid8>``),
as a single ``PUT`` (an object appears whole or not at all; on a file system
fsspec writes to, ``file://``, a temporary name renamed into place), so no two
writers ever write one object. The answer log, which must be appended to on
every reply, stays on local disk and is folded into a remote segment at every
flush and at close, and the next run that opens the same URL on this machine
folds the logs a dead process left. A crash therefore loses nothing that
reached local disk (every answer, the moment it arrived) unless the machine
itself is lost, with its disk: then the answers of its last flush interval
(2 s) are gone, and paid again by the next run.

Lookups list the remote folder once per lookup (one ``LIST`` per run, plus one
per poll while claimed keys wait) and read each new segment with one ``GET``,
into the same key index as a local folder. Logs of other machines are not seen
until their owners fold them (within a flush interval).

Claims (who is asking for which key) need a database that locks, so they live
in this machine's folder: two processes on one machine never pay for one key,
two machines may (each once), unless ``limiter="redis://..."`` is given too: then
they live in that Redis (:mod:`._claims_redis`), shared by every machine. Credentials come from ``cache_options=`` (fsspec's
storage options, e.g. ``{"key": ..., "secret": ..., "client_kwargs":
{"endpoint_url": ...}}``), the URL, or the environment, as fsspec takes them;
they are never written anywhere and every message names the URL redacted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ._cache_log import ANSWERS, LogFormat
from ._cache_schema import SCHEMA
from ._cache_segments import (
    SEGMENT_NAME,
    LocalSegments,
    Segments,
    read_each,
    segment_name,
    write_parquet,
)
from ._cache_temps import TEMP_PREFIX, TEMP_SUFFIX, remove_stale_temporaries
from ._errors import ConfigError

__all__ = ["INSTALL", "CacheLocation", "RemoteSegments", "cache_id", "is_url", "local_folder", "open_remote", "redact"]

#: What to install for a URL cache.
INSTALL = "pip install 'llmframe[remote]'"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_USERINFO = re.compile(r"(?<=://)[^/@?#]*@")


def is_url(cache: object) -> bool:
    """Whether ``cache=`` names an fsspec URL (``scheme://...``) rather than a local path."""
    return isinstance(cache, str) and _URL.match(cache) is not None


def redact(url: str) -> str:
    """``url`` without what may be a secret: ``user:password@`` and the query string."""
    return _USERINFO.sub("", url).split("?", 1)[0].split("#", 1)[0]


def _scrub(text: str, options: Mapping[str, Any]) -> str:
    """``text`` (an error message) without the URL's credentials or any option's value."""
    text = _USERINFO.sub("", text)
    stack: list[Any] = [options]
    while stack:
        value = stack.pop()
        if isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, str) and len(value) >= 4 and value in text:
            text = text.replace(value, "***")
    return text


def cache_id(url: str) -> str:
    """The cache at ``url`` as a short name: a hash of the URL without credentials,
    query or trailing ``/``, the same on every machine."""
    return hashlib.sha256(redact(url).rstrip("/").encode()).hexdigest()[:16]


def local_folder(url: str, root: Path) -> Path:
    """This machine's folder for the cache at ``url`` (under ``root``, the default cache
    folder), named by :func:`cache_id`."""
    return root / "remote" / cache_id(url)


@dataclass(frozen=True, slots=True)
class CacheLocation:
    """Where one cache keeps what: ``segments`` (a local folder, or a URL's), ``logs``
    (the answer logs: always local), ``local`` (this machine's folder for claims and
    what endpoints taught) and ``name`` (for messages: never with credentials)."""

    segments: Segments
    logs: Path
    local: Path
    name: str
    remote: bool = False
    cache_id: str = ""  # a URL's (:func:`cache_id`): what shares claims across machines

    @classmethod
    def folder(cls, path: Path) -> CacheLocation:
        """A cache folder on this machine: everything in it, as before URLs."""
        return cls(LocalSegments(path), path, path, str(path))

    @property
    def log_format(self) -> LogFormat:
        """The answer logs, folded into this cache's segments (wherever they are)."""
        if not self.remote:
            return ANSWERS
        segments = self.segments
        return LogFormat(SCHEMA.equals, SCHEMA, lambda _folder, table: segments.write(table))


class RemoteSegments:
    """The segments at an fsspec URL: listed fresh, read in one ``GET`` each, written
    whole under a unique name, never renamed on an object store."""

    __slots__ = ("_atomic_put", "fs", "root", "where")

    def __init__(self, fs: Any, root: str, where: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.where = where
        # A put is atomic on object stores and in memory://; a file system writes in place.
        self._atomic_put = _atomic_put(fs)

    def __repr__(self) -> str:
        return f"RemoteSegments({self.where!r})"

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def sizes(self) -> dict[str, int]:
        self.fs.invalidate_cache(self.root)  # s3fs and gcsfs keep listings: see new segments
        try:
            entries = self.fs.ls(self.root, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        found = {}
        for entry in entries:
            name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
            if SEGMENT_NAME.fullmatch(name):
                found[name] = int(entry.get("size") or 0)
        return dict(sorted(found.items()))

    def source(self, name: str) -> pa.NativeFile:
        return pa.BufferReader(self.fs.cat_file(self._path(name)))

    def exists(self, name: str) -> bool:
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(self.root)
            return bool(self.fs.exists(self._path(name)))
        return False

    def read(self, names: Sequence[str], columns: Sequence[str]) -> tuple[pl.DataFrame, list[str], list[str]]:
        def read_one(name: str) -> pl.DataFrame:
            return cast(pl.DataFrame, pl.from_arrow(pq.read_table(self.source(name), columns=list(columns))))

        return read_each(names, columns, read_one, self.exists, lambda name: f"{self.where}/{name}")

    def write(self, table: pa.Table, *, durable: bool = False) -> str:
        sink = pa.BufferOutputStream()
        write_parquet(table, sink)
        data = sink.getvalue().to_pybytes()
        name = segment_name()
        if self._atomic_put:
            self.fs.pipe_file(self._path(name), data)  # one PUT: the object appears whole
            return name
        temp = self._path(f"{TEMP_PREFIX}{name}{TEMP_SUFFIX}")
        try:
            self.fs.pipe_file(temp, data)
            self.fs.mv(temp, self._path(name))
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm_file(temp)
            raise
        return name

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.rm_file(self._path(name))


def _atomic_put(fs: Any) -> bool:
    """Whether one write of a whole object is atomic: not on a file system (``file://``)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" not in protocols and "local" not in protocols


def open_remote(url: str, options: Mapping[str, Any] | None, local_root: Path) -> CacheLocation:
    """The cache at ``url``, opened through fsspec with ``options`` (its storage options);
    its logs and claims go to :func:`local_folder` under ``local_root``."""
    given = dict(options or {})
    shown = redact(url)
    try:
        import fsspec
    except ImportError:
        raise ConfigError(f"cache={shown!r} is a URL, which needs fsspec: {INSTALL}") from None
    try:
        fs, root = fsspec.core.url_to_fs(url, **given)
    except ImportError as exc:  # the scheme's own package: s3fs, gcsfs, adlfs...
        raise ConfigError(f"cache={shown!r} needs a package fsspec did not find "
                          f"({_scrub(str(exc), given)}): {INSTALL}, and s3fs for s3:// or gcsfs for gs://") from None  # fmt: skip
    except Exception as exc:
        raise ConfigError(f"cannot open the cache {shown}: {type(exc).__name__}: {_scrub(str(exc), given)}") from None
    if not _atomic_put(fs):  # a file system: the folder must exist for the temporary files
        with contextlib.suppress(Exception):
            fs.makedirs(root, exist_ok=True)
        remove_stale_temporaries(Path(root))  # what a writer killed before its rename left
    local = local_folder(url, local_root)
    logs = local / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    note = local / "url.txt"
    if not note.exists():  # the URL, redacted: which cache this folder serves
        with contextlib.suppress(OSError):
            note.write_text(json.dumps({"url": shown, "since": time.time()}) + "\n")
    return CacheLocation(RemoteSegments(fs, root, shown), logs, local, shown, remote=True, cache_id=cache_id(url))

