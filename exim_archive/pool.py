"""Bounded overlap of slow calls, with results in input order (so output bytes never depend on
which call returns first)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["Stopped", "check_stop", "in_background", "ordered_map"]

_STOP = threading.Event()


class Stopped(Exception):
    """Raised in a worker when the job is being stopped (Ctrl-C or another worker's failure)."""


def check_stop() -> None:
    """Called before each slow call: a stopping job starts no new work."""
    if _STOP.is_set():
        raise Stopped("stopped")


A = TypeVar("A")
B = TypeVar("B")


def ordered_map(
    fn: Callable[[A], B], items: Iterable[A], workers: int, ahead: int | None = None
) -> Generator[B, None, None]:
    """``map(fn, items)`` on ``workers`` threads, at most ``ahead`` (default ``2 * workers``)
    items in flight.

    The first exception is raised at its item's turn; items not yet started are cancelled.
    """
    workers = max(1, workers)
    window = max(workers, ahead or 2 * workers)
    pool = ThreadPoolExecutor(max_workers=workers)
    pending: deque[Future[B]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except Stopped as stopped:
        # Another pool's failure stopped an item here: a later item may hold that failure
        # (a nested pool's error, raised by its worker), which then wins.
        _STOP.set()
        raise _cause(stopped, pending) from None
    except BaseException:
        # Ctrl-C or a failed item: workers finish the call they are in and start no other.
        _STOP.set()
        raise
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        _STOP.clear()


def _cause(stopped: Stopped, futures: Iterable[Future[B]]) -> BaseException:
    """The failure among ``futures`` (other than being stopped) that stopped the job, else
    ``stopped``: never an internal "stopped" where a real error (a dead server, say) exists.
    Futures not started are cancelled; running ones are waited for (they stop at their next
    call)."""
    for future in futures:
        if future.cancel():
            continue
        error = future.exception()
        if error is not None and not isinstance(error, Stopped):
            return error
    return stopped


@contextmanager
def in_background(fn: Callable[[], B]) -> Iterator[Callable[[], B]]:
    """``fn()`` on a thread of its own while the block goes on; the block gets a callable that
    waits for the result (and raises what ``fn`` raised). Leaving the block by an exception
    (a failure, Ctrl-C) stops the calls ``fn`` has not started and waits for its thread."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn)
    try:
        yield future.result
        future.result()  # a failure the block did not wait for is not lost
    except Stopped as stopped:
        # The background work failed and stopped the block's pool before the block asked
        # for its result: that failure is what the caller must see.
        _STOP.set()
        raise _cause(stopped, [future]) from None
    except BaseException:
        _STOP.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _STOP.clear()
