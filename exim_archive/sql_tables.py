"""MLflow's tables that the direct SQL writers touch, as SQLAlchemy Core names only.

The writers (:mod:`.sql_run_writer`, :mod:`.sql_point_writer`, :mod:`.sql_target`) build
statements on these instead of MLflow's ORM models, so a write never imports MLflow (importing
``mlflow.store.tracking.dbmodels`` costs ~2.4 s here). Names only, no types: every value bound
is already what the column stores (str, int, float, bool), and the drivers adapt those. The
columns are those of the revisions in :data:`.sql_metrics.TESTED_REVISIONS`.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "DATASETS",
    "EXPERIMENTS",
    "EXPERIMENT_TAGS",
    "INPUTS",
    "INPUT_TAGS",
    "LATEST_METRICS",
    "PARAMS",
    "REGISTERED_MODELS",
    "REGISTERED_MODEL_TAGS",
    "RUNS",
    "TAGS",
]


def _table(name: str, *columns: str) -> sa.TableClause:
    return sa.table(name, *(sa.column(c) for c in columns))


EXPERIMENTS = _table(
    "experiments",
    "experiment_id",
    "name",
    "artifact_location",
    "lifecycle_stage",
    "creation_time",
    "last_update_time",
    "workspace",
)
EXPERIMENT_TAGS = _table("experiment_tags", "key", "value", "experiment_id")
RUNS = _table(
    "runs",
    "run_uuid",
    "name",
    "source_type",
    "source_name",
    "entry_point_name",
    "user_id",
    "status",
    "start_time",
    "end_time",
    "deleted_time",
    "source_version",
    "lifecycle_stage",
    "artifact_uri",
    "experiment_id",
)
TAGS = _table("tags", "key", "value", "run_uuid")
PARAMS = _table("params", "key", "value", "run_uuid")
LATEST_METRICS = _table("latest_metrics", "key", "value", "timestamp", "step", "is_nan", "run_uuid")
DATASETS = _table(
    "datasets",
    "dataset_uuid",
    "experiment_id",
    "name",
    "digest",
    "dataset_source_type",
    "dataset_source",
    "dataset_schema",
    "dataset_profile",
)
INPUTS = _table(
    "inputs", "input_uuid", "source_type", "source_id", "destination_type", "destination_id", "step"
)
INPUT_TAGS = _table("input_tags", "input_uuid", "name", "value")
REGISTERED_MODELS = _table(
    "registered_models", "name", "creation_time", "last_updated_time", "description", "workspace"
)
REGISTERED_MODEL_TAGS = _table("registered_model_tags", "key", "value", "name", "workspace")
