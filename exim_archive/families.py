"""What every object family past experiments and runs gets from pack and unpack.

Format 1.1 adds families (the model registry and prompts, logged models, traces, evaluation
datasets). Each lives in its own module, which is that family's MLflow edge in both directions:

* ``read_<family>(scope: PackScope) -> Rows``: the family's table rows, plain values only;
* ``write_<family>(scope: UnpackScope, rows: Rows) -> dict[str, int]``: create in the target what
  is not there yet (idempotent: a second unpack creates nothing), every reference remapped
  through the scope's id maps; returns counts for the report.

Rows are ``{table name: [row dict, ...]}`` with the columns of :mod:`exim_archive.tables`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from .lineage import Origin
from .manifest import canonical_json
from .mlflow_errors import Caller

__all__ = [
    "PackScope",
    "Rows",
    "UnpackScope",
    "compact_json",
    "get_or_none",
    "iter_pages",
    "iter_token_pages",
]

Rows = dict[str, list[dict[str, Any]]]
P = TypeVar("P")


def compact_json(value: Any) -> str:
    """The archive's JSON for a raw object (canonical: sorted keys, no spaces, no newline)."""
    return canonical_json(value).decode("utf-8").rstrip("\n")


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


@dataclass
class PackScope:
    """What a family's reader may use: the source client and what the selection holds."""

    client: Any
    """An ``mlflow.MlflowClient`` for the source."""
    call: Caller
    tracking_uri: str
    experiment_ids: list[str]
    """The selected experiments (deleted ones included)."""
    run_ids: frozenset[str]
    """Every run in the archive."""
    everything: bool
    """True without ``--experiment``: the whole server is packed (e.g. every registered model)."""
    notes: list[str] = field(default_factory=list)
    workers: int = 4


@dataclass
class UnpackScope:
    """What a family's writer may use: the target client and the source -> target id maps."""

    client: Any
    """An ``mlflow.MlflowClient`` for the target."""
    call: Caller
    tracking_uri: str
    experiments: Mapping[str, str]
    runs: Mapping[str, str]
    """Source run id -> target run id, for every run of the archive."""
    run_artifact_uris: Mapping[str, tuple[str | None, str | None]] = field(default_factory=dict)
    """Source run id -> (source artifact URI, target artifact URI)."""
    logged_models: dict[str, str] = field(default_factory=dict)
    """Source model id -> target model id; filled by the logged-models writer."""
    model_locations: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    """Source model id -> (source artifact location, target artifact location)."""
    origin: Origin | None = None
    """Set with ``--import-source-tags``: write ``mlflow_exim.*`` lineage tags."""
    notes: list[str] = field(default_factory=list)
    workers: int = 4


def get_or_none(scope: UnpackScope, what: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` through the scope's caller, or None when the target says the object does not
    exist."""

    def attempt() -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return fn()
        except MlflowException as exc:
            if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    return scope.call(what, attempt)
