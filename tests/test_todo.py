"""The job queue: rows kept as numbers, made into jobs a window at a time, in order."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import llmframe  # noqa: F401  (registers df.llm)
from llmframe._config import Options
from llmframe._errors import ConfigError
from llmframe._jobs import Job
from llmframe._keys import row_digests
from llmframe._prepare import prepare
from llmframe._template import parse_template
from llmframe._todo import TRIM_ROWS, WINDOW_ROWS, JobQueue, distinct_rows
from llmframe.testing import expected_answer


def _digests(keys: Sequence[bytes]) -> bytes:
    return b"".join(keys)


def _expected(keys: Sequence[bytes], rows: Sequence[int]) -> tuple[list[int], dict[int, list[int]]]:
    """The dict-based grouping distinct_rows replaces."""
    groups: dict[bytes, list[int]] = {}
    for row in rows:
        groups.setdefault(keys[row], []).append(row)
    firsts = sorted(group[0] for group in groups.values())
    return firsts, {g[0]: g[1:] for g in groups.values() if len(g) > 1}


@pytest.mark.parametrize("seed", range(5))
def test_distinct_rows_groups_as_a_dict_of_keys_would(seed: int) -> None:
    rng = random.Random(seed)
    pool = [hashlib.blake2b(str(i).encode(), digest_size=16).digest() for i in range(300)]
    # Keys that share their first 8 bytes but differ after: not repeats.
    pool += [pool[0][:8] + bytes([i]) * 8 for i in range(5)]
    keys = [rng.choice(pool) for _ in range(2_000)]
    rows = np.array(sorted(rng.sample(range(len(keys)), 1_500)), dtype=np.int64)
    firsts, repeats = distinct_rows(_digests(keys), rows)
    want_firsts, want_repeats = _expected(keys, rows.tolist())
    assert firsts.tolist() == want_firsts
    assert repeats == want_repeats


def test_distinct_rows_without_repeats_keeps_the_rows_as_they_are() -> None:
    keys = [hashlib.blake2b(str(i).encode(), digest_size=16).digest() for i in range(1_000)]
    rows = np.arange(0, 1_000, 3)
    firsts, repeats = distinct_rows(_digests(keys), rows)
    assert firsts.tolist() == rows.tolist() and repeats == {}


class Column(Sequence[str]):
    """A rendered column that counts how many values it renders."""

    __slots__ = ("rendered", "values")

    def __init__(self, values: list[str]) -> None:
        self.values = values
        self.rendered = 0

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        got = self.values[index]
        self.rendered += len(got) if isinstance(index, slice) else 1
        return got


PREFIX = b"task"


def _key(i: int) -> str:
    return row_digests(PREFIX, [[f"v{i}"]])[0].hex()


def _queue(n: int, rows: Sequence[int], repeats: dict[int, list[int]] | None = None) -> tuple[JobQueue, Column]:
    column = Column([f"v{i}" for i in range(n)])
    digests, _ = row_digests(PREFIX, [column.values])
    queue = JobQueue(fields=["x"], sources=[column], digests=digests, firsts=np.asarray(rows), repeats=repeats,
                     prefix=PREFIX)  # fmt: skip
    return queue, column


def test_jobs_come_out_in_row_order_made_a_window_at_a_time() -> None:
    n = 3 * WINDOW_ROWS
    queue, column = _queue(n, range(n), {5: [n - 1]})
    assert len(queue) == n and column.rendered == 0  # nothing made yet
    first = queue.popleft()
    assert (first.key, first.values, first.rows) == (_key(0), {"x": "v0"}, [0])
    assert column.rendered <= WINDOW_ROWS  # one window rendered, not the frame
    taken = [first] + [queue.popleft() for _ in range(n - 1)]
    assert [j.rows[0] for j in taken] == list(range(n))
    assert taken[5].rows == [5, n - 1]
    assert not queue and len(queue) == 0
    with pytest.raises(IndexError):
        queue.popleft()


def test_the_queue_lets_go_of_the_rows_it_has_handed_out() -> None:
    n = 3 * TRIM_ROWS
    queue, _ = _queue(n, range(n))
    copy = queue.copy()  # shares the arrays until one of them lets go
    held = [queue._firsts.nbytes + queue._keys.nbytes]  # 4 + 16 bytes a row still to send
    assert queue._firsts.dtype == np.int32 and held[0] == 20 * n
    taken = []
    while queue:
        taken.append(queue.popleft().rows[0])
        held.append(queue._firsts.nbytes + queue._keys.nbytes)
    assert taken == list(range(n))
    assert held[-1] == 0  # nothing held once every job is made
    assert max(held[1:]) <= held[0] and held[2 * TRIM_ROWS] <= held[0] // 2  # halved by then
    assert [j.rows[0] for j in copy] == list(range(n))  # the copy kept its own rows
    late, _ = _queue(n, range(n))
    for _ in range(TRIM_ROWS + 1):
        late.popleft()
    assert late.first_rows()[:2] == [TRIM_ROWS + 1, TRIM_ROWS + 2]
    assert len(late) == n - TRIM_ROWS - 1
    assert late[0].rows == [TRIM_ROWS + 1] and late[len(late) - 1].rows == [n - 1]


def test_a_sparse_queue_renders_only_its_own_rows() -> None:
    n = 100_000
    rows = list(range(0, n, 10_000))
    queue, column = _queue(n, rows)
    assert [queue.popleft().values["x"] for _ in range(len(rows))] == [f"v{r}" for r in rows]
    assert column.rendered == len(rows)


def test_front_peek_put_back_and_slices() -> None:
    n = 2 * WINDOW_ROWS
    queue, _ = _queue(n, range(n))
    head = queue[0]
    assert queue.popleft() is head  # a peek is the job handed out next
    queue.extendleft([head])
    assert queue[0] is head and len(queue) == n
    made = queue[10:12]
    assert [j.rows[0] for j in made] == [10, 11] and made[0] is queue[10]  # in the first window: made
    ahead = n - 3
    look = queue[ahead : ahead + 2]
    assert [j.rows[0] for j in look] == [ahead, ahead + 1]
    assert queue[ahead] is not look[0]  # a row still kept: a look, made afresh
    assert [j.rows[0] for j in queue[:: WINDOW_ROWS]] == [0, WINDOW_ROWS]


def test_iterating_makes_every_job_once_and_keeps_them() -> None:
    queue, _ = _queue(30, range(30))
    once = list(queue)
    assert [j.rows[0] for j in once] == list(range(30))
    assert all(a is b for a, b in zip(once, queue, strict=True))
    queue.extend([once[0].copy()])
    assert len(queue) == 31


def test_a_row_changed_since_it_was_keyed_is_handed_over_not_queued() -> None:
    queue, column = _queue(10, range(10))
    column.values[3] = "changed"
    column.values[4] = None  # type: ignore[call-overload]  # a value that became null
    changed: list[Job] = []
    queue.on_changed = changed.append
    assert [j.rows[0] for j in list(queue)] == [0, 1, 2, 5, 6, 7, 8, 9]
    assert [(j.rows, j.key) for j in changed] == [([3], _key(3)), ([4], _key(4))]  # the key it was asked under
    strict, column = _queue(10, range(10))
    column.values[0] = "changed"
    with pytest.raises(ConfigError, match="row 0 of the frame changed"):
        strict.popleft()


def test_jobs_of_a_template_with_several_fields() -> None:
    a, b = Column([f"a{i}" for i in range(50)]), Column([f"b{i}" for i in range(50)])
    digests, _ = row_digests(PREFIX, [a.values, b.values])
    queue = JobQueue(fields=["x", "y"], sources=[a, b], digests=digests, firsts=np.arange(0, 50, 2), prefix=PREFIX)
    b.values[10] = "changed"  # row 10's second field, after keying
    changed: list[Job] = []
    queue.on_changed = changed.append
    jobs = list(queue)
    assert [j.rows for j in jobs] == [[r] for r in range(0, 50, 2) if r != 10]
    assert all(j.values == {"x": f"a{j.rows[0]}", "y": f"b{j.rows[0]}"} for j in jobs)
    assert all(j.key == row_digests(PREFIX, [[f"a{j.rows[0]}"], [f"b{j.rows[0]}"]])[0].hex() for j in jobs)
    assert [(j.rows, j.values) for j in changed] == [([10], {"x": "a10", "y": "changed"})]


def test_detach_and_copy() -> None:
    queue, _ = _queue(20, range(20))
    queue.popleft()
    copy = queue.copy()
    assert len(copy) == len(queue) == 19
    assert [j.rows[0] for j in copy] == [j.rows[0] for j in queue] == list(range(1, 20))
    moved = queue.detach()
    assert len(queue) == 0 and not queue and len(moved) == 19
    assert moved.first_rows() == list(range(1, 20))


def test_prepare_makes_no_job_and_dedups_by_key() -> None:
    values = [f"text {i % 700}" for i in range(2_000)] + [None]
    template = parse_template("Say {x}")
    prepared = prepare({"x": values}, len(values), template, Options(model="m", cache=False))
    todo = prepared.todo
    assert len(todo) == 700 and prepared.report.duplicate_rows == 1_300 and prepared.report.null_rows == 1
    assert repr(todo).endswith("0 made)")
    jobs = list(todo)
    assert [j.rows for j in jobs[:2]] == [[0, 700, 1400], [1, 701, 1401]]
    assert jobs[0].values == {"x": "text 0"}
    assert prepared.to_send is not None and int(prepared.to_send.sum()) == 2_000
    assert prepared.unfinished_rows([]) == list(range(2_000))


def test_equal_short_answers_are_held_once() -> None:
    from llmframe._answers import SHARED_ANSWERS, Answers
    from llmframe._outcomes import Outcomes
    from llmframe._report import RunReport

    answers = Answers(4)
    outcomes = Outcomes(RunReport(), answers, None, model="m", template_hash="t")
    for row in range(3):
        outcomes.finish(Job(f"{row:032x}", {"x": "v"}, [row]), "".join(["posi", "tive"]), (1, 1, None, None))
    assert answers[0] == answers[1] == answers[2] == "positive"
    assert bytes(answers._data) == b"positive"  # stored once for the three rows
    answers._shared.update((str(i), -1) for i in range(SHARED_ANSWERS))  # full: new answers stored as they come
    outcomes.finish(Job(f"{3:032x}", {"x": "v"}, [3]), "negative", (1, 1, None, None))
    assert answers[3] == "negative" and "negative" not in answers._shared
    assert bytes(answers._data) == b"positivenegative"


def test_a_row_changed_in_the_frame_during_a_run_is_never_sent_nor_cached(fake_server: Any, tmp_path: Path) -> None:
    """The prompt text is rendered again when a job is made: a cell changed in place after
    the row was keyed (a list mutated while ``aapply`` runs) must not have the answer to
    its new text cached under its old text's key."""
    n = WINDOW_ROWS + 500  # the last rows are made into jobs in the second window
    df = pd.DataFrame({"x": [[f"t{i}"] for i in range(n)]})
    o = {"model": "gpt-4o-mini", "base_url": fake_server.base_url, "api_key": fake_server.api_key, "progress": False,
         "cache": tmp_path / "cache", "batch_size": 20, "canaries": 0, "max_concurrency": 2, "errors": "null",
         "error_column": "error"}  # fmt: skip
    template = "Say {x}"
    fake_server.configure(latency=0.05)

    async def main() -> Any:
        task = asyncio.create_task(df.llm.aapply(template, **o))
        while fake_server.stats.requests == 0:
            await asyncio.sleep(0.01)
        df["x"].iat[0].append("early")  # made already: it goes as it was keyed
        df["x"].iat[n - 1].append("late")  # not made yet: found changed
        return await task

    out = asyncio.run(main())
    assert out["answer"].iat[n - 1] is None or pd.isna(out["answer"].iat[n - 1])
    assert str(out["error"].iat[n - 1]).startswith("changed:")
    rest = [i for i in range(n - 1)]
    assert all(out["answer"].iat[i] == expected_answer(f"Say ['t{i}']") for i in rest[1:])
    assert out["answer"].iat[0] == expected_answer("Say ['t0']")  # the text it was keyed with
    # Nothing cached under the changed row's original key: a fresh frame asks it again.
    again = pd.DataFrame({"x": [[f"t{n - 1}"]]}).llm.apply(template, **o)
    assert again["answer"].iat[0] == expected_answer(f"Say ['t{n - 1}']") and again.llm.report.requests == 1


def test_an_uncached_run_keeps_no_lookup_result(tmp_path: Path) -> None:
    # An empty cache answers a lookup with a null per row (4 bytes of offsets each at 1M rows):
    # nothing found, nothing kept, and the output column is taken by the rows' own numbers.
    template = parse_template("Say {x}")
    opts = Options(model="m", cache=str(tmp_path))
    prepared = prepare({"x": ["a", "b"]}, 2, template, opts)
    assert prepared.answers._found is None and prepared.report.cached_rows == 0
    prepared.answers[1] = "B"
    assert prepared.answers.to_arrow().to_pylist() == [None, "B"]  # type: ignore[union-attr]
    prepared.close()
