"""Bounded overlap of slow calls, with results in input order (so output bytes never depend on
which call returns first)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["ordered_map"]

A = TypeVar("A")
B = TypeVar("B")


def ordered_map(fn: Callable[[A], B], items: Iterable[A], workers: int) -> Iterator[B]:
    """``map(fn, items)`` on ``workers`` threads, at most ``2 * workers`` items in flight.

    The first exception is raised at its item's turn; items not yet started are cancelled.
    """
    workers = max(1, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[B]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()
