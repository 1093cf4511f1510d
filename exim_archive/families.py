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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .lineage import Origin
from .manifest import canonical_json
from .mlflow_errors import Caller

__all__ = [
    "PackScope",
    "Rows",
    "UnpackScope",
    "compact_json",
    "get_or_none",
]

Rows = dict[str, list[dict[str, Any]]]


def compact_json(value: Any) -> str:
    """The archive's JSON for a raw object (canonical: sorted keys, no spaces, no newline)."""
    return canonical_json(value).decode("utf-8").rstrip("\n")


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
