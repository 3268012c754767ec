"""The claim store in Redis: claims shared by every machine that fills one cache URL.

A cache at a URL (:mod:`._cache_fs`) keeps its SQLite claim store on each machine,
so two machines may pay once each for a key both ask for. With ``limiter=
"redis://..."`` as well, the Redis that holds the quota holds the claims too, and
:class:`RedisClaimStore` takes the place of :class:`~llmframe._claims.ClaimStore`
with the same methods (``claim``, ``release``, ``refresh``, ``held``, ``close``,
``releases_at_open``). Its keys, all under one hash slot of the cache's id (a hash
of the URL without credentials)::

    llmframe:claims:{<cache id>}:key:<key>     the run that holds the key (24 h TTL: litter bound)
    llmframe:claims:{<cache id>}:run:<run>     "host pid", PX the lease: the run is live while it exists
    llmframe:claims:{<cache id>}:held:<run>    the run's keys (a set), for close
    llmframe:claims:{<cache id>}:releases      the release counter

A claim is stale once its run's lease key has expired: the run died, or stopped
refreshing for :data:`~llmframe._claims.LEASE_SECONDS`. There is no pid check
across machines, so a killed owner's keys wait out its lease. Each method is one
Lua script (one round trip, atomic): ``SET NX``-like claims that never overwrite a
live owner unless forced.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from . import _claims
from ._claims import Claimed, Owner, StoreUnavailable, this_process

__all__ = ["RedisClaimStore"]

#: How long an abandoned claim's key lingers when no one asks for it again.
_LITTER_MS = 24 * 3600 * 1000

_CLAIM = """
local prefix, me, lease, force = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == "1"
local held = prefix .. "held:" .. me
redis.call("SET", prefix .. "run:" .. me, ARGV[5], "PX", lease)
local theirs, taken, moved = {}, {}, false
for i = 7, #ARGV do
  local key = ARGV[i]
  local slot = prefix .. "key:" .. key
  local owner = redis.call("GET", slot)
  local mine = not owner or owner == me
  if not mine then
    if force or redis.call("EXISTS", prefix .. "run:" .. owner) == 0 then
      table.insert(taken, key)
      redis.call("SREM", prefix .. "held:" .. owner, key)
      moved = true
      mine = true
    else
      table.insert(theirs, key)
    end
  end
  if mine then
    redis.call("SET", slot, me, "PX", ARGV[6])
    redis.call("SADD", held, key)
  end
end
redis.call("PEXPIRE", held, ARGV[6])
if moved then redis.call("INCR", prefix .. "releases") end
return {theirs, taken, tonumber(redis.call("GET", prefix .. "releases") or "0")}
"""

_RELEASE = """
local prefix, me = ARGV[1], ARGV[2]
local held = prefix .. "held:" .. me
for i = 3, #ARGV do
  local slot = prefix .. "key:" .. ARGV[i]
  if redis.call("GET", slot) == me then redis.call("DEL", slot) end
  redis.call("SREM", held, ARGV[i])
end
return redis.call("INCR", prefix .. "releases")
"""

_CLOSE = """
local prefix, me = ARGV[1], ARGV[2]
local held = prefix .. "held:" .. me
local released = 0
for _, key in ipairs(redis.call("SMEMBERS", held)) do
  local slot = prefix .. "key:" .. key
  if redis.call("GET", slot) == me then redis.call("DEL", slot); released = released + 1 end
end
redis.call("DEL", held, prefix .. "run:" .. me)
if released > 0 then redis.call("INCR", prefix .. "releases") end
return released
"""


@contextlib.contextmanager
def _reached() -> Iterator[None]:
    """Redis's errors as the claim stores' (a run then goes on without claims)."""
    import redis

    try:
        yield
    except redis.RedisError as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc


class RedisClaimStore:
    """One run's claims in Redis, for the cache ``cache_id``; the interface of
    :class:`~llmframe._claims.ClaimStore`. Example::

        store = RedisClaimStore("redis://redis:6379/0", cache_id)
        store.claim(keys).theirs     # keys a live run on any machine is answering
        store.release(done_keys)
        store.close()
    """

    __slots__ = ("_client", "_closed", "_lock", "_prefix", "_scripts", "lease", "owner", "path", "releases_at_open")

    def __init__(self, url: str, cache_id: str, *, owner: Owner | None = None, lease: float | None = None) -> None:
        import redis

        from ._redis_limiter import redacted

        self.owner = owner or this_process()
        self.lease = _claims.LEASE_SECONDS if lease is None else lease
        self.path = f"{redacted(url)} (claims of cache {cache_id})"  # named in warnings
        self._prefix = f"llmframe:claims:{{{cache_id}}}:"
        self._client: Any = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self._scripts = {name: self._client.register_script(text)
                         for name, text in (("claim", _CLAIM), ("release", _RELEASE), ("close", _CLOSE))}  # fmt: skip
        self._lock = threading.Lock()
        self._closed = False
        try:
            self.refresh()
            self.releases_at_open = int(self._client.get(self._prefix + "releases") or 0)
        except BaseException:
            self._client.close()
            raise

    def __repr__(self) -> str:
        return f"RedisClaimStore({self.path!r}, run={self.owner.run[:8]})"

    def _run(self, name: str, *args: str | int) -> Any:
        with self._lock, _reached():
            return self._scripts[name](args=[self._prefix, self.owner.run, *args])

    def claim(self, keys: Iterable[str], *, force: bool = False) -> Claimed:
        """Claim ``keys`` for this run, taking over those of runs whose lease expired;
        with ``force``, from live runs too."""
        who = f"{socket.gethostname()} {self.owner.pid}"
        theirs, taken, releases = self._run(
            "claim", int(self.lease * 1000), int(force), who, _LITTER_MS, *keys
        )
        return Claimed({k.decode() for k in theirs}, {k.decode() for k in taken}, int(releases))

    def refresh(self) -> None:
        """Extend this run's lease."""
        with self._lock, _reached():
            pipe = self._client.pipeline()
            pipe.set(self._prefix + "run:" + self.owner.run, f"{socket.gethostname()} {self.owner.pid}",
                     px=int(self.lease * 1000))  # fmt: skip
            pipe.pexpire(self._prefix + "held:" + self.owner.run, _LITTER_MS)
            pipe.execute()

    def release(self, keys: Iterable[str], *, seen: int = -1) -> int:
        """Give ``keys`` back; returns ``seen`` moved past this release when no other came
        between (as :meth:`ClaimStore.release <llmframe._claims.ClaimStore.release>`)."""
        now = int(self._run("release", *keys))
        return now if now == seen + 1 else seen

    def held(self) -> int:
        """How many keys this run holds."""
        with self._lock, _reached():
            return int(self._client.scard(self._prefix + "held:" + self.owner.run))

    def close(self) -> None:
        """Release every claim of this run and end its lease. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            with _reached():
                self._scripts["close"](args=[self._prefix, self.owner.run])
        finally:
            self._client.close()
