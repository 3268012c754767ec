"""The packing check as a pure state machine: references, trials, the verdict."""

from __future__ import annotations

from llmframe._check import TRIAL_RETRIES, PackingCheck
from llmframe._jobs import Job


def jobs(n: int) -> list[Job]:
    return [Job(f"k{i}", {"x": str(i)}, [i]) for i in range(n)]


def answered(check: PackingCheck, rows: list[Job], answer: str = "a{}") -> None:
    for job in rows:
        check.add_reference(job)
    assert check.busy and check.next_trial(fits=100) is None  # waits for the references
    for job in rows:
        check.settle_reference(job, answer.format(job.key))
    assert not check.busy


def run_trials(check: PackingCheck, answer_of: object) -> list[int]:
    """Answer every trial batch with ``answer_of(job, size)``; return the sizes sent."""
    sizes = []
    while (batch := check.next_trial(fits=100)) is not None:
        sizes.append(len(batch))
        assert all(not j.rows for j in batch)  # copies: their answers never reach the output
        check.record_trial(batch, [answer_of(j, len(batch)) for j in batch])  # type: ignore[operator]
    return sizes


def test_packs_at_the_largest_size_that_agrees() -> None:
    check = PackingCheck(sample=20, sizes=[20, 5], min_agreement=0.95)
    rows = jobs(20)
    assert check.wants_reference()
    answered(check, rows)
    assert not check.wants_reference()
    sizes = run_trials(check, lambda j, n: f"a{j.key}")
    assert sizes == [20]
    assert check.verdict is not None and check.verdict.batch_size == 20
    assert check.verdict.agreement == {20: 1.0}
    assert "agreed" in check.verdict.reason


def test_steps_down_then_refuses() -> None:
    check = PackingCheck(sample=20, sizes=[20, 5], min_agreement=0.95)
    answered(check, jobs(20))
    # Right at 5 rows per request on 3 of 4 rows, wrong at 20 on every row.
    sizes = run_trials(check, lambda j, n: "echo" if n == 20 or int(j.key[1:]) % 4 == 0 else f"a{j.key}")
    assert sizes == [20, 5, 5, 5, 5]
    assert check.verdict is not None and check.verdict.batch_size == 1
    assert check.verdict.agreement == {20: 0.0, 5: 0.75}
    assert "0% at 20" in check.verdict.reason and "75% at 5" in check.verdict.reason


def test_smaller_size_can_win() -> None:
    check = PackingCheck(sample=20, sizes=[20, 5], min_agreement=0.95)
    answered(check, jobs(20))
    run_trials(check, lambda j, n: "echo" if n == 20 else f"a{j.key}")
    assert check.verdict is not None and check.verdict.batch_size == 5


def test_a_reply_with_no_answer_is_sent_again_before_it_counts() -> None:
    # Never a usable reply: sent 1 + TRIAL_RETRIES times, then packing is refused.
    check = PackingCheck(sample=10, sizes=[10], min_agreement=0.9)
    answered(check, jobs(10))
    assert run_trials(check, lambda j, n: None) == [10] * (TRIAL_RETRIES + 1)
    assert check.verdict is not None and check.verdict.batch_size == 1
    # Usable on the last allowed try: packed.
    check = PackingCheck(sample=10, sizes=[10], min_agreement=0.9)
    answered(check, jobs(10))
    replies = iter([None] * TRIAL_RETRIES + ["good"])
    sent = 0
    while (batch := check.next_trial(fits=100)) is not None:
        sent += 1
        reply = next(replies)
        check.record_trial(batch, [None if reply is None else f"a{j.key}" for j in batch])
    assert sent == TRIAL_RETRIES + 1
    assert check.verdict is not None and check.verdict.batch_size == 10


def test_missing_answers_do_not_count_as_wrong_when_most_rows_answered() -> None:
    check = PackingCheck(sample=10, sizes=[10], min_agreement=0.95)
    answered(check, jobs(10))
    run_trials(check, lambda j, n: None if j.key in ("k1", "k2") else f"a{j.key}")
    assert check.verdict is not None and check.verdict.batch_size == 10


def test_the_token_budget_caps_the_trial_size() -> None:
    check = PackingCheck(sample=12, sizes=[20], min_agreement=0.9)
    answered(check, jobs(12))
    batch = check.next_trial(fits=4)
    assert batch is not None and len(batch) == 4


def test_too_few_reference_answers_refuse_packing() -> None:
    check = PackingCheck(sample=3, sizes=[20], min_agreement=0.9)
    rows = jobs(3)
    for job in rows:
        check.add_reference(job)
    check.settle_reference(rows[0], "x")
    check.settle_reference(rows[1], None)
    check.settle_reference(rows[2], None)
    assert check.next_trial(fits=100) is None
    assert check.verdict is not None and check.verdict.batch_size == 1
    assert "only 1 of 3" in check.verdict.reason


def test_a_refused_trial_is_sent_again() -> None:
    check = PackingCheck(sample=4, sizes=[4], min_agreement=0.9)
    answered(check, jobs(4))
    batch = check.next_trial(fits=100)
    assert batch is not None
    check.requeue(batch)  # e.g. the endpoint rejected response_format, now stepped down
    again = check.next_trial(fits=100)
    assert again is not None and [j.key for j in again] == [j.key for j in batch]


def test_the_first_trial_rides_with_the_references_and_answers_new_rows() -> None:
    check = PackingCheck(sample=4, sizes=[10, 5], min_agreement=0.9)
    refs, new = jobs(4), [Job(f"n{i}", {"x": f"n{i}"}, [100 + i]) for i in range(6)]
    for job in refs:
        check.add_reference(job)
    assert check.first_trial_room(fits=100) == 6  # sent before any reference is back
    batch = check.first_trial(new, check.first_size(fits=100))
    assert len(batch) == 10 and not batch[-1].rows  # a reference copy goes last
    assert [j.key for j in batch if j.rows] == [j.key for j in new]  # new rows keep their order
    assert sum(not j.rows for j in batch) == 4 and check.busy
    check.record_trial(batch, [f"a{j.key}" for j in batch], usages=[(1, 1, None, "r")] * 10)
    assert check.verdict is None  # the references are not back yet
    for job in refs:
        check.settle_reference(job, f"a{job.key}")
    assert check.verdict is not None and check.verdict.batch_size == 10
    assert [(j.key, a) for j, a, _ in check.held] == [(j.key, f"a{j.key}") for j in new]
    assert check.returned == []


def test_new_rows_of_a_failed_first_trial_are_asked_again() -> None:
    check = PackingCheck(sample=4, sizes=[10, 5], min_agreement=0.9)
    refs, new = jobs(4), [Job(f"n{i}", {"x": f"n{i}"}, [100 + i]) for i in range(6)]
    for job in refs:
        check.add_reference(job)
    batch = check.first_trial(new, 10)
    for job in refs:
        check.settle_reference(job, f"a{job.key}")
    check.record_trial(batch, ["echo"] * 10)
    assert check.verdict is None and check.agreement == {10: 0.0}
    assert check.held == [] and check.returned == new
    sizes = run_trials(check, lambda j, n: f"a{j.key}")  # then 5 at a time, copies only
    assert sizes == [4] and check.verdict is not None and check.verdict.batch_size == 4


def _trial_out(spans: list[tuple[float, float]], sample: int = 0) -> tuple[PackingCheck, list[Job], list[Job]]:
    """A check of ``sample`` references (``len(spans)`` if 0), whose first trial (10 rows) is
    out and the first ``len(spans)`` of whose references were answered at ``spans``."""
    check = PackingCheck(sample=sample or len(spans), sizes=[10, 5], min_agreement=0.9)
    refs = jobs(sample or len(spans))
    for job in refs:
        check.add_reference(job)
    trial = check.first_trial([Job(f"n{i}", {"x": f"n{i}"}, [100 + i]) for i in range(10 - len(refs))], 10)
    for job, (sent, back) in zip(refs, spans, strict=False):
        check.settle_reference(job, f"a{job.key}")
        check.timed(sent, back)
    return check, refs, trial


def test_a_wave_goes_ahead_of_the_verdict_where_the_references_were_answered_side_by_side() -> None:
    check, _, _ = _trial_out([(0.0, 0.30), (0.0, 0.31), (0.01, 0.33), (0.01, 0.30)])
    assert 3.5 < check.side_by_side() <= 4
    sizes = []
    while size := check.ahead_size(concurrency=6):
        sizes.append(size)
        check.ahead_sent += 1
    assert sizes == [10] * 6  # the trial's size, one wave (max_concurrency), no more


def test_an_endpoint_that_answers_one_request_at_a_time_gets_no_wave() -> None:
    check, _, _ = _trial_out([(0.0, 0.3), (0.0, 0.6), (0.0, 0.9), (0.0, 1.2)])  # one slot: each waits for the last
    assert abs(check.side_by_side() - 1.0) < 1e-9
    assert check.ahead_size(concurrency=32) == 0
    two, _, _ = _trial_out([(0.0, 0.3), (0.0, 0.3), (0.0, 0.6), (0.0, 0.6)])  # two slots: one beside the trial
    assert abs(two.side_by_side() - 2.0) < 1e-9
    assert two.ahead_size(concurrency=32) == 10
    two.ahead_sent += 1
    assert two.ahead_size(concurrency=32) == 0


def test_nothing_goes_ahead_before_every_reference_is_back_or_once_decided() -> None:
    check, refs, trial = _trial_out([(0.0, 0.3)] * 3, sample=4)
    assert check.ahead_size(concurrency=32) == 0  # one reference still out: parallelism unknown
    check.settle_reference(refs[3], f"a{refs[3].key}")
    check.timed(0.0, 0.3)
    assert check.ahead_size(concurrency=32) == 10 and check.fate(10) is None  # held
    check.record_trial(trial, [f"a{j.key}" for j in trial])
    assert check.verdict is not None and check.verdict.batch_size == 10
    assert check.ahead_size(concurrency=32) == 0
    assert check.fate(10) == "keep" and check.fate(2) == "keep" and check.fate(11) == "again"


def test_answers_packed_ahead_are_asked_again_when_the_verdict_packs_fewer() -> None:
    check, _, trial = _trial_out([(0.0, 0.3)] * 4)
    assert check.ahead_size(concurrency=32) == 10
    check.record_trial(trial, ["echo"] * 10)  # wrong at 10
    assert check.verdict is None and check.ahead_size(concurrency=32) == 0  # not while smaller sizes are tried
    assert check.fate(10) is None
    assert run_trials(check, lambda j, n: f"a{j.key}") == [4]
    assert check.verdict is not None and check.verdict.batch_size == 4
    assert check.fate(10) == "again" and check.fate(4) == "keep" and check.fate(2) == "keep"
