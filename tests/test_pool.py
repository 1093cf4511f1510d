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


def _stopped_when_told() -> None:
    """A slow call that only ends when the job is being stopped (raising Stopped)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        check_stop()
        time.sleep(0.005)
    raise AssertionError("never stopped")


def _fails_in_a_pool_of_its_own() -> list[int]:
    """A failure raised through an inner pool, which stops every pool of the job while it
    waits for its other call in flight."""

    def work(i: int) -> int:
        if i == 0:
            time.sleep(0.05)
            raise ValueError("the server is gone")
        time.sleep(0.5)
        return i

    return list(ordered_map(work, [0, 1], workers=2))


def test_a_real_failure_wins_over_the_stop_it_caused_elsewhere() -> None:
    """A pool stopped by another pool's failure raises that failure, not its own "stopped"
    (seen as pack's "internal error: stopped" when the server died during a download)."""
    failed = pytest.raises(ValueError, match="the server is gone")
    with failed, in_background(_fails_in_a_pool_of_its_own):  # the background work failed
        for _ in ordered_map(lambda _i: _stopped_when_told(), [0, 1], workers=2):
            pass

    def item(i: int) -> object:  # item 0 waits; item 1 fails through a nested pool
        return _stopped_when_told() if i == 0 else _fails_in_a_pool_of_its_own()

    with pytest.raises(ValueError, match="the server is gone"):
        list(ordered_map(item, [0, 1], workers=2))
    assert list(ordered_map(lambda i: i, [1, 2], workers=2)) == [1, 2]  # stop flag cleared
