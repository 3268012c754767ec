"""The batch size shrinks only when smaller batches measurably fail less, and grows back."""

from __future__ import annotations

from llmframe._sizer import GROW_AFTER_ROWS, SIZE_EVIDENCE_ROWS, BatchSizer


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


def _shrink_to_10(sizer: BatchSizer) -> None:
    sizer.observe(20, 18, 20)
    sizer.observe(20, 18, 20)
    assert sizer.cap == 10


def test_the_size_grows_back_once_failures_stop_but_never_past_the_start() -> None:
    sizer = BatchSizer(20)
    _shrink_to_10(sizer)
    for _ in range(GROW_AFTER_ROWS // 10 - 1):
        sizer.observe(10, 0, 10)
    assert sizer.cap == 10, "not before GROW_AFTER_ROWS clean rows"
    sizer.observe(10, 0, 10)
    assert sizer.cap == 20
    for _ in range(50):
        sizer.observe(20, 0, 20)
    assert sizer.cap == 20, "the starting size is the ceiling"


def test_a_reply_that_fails_restarts_the_count_before_growing() -> None:
    sizer = BatchSizer(20)
    _shrink_to_10(sizer)
    for _ in range(GROW_AFTER_ROWS // 20):
        sizer.observe(10, 0, 10)
    sizer.observe(10, 5, 10)  # the average goes over GROW_BELOW: start counting again
    for _ in range(GROW_AFTER_ROWS // 10 - 1):
        sizer.observe(10, 0, 10)
    assert sizer.cap == 10


def test_a_size_that_fails_again_after_growing_waits_twice_as_long() -> None:
    sizer = BatchSizer(20)
    _shrink_to_10(sizer)
    for _ in range(GROW_AFTER_ROWS // 10):
        sizer.observe(10, 0, 10)
    assert sizer.cap == 20
    for _ in range(5):  # the model really cannot pack 20
        sizer.observe(20, 18, 20)
    assert sizer.cap == 10
    for _ in range(GROW_AFTER_ROWS // 10):
        sizer.observe(10, 0, 10)
    assert sizer.cap == 10, "the second try waits 2x GROW_AFTER_ROWS"
    for _ in range(GROW_AFTER_ROWS // 10):
        sizer.observe(10, 0, 10)
    assert sizer.cap == 20


def test_the_packing_check_sets_the_ceiling() -> None:
    sizer = BatchSizer(20)
    sizer.set_limit(5)
    assert (sizer.cap, sizer.limit) == (5, 5)
    for _ in range(100):
        sizer.observe(5, 0, 5)
    assert sizer.cap == 5
