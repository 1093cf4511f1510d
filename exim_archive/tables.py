"""The tables of format 1.0: names, Arrow schemas, keys and sort orders.

This module is the code's copy of ``spec/1.0/tables.json``; a test keeps the two equal. Every
Parquet file carries ``exim.table`` and ``exim.schema_version`` in its key-value metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

__all__ = ["METRICS", "TABLES", "TableSpec", "schema_to_json"]

SCHEMA_VERSION = "1.0"


@dataclass(frozen=True)
class TableSpec:
    """One table of the archive."""

    name: str
    schema: pa.Schema
    primary_key: tuple[str, ...]
    sort_key: tuple[str, ...]
    references: tuple[tuple[str, str, str], ...] = ()
    """(column, table, column): each value must exist in the referenced table's column."""

    @property
    def member(self) -> str:
        return f"tables/{self.name}.parquet"


def _s(name: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, pa.string(), nullable=nullable)


def _i(name: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, pa.int64(), nullable=nullable)


_RUN_REF = (("run_id", "runs", "run_id"),)

EXPERIMENTS = TableSpec(
    "experiments",
    pa.schema(
        [
            _s("experiment_id"),
            _s("name"),
            _s("artifact_location", True),
            _s("lifecycle_stage"),
            _i("creation_time", True),
            _i("last_update_time", True),
            _s("source_json"),
        ]
    ),
    primary_key=("experiment_id",),
    sort_key=("experiment_id",),
)
EXPERIMENT_TAGS = TableSpec(
    "experiment_tags",
    pa.schema([_s("experiment_id"), _s("key"), _s("value")]),
    primary_key=("experiment_id", "key"),
    sort_key=("experiment_id", "key"),
    references=(("experiment_id", "experiments", "experiment_id"),),
)
RUNS = TableSpec(
    "runs",
    pa.schema(
        [
            _s("run_id"),
            _s("experiment_id"),
            _s("run_name", True),
            _s("user_id", True),
            _s("status"),
            _i("start_time", True),
            _i("end_time", True),
            _s("lifecycle_stage"),
            _s("artifact_uri", True),
            _s("source_json"),
        ]
    ),
    primary_key=("run_id",),
    sort_key=("run_id",),
    references=(("experiment_id", "experiments", "experiment_id"),),
)
RUN_PARAMS = TableSpec(
    "run_params",
    pa.schema([_s("run_id"), _s("key"), _s("value")]),
    primary_key=("run_id", "key"),
    sort_key=("run_id", "key"),
    references=_RUN_REF,
)
RUN_TAGS = TableSpec(
    "run_tags",
    pa.schema([_s("run_id"), _s("key"), _s("value")]),
    primary_key=("run_id", "key"),
    sort_key=("run_id", "key"),
    references=_RUN_REF,
)
DATASET_INPUTS = TableSpec(
    "dataset_inputs",
    pa.schema(
        [
            _s("run_id"),
            _s("dataset_name"),
            _s("dataset_digest"),
            _s("source_type"),
            _s("source"),
            _s("schema", True),
            _s("profile", True),
        ]
    ),
    primary_key=("run_id", "dataset_name", "dataset_digest"),
    sort_key=("run_id", "dataset_name", "dataset_digest"),
    references=_RUN_REF,
)
DATASET_INPUT_TAGS = TableSpec(
    "dataset_input_tags",
    pa.schema([_s("run_id"), _s("dataset_name"), _s("dataset_digest"), _s("key"), _s("value")]),
    primary_key=("run_id", "dataset_name", "dataset_digest", "key"),
    sort_key=("run_id", "dataset_name", "dataset_digest", "key"),
    references=_RUN_REF,
)
METRICS = TableSpec(
    "metrics",
    pa.schema(
        [
            _s("run_id"),
            _s("key"),
            _i("step"),
            _i("timestamp"),
            pa.field("value", pa.float64(), nullable=False),
        ]
    ),
    primary_key=(),
    sort_key=("run_id", "key", "step", "timestamp", "value"),
    references=_RUN_REF,
)
ARTIFACTS = TableSpec(
    "artifacts",
    pa.schema(
        [
            _s("run_id"),
            _s("path"),
            _i("size"),
            _s("sha256"),
            _s("member"),
            _s("compression"),
        ]
    ),
    primary_key=("run_id", "path"),
    sort_key=("run_id", "path"),
    references=_RUN_REF,
)

TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in (
        EXPERIMENTS,
        EXPERIMENT_TAGS,
        RUNS,
        RUN_PARAMS,
        RUN_TAGS,
        DATASET_INPUTS,
        DATASET_INPUT_TAGS,
        METRICS,
        ARTIFACTS,
    )
}

_TYPE_NAMES = {pa.string(): "string", pa.int64(): "int64", pa.float64(): "double"}


def schema_to_json() -> dict[str, object]:
    """The tables as the plain data that ``spec/1.0/tables.json`` holds."""
    return {
        "schema_version": SCHEMA_VERSION,
        "tables": {
            spec.name: {
                "columns": [
                    {"name": f.name, "type": _TYPE_NAMES[f.type], "nullable": f.nullable}
                    for f in spec.schema
                ],
                "primary_key": list(spec.primary_key),
                "sort_key": list(spec.sort_key),
                "references": [
                    {"column": c, "table": t, "table_column": tc} for c, t, tc in spec.references
                ],
            }
            for spec in TABLES.values()
        },
    }
