"""MLflow's paged listings, read page by page, every call through a :class:`.Caller`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, TypeVar

from .mlflow_errors import Caller

__all__ = ["iter_pages", "iter_token_pages"]

P = TypeVar("P")


def iter_token_pages(
    call: Caller, what: str, fetch: Callable[[str | None], tuple[P, str | None]]
) -> Iterator[P]:
    """Each page of a paged listing, every call through ``call``: ``fetch(token)`` returns a
    page and the next token (None at the end). A token the server repeats is an error, not a
    loop."""
    token: str | None = None
    seen: set[str] = set()
    while True:
        page, token = call(what, partial(fetch, token))
        yield page
        if token is None:
            return
        if token in seen:
            raise call.error(
                f"{what} failed: the server repeated page token {token[:40]!r}",
                where=call.where,
                hint=call.hint,
            )
        seen.add(token)


def iter_pages(call: Caller, what: str, fn: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    """Each page of an MLflow paged listing (``fn(..., page_token=...)`` returning a PagedList)."""

    def fetch(token: str | None) -> tuple[Any, str | None]:
        page = fn(page_token=token, **kwargs)
        return page, page.token or None

    return iter_token_pages(call, what, fetch)
