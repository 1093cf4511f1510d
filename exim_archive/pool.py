"""Bounded overlap of slow calls, with results in input order (so output bytes never depend on
which call returns first)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["Stopped", "check_stop", "ordered_map"]

_STOP = threading.Event()


class Stopped(Exception):
    """Raised in a worker when the job is being stopped (Ctrl-C or another worker's failure)."""


def check_stop() -> None:
    """Called before each slow call: a stopping job starts no new work."""
    if _STOP.is_set():
        raise Stopped("stopped")


A = TypeVar("A")
B = TypeVar("B")


def ordered_map(fn: Callable[[A], B], items: Iterable[A], workers: int) -> Iterator[B]:
    """``map(fn, items)`` on ``workers`` threads, at most ``2 * workers`` items in flight.

    The first exception is raised at its item's turn; items not yet started are cancelled.
    """
    workers = max(1, workers)
    pool = ThreadPoolExecutor(max_workers=workers)
    pending: deque[Future[B]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BaseException:
        # Ctrl-C or a failed item: workers finish the call they are in and start no other.
        _STOP.set()
        raise
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        _STOP.clear()
