"""The bounded pools: order kept, look-ahead bounded, background work stopped with its caller."""

from __future__ import annotations

import threading
import time

import pytest

from exim_archive.pool import check_stop, in_background, ordered_map


def test_ordered_map_keeps_order_and_looks_ahead_as_far_as_asked() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        time.sleep(0.01 * (i % 3))
        return i * i

    results = ordered_map(work, range(40), workers=2, ahead=10)
    assert next(results) == 0
    time.sleep(0.5)  # the pool runs what was submitted: ten items, none past them
    assert sorted(started) == list(range(10))
    assert list(results) == [i * i for i in range(1, 40)]


def test_in_background_gives_the_result_and_a_failure_not_waited_for() -> None:
    with in_background(lambda: 42) as result:
        assert result() == 42

    def fail() -> int:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"), in_background(fail):
        pass


def test_leaving_the_block_by_an_error_stops_the_background_work() -> None:
    calls = 0

    def slow() -> None:
        nonlocal calls
        while True:  # a long read: a slow call at a time, each after check_stop
            check_stop()
            calls += 1
            time.sleep(0.01)

    started = time.perf_counter()
    with pytest.raises(KeyError), in_background(slow):
        time.sleep(0.05)
        raise KeyError("the caller failed")
    assert time.perf_counter() - started < 5 and calls >= 1
    check_stop()  # the stop does not outlive the block
