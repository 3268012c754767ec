"""The key index: which answer a key gets, in what order, for keys of any form, how fast."""

from __future__ import annotations

import random
import time
from pathlib import Path

import polars as pl
import pytest
from _cache_helpers import (
    key,
    record,
)

from llmframe._cache import AnswerCache
from llmframe._cache_admin import read_cache


def test_newest_ok_wins(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path)
    # The newer answer is added first: "newest" means created, not arrival order.
    cache.add([record(1, "new", seconds=10), record(1, "old", seconds=1)])
    cache.flush()
    assert cache.lookup([key(1)]) == ["new"]
    cache.add([record(1, "newer", seconds=20)])
    cache.flush()
    assert cache.lookup([key(1)]) == ["newer"]
    cache.add([record(1, "stale", seconds=5)])  # a slow process finishing late
    cache.flush()
    assert cache.lookup([key(1)]) == ["newer"]
    assert AnswerCache(tmp_path).lookup([key(1)]) == ["newer"]


def test_errors_are_stored_but_never_served(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path)
    cache.add([record(1, status="error"), record(2, "ok-then-error", seconds=1)])
    cache.add([record(2, status="error", seconds=2)])  # a later error does not hide the ok
    cache.add([record(3, status="error"), record(3, "fixed", seconds=3)])  # a later ok wins
    cache.flush()
    assert cache.lookup([key(1), key(2), key(3)]) == [None, "ok-then-error", "fixed"]
    assert AnswerCache(tmp_path).lookup([key(1), key(2), key(3)]) == [
        None,
        "ok-then-error",
        "fixed",
    ]
    stored = read_cache(tmp_path)
    assert stored.filter(pl.col("status") == "error").height == 3
    assert (
        stored.filter(pl.col("status") == "error")["error"].to_list()
        == ["server: 503 after 5 attempts"] * 3
    )


def test_lookup_keeps_order_and_duplicates(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path)
    assert cache.lookup([]) == []
    assert cache.lookup([key(1), key(1)]) == [None, None]
    cache.add([record(n, f"a{n}") for n in range(5)])
    keys = [key(3), key(9), key(0), key(3), key(3), key(4), key(9)]
    assert cache.lookup(keys) == ["a3", None, "a0", "a3", "a3", "a4", None]
    assert cache.lookup(pl.Series(keys)) == ["a3", None, "a0", "a3", "a3", "a4", None]
    assert cache.lookup(tuple(keys[:1])) == ["a3"]


def test_lookup_is_exact_when_keys_share_their_first_half(tmp_path: Path) -> None:
    # The index finds keys by their first 64 bits; keys that share them must not mix.
    one, two, three = ("0" * 16 + d * 16 for d in "123")
    cache = AnswerCache(tmp_path)
    cache.add_columns(
        {"key": [one, two], "model": ["m"] * 2, "template_hash": ["t"] * 2,
         "status": ["ok"] * 2, "answer": ["one", "two"]}
    )  # fmt: skip
    assert cache.lookup([two, three, one]) == ["two", None, "one"]
    assert cache.lookup_binary(bytes.fromhex(two + three + one)).to_pylist() == ["two", None, "one"]
    # A key missing from the cache whose first half equals a cached key's gets no answer.
    lonely = AnswerCache(tmp_path / "lonely")
    lonely.add([record(0, "zero")])
    assert lonely.lookup([key(0)[:16] + "f" * 16]) == [None]


def test_lookup_binary_agrees_with_lookup(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path)
    cache.add([record(n, f"a{n}") for n in range(5)])
    cache.add([record(2, status="error", seconds=5)])
    keys = [key(3), key(9), key(0), key(3), key(2)]
    binary = bytes.fromhex("".join(keys))
    assert (
        cache.lookup_binary(binary).to_pylist()
        == cache.lookup(keys)
        == ["a3", None, "a0", "a3", "a2"]
    )
    assert cache.lookup_binary(b"").to_pylist() == []
    with pytest.raises(ValueError, match="16 bytes"):
        cache.lookup_binary(b"x" * 17)


def test_keys_in_any_form_are_looked_up_as_text(tmp_path: Path) -> None:
    # llmframe's keys are 32 lowercase hex digits; a hand-filled cache may hold others.
    odd = ["short", key(0xABC).upper(), "g" * 32, "é" * 32]
    cache = AnswerCache(tmp_path)
    cache.add_columns(
        {"key": [key(1), *odd, key(2)], "model": ["m"] * 6, "template_hash": ["t"] * 6,
         "status": ["ok"] * 6, "answer": ["one", "s", "upper", "g", "e", "two"]}
    )  # fmt: skip
    cache.add_columns(
        {"key": ["short"], "model": ["m"], "template_hash": ["t"], "status": ["ok"],
         "answer": ["newer"]}
    )  # fmt: skip
    wanted = [key(2), "short", key(0xABC), key(0xABC).upper(), "g" * 32, "é" * 32, key(1), "nope"]
    assert cache.lookup(wanted) == ["two", "newer", None, "upper", "g", "e", "one", None]
    unwritten = cache.lookup(wanted)  # found in the buffer, not in the folder
    cache.flush()
    assert AnswerCache(tmp_path).lookup(wanted) == cache.lookup(wanted) == unwritten
    assert cache.lookup_binary(bytes.fromhex(key(0xABC))).to_pylist() == [None]


def test_lookup_speed_smoke(tmp_path: Path) -> None:
    n = 200_000
    keys = [f"{random.getrandbits(128):032x}" for _ in range(n)]
    with AnswerCache(tmp_path) as cache:
        cache.add_columns(
            {
                "key": keys,
                "model": ["gpt-4o-mini"] * n,
                "template_hash": ["t" * 32] * n,
                "status": ["ok"] * n,
                "answer": [f"answer{i % 1000:04d}" for i in range(n)],
            }
        )
    wanted = keys[::-1]
    wanted[::4] = [f"{random.getrandbits(128):032x}" for _ in wanted[::4]]  # a quarter are misses
    started = time.perf_counter()
    answers = AnswerCache(tmp_path).lookup(wanted)
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0, f"lookup of {n} keys took {elapsed:.2f} s"
    assert answers[1] == f"answer{(n - 2) % 1000:04d}" and answers[0] is None
    assert sum(a is not None for a in answers) == n - len(wanted[::4])
