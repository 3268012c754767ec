"""The batch size shrinks only when smaller batches measurably fail less."""

from __future__ import annotations

from llmframe._sizer import SIZE_EVIDENCE_ROWS, BatchSizer


def test_random_failures_do_not_shrink_when_resends_fail_as_often() -> None:
    sizer = BatchSizer(20)
    # Half-size resends fail at the same 40% as full batches: an endpoint failing at
    # random, which smaller batches would not fix.
    for _ in range(10):
        sizer.observe(10, 4, 10)
        sizer.observe(20, 8, 20)
    assert sizer.cap == 20


def test_failures_that_depend_on_size_halve_the_cap_then_wait_for_evidence() -> None:
    sizer = BatchSizer(20)
    sizer.observe(20, 18, 20)  # nearly every row wrong at 20
    sizer.observe(20, 18, 20)
    assert sizer.cap == 10
    # Just shrank: the new size is judged on enough rows before another shrink.
    sizer.observe(10, 9, 10)
    assert sizer.cap == 10
    for _ in range(SIZE_EVIDENCE_ROWS // 10):
        sizer.observe(10, 9, 10)
    assert sizer.cap == 5


def test_replies_sent_before_a_shrink_are_not_judged_again() -> None:
    sizer = BatchSizer(20)
    sizer.observe(20, 20, 20)
    sizer.observe(20, 20, 20)
    assert sizer.cap == 10
    sizer.observe(20, 20, 20)  # in flight when the cap fell
    assert sizer.cap == 10 and sizer.by_size[20] == [60, 60]
