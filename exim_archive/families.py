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

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .lineage import Origin
from .manifest import canonical_json
from .mlflow_errors import Caller

__all__ = ["PackScope", "Rows", "UnpackScope", "compact_json", "iter_pages"]

Rows = dict[str, list[dict[str, Any]]]


def compact_json(value: Any) -> str:
    """The archive's JSON for a raw object (canonical: sorted keys, no spaces, no newline)."""
    return canonical_json(value).decode("utf-8").rstrip("\n")


def iter_pages(call: Caller, what: str, fn: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    """Each page of an MLflow paged listing (``fn(..., page_token=...)`` returning a PagedList),
    every call through ``call``; a page token the server repeats is an error, not a loop."""
    token: str | None = None
    seen: set[str] = set()
    while True:
        page = call(what, partial(fn, page_token=token, **kwargs))
        yield page
        token = page.token or None
        if token is None:
            return
        if token in seen:
            raise call.error(
                f"{what} failed: the server repeated page token {token[:40]!r}",
                where=call.where,
                hint=call.hint,
            )
        seen.add(token)


def loads_or_empty(text: str | None) -> Any:
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return {}


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
