"""Plain records: what the archive holds, free of MLflow types.

The source turns MLflow entities into these; the bundle writer turns them into table rows; the
bundle reader turns rows back into them; the sink turns them into MLflow calls. Metric points are
too many for objects and travel as Arrow tables with the ``metrics`` table's columns instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ArtifactRecord",
    "DatasetInputRecord",
    "ExperimentRecord",
    "RunRecord",
    "Tags",
]

Tags = tuple[tuple[str, str], ...]
"""Key/value pairs sorted by key; the order is part of the record's identity."""


@dataclass(frozen=True)
class ExperimentRecord:
    """An experiment with every raw field the source returned."""

    experiment_id: str
    name: str
    artifact_location: str | None
    lifecycle_stage: str
    creation_time: int | None
    last_update_time: int | None
    tags: Tags = ()
    source_json: str = "{}"

    @property
    def deleted(self) -> bool:
        return self.lifecycle_stage == "deleted"


@dataclass(frozen=True)
class DatasetInputRecord:
    """One dataset a run logged as input, with the input's tags (e.g. ``mlflow.data.context``)."""

    name: str
    digest: str
    source_type: str
    source: str
    schema: str | None
    profile: str | None
    tags: Tags = ()


@dataclass(frozen=True)
class RunRecord:
    """A run: every RunInfo field, params, tags and dataset inputs (metrics travel separately)."""

    run_id: str
    experiment_id: str
    run_name: str | None
    user_id: str | None
    status: str
    start_time: int | None
    end_time: int | None
    lifecycle_stage: str
    artifact_uri: str | None
    params: Tags = ()
    tags: Tags = ()
    inputs: tuple[DatasetInputRecord, ...] = ()
    metric_keys: tuple[str, ...] = field(default=(), compare=False)
    metric_last_steps: tuple[int, ...] = field(default=(), compare=False)
    """The step of each key's latest point (same order as ``metric_keys``): a size hint."""
    source_json: str = "{}"
    metric_points: int = field(default=0, compare=False)
    """Metric points an archive holds of the run (set by the archive reader; 0 elsewhere)."""

    @property
    def deleted(self) -> bool:
        return self.lifecycle_stage == "deleted"

    @property
    def size_hint(self) -> int:
        """Points the run's histories hold if steps count up from 0 (its latest step per key)."""
        return sum(max(1, step + 1) for step in self.metric_last_steps)


@dataclass(frozen=True)
class ArtifactRecord:
    """One artifact file of a run, and the archive member holding its bytes."""

    run_id: str
    path: str
    size: int
    sha256: str
    member: str
    compression: str
