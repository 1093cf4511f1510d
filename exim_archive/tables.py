"""The tables of format 1.1: names, Arrow schemas, keys and sort orders.

This module is the code's copy of ``spec/1.1/tables.json``; a test keeps the two equal. Tables
marked ``since="1.1"`` (the model registry, logged models, traces, prompts and evaluation
datasets) are absent from 1.0 archives, which read as if they were empty. Every
Parquet file carries ``exim.table`` and ``exim.schema_version`` in its key-value metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

__all__ = [
    "METRICS",
    "METRIC_POINTS",
    "RUN_ID_DICT",
    "TABLES",
    "TableSpec",
    "pylist",
    "schema_to_json",
]

SCHEMA_VERSION = "1.1"


@dataclass(frozen=True)
class TableSpec:
    """One table of the archive."""

    name: str
    schema: pa.Schema
    primary_key: tuple[str, ...]
    sort_key: tuple[str, ...]
    references: tuple[tuple[str, str, str], ...] = ()
    """(column, table, column): each value must exist in the referenced table's column."""
    since: str = "1.0"
    """The format version that introduced the table; older archives do not have it."""

    @property
    def member(self) -> str:
        return f"tables/{self.name}.parquet"


def _s(name: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, pa.string(), nullable=nullable)


def _i(name: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, pa.int64(), nullable=nullable)


def _kv(owner: tuple[str, ...], table: str, since: str = "1.1") -> TableSpec:
    """A key/value table (tags, params, metadata) of the objects in ``owner``'s table."""
    first = owner[0]
    return TableSpec(
        "",
        pa.schema([*(_i(c) if c == "version" else _s(c) for c in owner), _s("key"), _s("value")]),
        primary_key=(*owner, "key"),
        sort_key=(*owner, "key"),
        references=((first, table, first),),
        since=since,
    )


def _named(name: str, spec: TableSpec) -> TableSpec:
    return TableSpec(
        name, spec.schema, spec.primary_key, spec.sort_key, spec.references, spec.since
    )


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
RUN_ID_DICT = pa.dictionary(pa.int32(), pa.string())
"""Run ids in memory: dictionary-encoded (4 bytes a point instead of ~36; a history has one)."""
METRIC_POINTS = METRICS.schema.set(0, pa.field("run_id", RUN_ID_DICT, nullable=False))
"""Metric points as sources hand them to the bundle writer: the ``metrics`` columns with run ids
dictionary-encoded (the writer writes them as plain strings)."""
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

# -- 1.1: the model registry (prompts are registered models of kind "prompt") ---------------

REGISTERED_MODELS = TableSpec(
    "registered_models",
    pa.schema(
        [
            _s("name"),
            _s("kind"),
            _s("description", True),
            _i("creation_timestamp", True),
            _i("last_updated_timestamp", True),
            _s("user_id", True),
            _s("source_json"),
        ]
    ),
    primary_key=("name",),
    sort_key=("name",),
    since="1.1",
)
_MODEL_REF = (("name", "registered_models", "name"),)
REGISTERED_MODEL_TAGS = _named("registered_model_tags", _kv(("name",), "registered_models"))
REGISTERED_MODEL_ALIASES = TableSpec(
    "registered_model_aliases",
    pa.schema([_s("name"), _s("alias"), _i("version")]),
    primary_key=("name", "alias"),
    sort_key=("name", "alias"),
    references=_MODEL_REF,
    since="1.1",
)
MODEL_VERSIONS = TableSpec(
    "model_versions",
    pa.schema(
        [
            _s("name"),
            _i("version"),
            _s("description", True),
            _s("source", True),
            _s("run_id", True),
            _s("run_scope"),
            _s("run_link", True),
            _s("model_id", True),
            _s("model_scope"),
            _s("current_stage", True),
            _s("status", True),
            _s("status_message", True),
            _s("user_id", True),
            _i("creation_timestamp", True),
            _i("last_updated_timestamp", True),
            _s("source_json"),
        ]
    ),
    primary_key=("name", "version"),
    sort_key=("name", "version"),
    references=_MODEL_REF,
    since="1.1",
)
MODEL_VERSION_TAGS = _named("model_version_tags", _kv(("name", "version"), "registered_models"))

# -- 1.1: logged models (MLflow 3) and the runs' model inputs and outputs --------------------

_LOGGED_MODEL_REF = (("model_id", "logged_models", "model_id"),)
LOGGED_MODELS = TableSpec(
    "logged_models",
    pa.schema(
        [
            _s("model_id"),
            _s("experiment_id"),
            _s("name"),
            _s("model_type", True),
            _s("source_run_id", True),
            _s("status", True),
            _s("status_message", True),
            _s("artifact_location", True),
            _i("creation_timestamp", True),
            _i("last_updated_timestamp", True),
            _s("source_json"),
        ]
    ),
    primary_key=("model_id",),
    sort_key=("model_id",),
    references=(("experiment_id", "experiments", "experiment_id"),),
    since="1.1",
)
LOGGED_MODEL_PARAMS = _named("logged_model_params", _kv(("model_id",), "logged_models"))
LOGGED_MODEL_TAGS = _named("logged_model_tags", _kv(("model_id",), "logged_models"))
LOGGED_MODEL_METRICS = TableSpec(
    "logged_model_metrics",
    pa.schema(
        [
            _s("model_id"),
            _s("key"),
            _i("step"),
            _i("timestamp"),
            pa.field("value", pa.float64(), nullable=False),
            _s("run_id", True),
            _s("dataset_name", True),
            _s("dataset_digest", True),
        ]
    ),
    primary_key=(),
    sort_key=("model_id", "key", "step", "timestamp", "value"),
    references=_LOGGED_MODEL_REF,
    since="1.1",
)
LOGGED_MODEL_ARTIFACTS = TableSpec(
    "logged_model_artifacts",
    pa.schema(
        [_s("model_id"), _s("path"), _i("size"), _s("sha256"), _s("member"), _s("compression")]
    ),
    primary_key=("model_id", "path"),
    sort_key=("model_id", "path"),
    references=_LOGGED_MODEL_REF,
    since="1.1",
)
RUN_MODEL_IO = TableSpec(
    "run_model_io",
    pa.schema([_s("run_id"), _s("direction"), _s("model_id"), _i("step", True)]),
    primary_key=("run_id", "direction", "model_id"),
    sort_key=("run_id", "direction", "model_id"),
    references=_RUN_REF,
    since="1.1",
)

# -- 1.1: traces (MLflow 3 GenAI) ------------------------------------------------------------

_TRACE_REF = (("trace_id", "traces", "trace_id"),)
TRACES = TableSpec(
    "traces",
    pa.schema(
        [
            _s("trace_id"),
            _s("experiment_id"),
            _i("request_time", True),
            _i("execution_duration", True),
            _s("state", True),
            _s("request_preview", True),
            _s("response_preview", True),
            _s("client_request_id", True),
            _s("source_json"),
        ]
    ),
    primary_key=("trace_id",),
    sort_key=("trace_id",),
    references=(("experiment_id", "experiments", "experiment_id"),),
    since="1.1",
)
TRACE_TAGS = _named("trace_tags", _kv(("trace_id",), "traces"))
TRACE_METADATA = _named("trace_metadata", _kv(("trace_id",), "traces"))
SPANS = TableSpec(
    "spans",
    pa.schema(
        [
            _s("trace_id"),
            _s("span_id"),
            _s("parent_span_id", True),
            _s("name", True),
            _i("start_time_ns", True),
            _i("end_time_ns", True),
            _s("source_json"),
        ]
    ),
    primary_key=("trace_id", "span_id"),
    sort_key=("trace_id", "span_id"),
    references=_TRACE_REF,
    since="1.1",
)
ASSESSMENTS = TableSpec(
    "assessments",
    pa.schema(
        [
            _s("assessment_id"),
            _s("trace_id"),
            _s("name", True),
            _s("span_id", True),
            _s("run_id", True),
            _s("source_json"),
        ]
    ),
    primary_key=("assessment_id",),
    sort_key=("trace_id", "assessment_id"),
    references=_TRACE_REF,
    since="1.1",
)
TRACE_RUNS = TableSpec(
    "trace_runs",
    pa.schema([_s("trace_id"), _s("run_id")]),
    primary_key=("trace_id", "run_id"),
    sort_key=("trace_id", "run_id"),
    references=_TRACE_REF,
    since="1.1",
)

# -- 1.1: evaluation datasets (MLflow 3 GenAI) -----------------------------------------------

_DATASET_REF = (("dataset_id", "evaluation_datasets", "dataset_id"),)
EVALUATION_DATASETS = TableSpec(
    "evaluation_datasets",
    pa.schema(
        [
            _s("dataset_id"),
            _s("name"),
            _s("digest", True),
            _s("schema", True),
            _s("profile", True),
            _i("created_time", True),
            _i("last_update_time", True),
            _s("created_by", True),
            _s("last_updated_by", True),
            _s("source_json"),
        ]
    ),
    primary_key=("dataset_id",),
    sort_key=("dataset_id",),
    since="1.1",
)
EVALUATION_DATASET_TAGS = _named(
    "evaluation_dataset_tags", _kv(("dataset_id",), "evaluation_datasets")
)
EVALUATION_DATASET_EXPERIMENTS = TableSpec(
    "evaluation_dataset_experiments",
    pa.schema([_s("dataset_id"), _s("experiment_id")]),
    primary_key=("dataset_id", "experiment_id"),
    sort_key=("dataset_id", "experiment_id"),
    references=_DATASET_REF,
    since="1.1",
)
EVALUATION_DATASET_RECORDS = TableSpec(
    "evaluation_dataset_records",
    pa.schema(
        [
            _s("dataset_id"),
            _s("record_id"),
            _s("inputs", True),
            _s("outputs", True),
            _s("expectations", True),
            _s("tags", True),
            _s("source", True),
            _i("created_time", True),
            _i("last_update_time", True),
            _s("source_json"),
        ]
    ),
    primary_key=("dataset_id", "record_id"),
    sort_key=("dataset_id", "record_id"),
    references=_DATASET_REF,
    since="1.1",
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
        REGISTERED_MODELS,
        REGISTERED_MODEL_TAGS,
        REGISTERED_MODEL_ALIASES,
        MODEL_VERSIONS,
        MODEL_VERSION_TAGS,
        LOGGED_MODELS,
        LOGGED_MODEL_PARAMS,
        LOGGED_MODEL_TAGS,
        LOGGED_MODEL_METRICS,
        LOGGED_MODEL_ARTIFACTS,
        RUN_MODEL_IO,
        TRACES,
        TRACE_TAGS,
        TRACE_METADATA,
        SPANS,
        ASSESSMENTS,
        TRACE_RUNS,
        EVALUATION_DATASETS,
        EVALUATION_DATASET_TAGS,
        EVALUATION_DATASET_EXPERIMENTS,
        EVALUATION_DATASET_RECORDS,
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
                "since": spec.since,
            }
            for spec in TABLES.values()
        },
    }


def pylist(column: pa.Array | pa.ChunkedArray) -> list[Any]:
    """A column's values as Python objects; a dictionary-encoded one decoded through its
    dictionary (Arrow's own ``to_pylist`` spends ~1 µs a value on those: a second per 800,000
    metric keys written)."""
    out: list[Any] = []
    if not pa.types.is_dictionary(column.type):
        out.extend(column.to_pylist())
        return out
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for chunk in chunks:
        if chunk.null_count:
            out.extend(chunk.to_pylist())
            continue
        words = chunk.dictionary.to_pylist()
        out.extend([words[i] for i in chunk.indices.to_numpy(zero_copy_only=False).tolist()])
    return out
