"""The claim store in Redis (``_claims_redis``), against the run's real redis-server: the
interface of the SQLite store, shared by every store of one cache id."""

from __future__ import annotations

from typing import Any

import pytest

from llmframe._claims import StoreUnavailable
from llmframe._claims_redis import RedisClaimStore


@pytest.fixture
def stores(redis_url: str) -> Any:
    opened: list[RedisClaimStore] = []

    def store(cache_id: str = "c0ffee") -> RedisClaimStore:
        opened.append(RedisClaimStore(redis_url, cache_id))
        return opened[-1]

    yield store
    for s in opened:
        s.close()


def test_a_key_claimed_by_a_live_run_is_theirs_until_released(stores: Any) -> None:
    a, b = stores(), stores()
    assert a.claim(["k1", "k2"]).theirs == set()
    got = b.claim(["k2", "k3"])
    assert (got.theirs, got.taken) == ({"k2"}, set())
    assert (a.held(), b.held()) == (2, 1)
    seen = b.releases_at_open
    a.release(["k2"], seen=seen)
    got = b.claim(["k2"])
    assert got.theirs == set() and got.releases == seen + 1  # the release is seen
    assert b.held() == 2 and a.held() == 1
    assert stores("another-cache").claim(["k1"]).theirs == set()  # another cache's claims are apart


def test_a_run_whose_lease_is_gone_is_taken_over_and_force_takes_from_a_live_one(
    stores: Any, redis_url: str
) -> None:
    import redis

    a, b = stores(), stores()
    a.claim(["k1", "k2"])
    got = b.claim(["k1"], force=True)  # a waiter that waited too long
    assert (got.theirs, got.taken) == (set(), {"k1"}) and a.held() == 1
    # What the lease's expiry does (PX on the run's key), without waiting for it.
    client = redis.Redis.from_url(redis_url)
    client.delete(f"llmframe:claims:{{c0ffee}}:run:{a.owner.run}")
    client.close()
    got = b.claim(["k2"])
    assert (got.theirs, got.taken) == (set(), {"k2"})
    a.refresh()  # back, but its keys are b's now
    assert stores().claim(["k1", "k2"]).theirs == {"k1", "k2"}


def test_close_releases_every_key_and_ends_the_lease(stores: Any) -> None:
    a, b = stores(), stores()
    a.claim([f"k{n}" for n in range(300)])
    a.close()
    a.close()  # twice is fine
    got = b.claim([f"k{n}" for n in range(300)])
    assert (got.theirs, got.taken) == (set(), set())  # released, not taken over
    assert got.releases == b.releases_at_open + 1


def test_an_unreachable_redis_is_a_store_error() -> None:
    with pytest.raises(StoreUnavailable):
        RedisClaimStore("redis://127.0.0.1:1/0", "c0ffee")  # nothing listens on port 1
