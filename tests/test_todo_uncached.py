"""The job queue's rows at prepare time: what an uncached run holds beside its keys."""

from __future__ import annotations

import hashlib
import random
import tracemalloc

import numpy as np
import pytest

from llmframe._keys import row_digests
from llmframe._todo import JobQueue, distinct_rows


def _keys(n: int, repeat_every: int = 0) -> list[bytes]:
    keys = [hashlib.blake2b(str(i).encode(), digest_size=16).digest() for i in range(n)]
    if repeat_every:
        for row in range(repeat_every, n, repeat_every):
            keys[row] = keys[row - repeat_every + 1]
    return keys


def _expected(keys: list[bytes], rows: list[int]) -> tuple[list[int], dict[int, list[int]]]:
    groups: dict[bytes, list[int]] = {}
    for row in rows:
        groups.setdefault(keys[row], []).append(row)
    return sorted(g[0] for g in groups.values()), {g[0]: g[1:] for g in groups.values() if len(g) > 1}


@pytest.mark.parametrize("repeat_every", [0, 7, 1000])
@pytest.mark.parametrize("subset", [False, True])
def test_distinct_rows_over_every_row_or_some(repeat_every: int, subset: bool) -> None:
    keys = _keys(5_000, repeat_every)
    if repeat_every == 1000:  # a tie of the first 8 bytes only: two different keys
        keys[4_321] = keys[17][:8] + bytes(8)
    rows = sorted(random.Random(3).sample(range(5_000), 3_000)) if subset else list(range(5_000))
    firsts, repeats = distinct_rows(b"".join(keys), np.array(rows))
    assert (firsts.tolist(), repeats) == _expected(keys, rows)


def test_distinct_rows_of_an_uncached_run_holds_little_beside_the_keys() -> None:
    n = 200_000
    digests = b"".join(_keys(n))
    rows = np.arange(n)
    tracemalloc.start()
    try:
        firsts, repeats = distinct_rows(digests, rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert firsts is rows and repeats == {}
    # One sorted copy of the keys' first 8 bytes (and a comparison), not the three or four
    # arrays of 8 bytes a row an argsort of copied keys took.
    assert peak < 11 * n, peak


def test_a_queue_of_every_row_keeps_the_keys_given_not_a_copy() -> None:
    values = [f"v{i}" for i in range(10_000)]
    digests = bytearray(row_digests(b"p", [values])[0])
    every = JobQueue(fields=["x"], sources=[values], digests=digests, firsts=np.arange(10_000), prefix=b"p")
    some = JobQueue(fields=["x"], sources=[values], digests=digests, firsts=np.arange(0, 10_000, 2), prefix=b"p")
    assert np.shares_memory(every._keys, np.frombuffer(digests, dtype=np.uint8))
    assert not np.shares_memory(some._keys, np.frombuffer(digests, dtype=np.uint8))
    assert every._firsts.dtype == np.int32
    jobs = list(every)
    assert [job.rows for job in jobs] == [[i] for i in range(10_000)]
    assert [job.key for job in jobs] == [digests[16 * i : 16 * i + 16].hex() for i in range(10_000)]
    assert [job.values for job in some] == [{"x": values[i]} for i in range(0, 10_000, 2)]
