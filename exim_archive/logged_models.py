"""Logged models (MLflow 3) and the runs' model inputs and outputs: the family's MLflow edge.

Pack reads every logged model of the selected experiments (params, tags, metrics, files) and the
model inputs and outputs of the archive's runs. Unpack creates each model again in the target
experiment (MLflow gives it a new ``model_id``; the source id is kept in the bookkeeping tag
``mlflow_exim.unpack.source_model_id``, by which a second unpack recognises it), uploads its
files, logs its metrics against the remapped run, sets the status, and links the runs' inputs and
outputs. A model left half-written by an interrupted unpack still carries
``mlflow_exim.unpack.incomplete``; the next unpack deletes it and makes it again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from .artifact_roots import files_under
from .families import PackScope, Rows, UnpackScope, compact_json, get_or_none
from .lineage import INCOMPLETE_TAG, PREFIX, object_source_tags
from .pages import iter_pages
from .records import ArtifactRecord
from .sink import KEY_LIMIT, RUN_TAG_VALUE_LIMIT, fit_tags

__all__ = [
    "SOURCE_MODEL_TAG",
    "download_model_artifacts",
    "read_logged_models",
    "write_logged_models",
]

SOURCE_MODEL_TAG = f"{PREFIX}.unpack.source_model_id"
_PAGE = 1000
_FIELDS = (
    "model_id",
    "experiment_id",
    "name",
    "model_type",
    "source_run_id",
    "status",
    "status_message",
    "artifact_location",
    "creation_timestamp",
    "last_updated_timestamp",
)


def _status(model: Any) -> str | None:
    status = model.status
    return None if status is None else str(getattr(status, "name", status))


def read_logged_models(scope: PackScope) -> Rows:
    """Every logged model of the selected experiments, and the runs' model inputs/outputs."""
    models: list[Any] = []
    for start in range(0, len(scope.experiment_ids), 100):
        ids = scope.experiment_ids[start : start + 100]
        what = f"listing logged models of experiments {', '.join(ids)}"
        for page in iter_pages(
            scope.call,
            what,
            scope.client.search_logged_models,
            experiment_ids=ids,
            max_results=_PAGE,
        ):
            models.extend(page)
    rows: Rows = defaultdict(list)
    for m in sorted(models, key=lambda m: m.model_id):
        raw = m.to_dictionary()
        raw.pop("metrics", None)
        rows["logged_models"].append(
            {
                "model_id": m.model_id,
                "experiment_id": str(m.experiment_id),
                "name": m.name,
                "model_type": m.model_type,
                "source_run_id": m.source_run_id,
                "status": _status(m),
                "status_message": m.status_message,
                "artifact_location": m.artifact_location,
                "creation_timestamp": m.creation_timestamp,
                "last_updated_timestamp": m.last_updated_timestamp,
                "source_json": compact_json(raw),
            }
        )
        for key, value in sorted(m.params.items()):
            rows["logged_model_params"].append({"model_id": m.model_id, "key": key, "value": value})
        for key, value in sorted(m.tags.items()):
            rows["logged_model_tags"].append({"model_id": m.model_id, "key": key, "value": value})
        for metric in m.metrics or []:
            rows["logged_model_metrics"].append(
                {
                    "model_id": m.model_id,
                    "key": metric.key,
                    "step": int(metric.step),
                    "timestamp": int(metric.timestamp),
                    "value": float(metric.value),
                    "run_id": metric.run_id,
                    "dataset_name": metric.dataset_name,
                    "dataset_digest": metric.dataset_digest,
                }
            )
    if models or scope.run_ids:
        rows["run_model_io"] = _model_io(scope, bool(models))
    return dict(rows)


def _model_io(scope: PackScope, any_models: bool) -> list[dict[str, Any]]:
    """The runs' model inputs and outputs. ``search_runs`` does not return model inputs, so
    each run is read once with ``get_run`` (only when the selection holds logged models, or a
    run's outputs name one)."""
    if not any_models:
        return []
    from .pool import ordered_map

    def one(run_id: str) -> list[dict[str, Any]]:
        run = scope.call(f"reading run {run_id}", lambda: scope.client.get_run(run_id))
        out = [
            {"run_id": run_id, "direction": "input", "model_id": m.model_id, "step": None}
            for m in (run.inputs.model_inputs if run.inputs else [])
        ]
        out += [
            {"run_id": run_id, "direction": "output", "model_id": m.model_id, "step": m.step}
            for m in (run.outputs.model_outputs if run.outputs else [])
        ]
        return out

    found: list[dict[str, Any]] = []
    for rows in ordered_map(one, sorted(scope.run_ids), scope.workers):
        found.extend(rows)
    # one row per (run, direction, model): MLflow may list a model output at several steps
    unique = {(r["run_id"], r["direction"], r["model_id"]): r for r in found}
    return [unique[k] for k in sorted(unique)]


def download_model_artifacts(
    scope: PackScope, model: dict[str, Any], destination: Path
) -> list[tuple[str, Path]]:
    """Download a logged model's files; returns (path, local file) sorted by path."""
    from mlflow.artifacts import download_artifacts

    location = model["artifact_location"]
    if not location:
        return []

    def listing() -> Any:
        return scope.client.list_logged_model_artifacts(model["model_id"])

    if not scope.call(f"listing files of logged model {model['model_id']}", listing):
        return []

    def download() -> Path:
        shutil.rmtree(destination, ignore_errors=True)
        destination.mkdir(parents=True)
        return Path(
            download_artifacts(
                artifact_uri=location, dst_path=str(destination), tracking_uri=scope.tracking_uri
            )
        )

    return files_under(
        scope.call(f"downloading files of logged model {model['model_id']}", download)
    )


# -- unpack ----------------------------------------------------------------------------------


def _existing(scope: UnpackScope, experiment_ids: Iterable[str]) -> dict[str, Any]:
    """Target logged models made by an earlier unpack, by source model id."""
    ids = sorted(set(experiment_ids))
    found: dict[str, Any] = {}
    for start in range(0, len(ids), 100):
        for page in iter_pages(
            scope.call,
            "listing logged models of the target",
            scope.client.search_logged_models,
            experiment_ids=ids[start : start + 100],
            filter_string=f"tags.`{SOURCE_MODEL_TAG}` != ''",
            max_results=_PAGE,
        ):
            for m in page:
                source_id = m.tags.get(SOURCE_MODEL_TAG)
                if source_id:
                    found[source_id] = m
    return found


def write_logged_models(
    scope: UnpackScope,
    rows: Rows,
    artifacts: list[ArtifactRecord],
    extract: Callable[[ArtifactRecord, Path], None],
) -> dict[str, int]:
    """Create the archive's logged models in the target (idempotent), then link run I/O."""
    from mlflow.entities import Metric

    models = rows.get("logged_models", [])
    by_model: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for table in ("logged_model_params", "logged_model_tags", "logged_model_metrics"):
        for row in rows.get(table, []):
            by_model[row["model_id"]][table].append(row)
    files: dict[str, list[ArtifactRecord]] = defaultdict(list)
    for art in artifacts:
        files[art.run_id].append(art)
    targets = [scope.experiments[m["experiment_id"]] for m in models]
    existing = _existing(scope, targets) if models else {}
    counts = {"logged_models_created": 0, "logged_models_skipped": 0}
    homes: list[str] = []
    for model in models:
        source_id = model["model_id"]
        found = existing.get(source_id)
        home = None if found is not None else _home(scope, model, by_model[source_id])
        if home is not None:
            scope.logged_models[source_id] = home.model_id
            scope.model_locations[source_id] = (model["artifact_location"], home.artifact_location)
            counts["logged_models_skipped"] += 1
            homes.append(source_id)
            continue
        if found is not None and INCOMPLETE_TAG not in found.tags:
            scope.logged_models[source_id] = found.model_id
            scope.model_locations[source_id] = (
                model["artifact_location"],
                found.artifact_location,
            )
            counts["logged_models_skipped"] += 1
            continue
        if found is not None:
            scope.call(
                f"removing half-written logged model {found.model_id}",
                partial(scope.client.delete_logged_model, found.model_id),
            )
        parts = by_model[source_id]
        made = _create(scope, model, parts["logged_model_params"], parts["logged_model_tags"])
        scope.logged_models[source_id] = made.model_id
        scope.model_locations[source_id] = (model["artifact_location"], made.artifact_location)
        if files.get(source_id):
            scratch = Path(tempfile.mkdtemp(prefix="exim-model-"))
            try:
                for art in files[source_id]:
                    extract(art, scratch / art.path)
                scope.call(
                    f"uploading files of logged model {made.model_id}",
                    partial(scope.client.log_model_artifacts, made.model_id, os.fspath(scratch)),
                )
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        by_run: dict[str, list[Any]] = defaultdict(list)
        for m in parts["logged_model_metrics"]:
            run_id = scope.runs.get(m["run_id"] or "")
            if run_id is None:
                scope.notes.append(
                    f"logged model {source_id}: metric {m['key']!r} belongs to run "
                    f"{m['run_id']} which is not in the archive: not written"
                )
                continue
            by_run[run_id].append(
                Metric(
                    m["key"],
                    m["value"],
                    m["timestamp"],
                    m["step"],
                    model_id=made.model_id,
                    dataset_name=m["dataset_name"],
                    dataset_digest=m["dataset_digest"],
                    run_id=run_id,
                )
            )
        for run_id, metrics in sorted(by_run.items()):
            for start in range(0, len(metrics), 1000):
                batch = metrics[start : start + 1000]
                scope.call(
                    f"logging metrics of logged model {made.model_id}",
                    partial(scope.client.log_batch, run_id, metrics=batch),
                )
        if model["status"] in ("READY", "FAILED"):
            status = model["status"]
            scope.call(
                f"finalizing logged model {made.model_id}",
                partial(scope.client.finalize_logged_model, made.model_id, status),
            )
        scope.call(
            f"finishing logged model {made.model_id}",
            partial(scope.client.delete_logged_model_tag, made.model_id, INCOMPLETE_TAG),
        )
        counts["logged_models_created"] += 1
    if homes:
        scope.notes.append(
            f"{len(homes)} logged model(s) (first: {homes[0]}, a copy of "
            f"{scope.logged_models[homes[0]]}) are copies of logged models of this target that no "
            "unpack made (the archive came back to its source): those are left as they are and "
            "stand for them"
        )
    counts["model_links"] = _link_runs(scope, rows.get("run_model_io", []))
    return counts


def _home(scope: UnpackScope, model: dict[str, Any], parts: dict[str, list[dict[str, Any]]]) -> Any:
    """The target logged model ``model`` was itself copied from, if it is in the target: the
    archive was packed from an earlier unpack's target and comes back to the source
    (A -> B -> A). It is the model its bookkeeping tag names, in the same experiment, made by no
    unpack."""
    origin = {t["key"]: t["value"] for t in parts["logged_model_tags"]}.get(SOURCE_MODEL_TAG)
    if not origin:
        return None
    found = get_or_none(
        scope,
        f"looking up logged model {origin}",
        partial(scope.client.get_logged_model, origin),
    )
    if found is None or SOURCE_MODEL_TAG in (found.tags or {}):
        return None
    return found if found.experiment_id == scope.experiments[model["experiment_id"]] else None


def _create(
    scope: UnpackScope,
    model: dict[str, Any],
    params: list[dict[str, Any]],
    tags: list[dict[str, Any]],
) -> Any:
    all_tags = {t["key"]: t["value"] for t in tags}
    if scope.origin is not None:
        all_tags.update(
            object_source_tags(
                {f: model[f] for f in _FIELDS},
                model["source_json"],
                tuple((k, v) for k, v in sorted(all_tags.items())),
                scope.origin,
            )
        )
    all_tags[SOURCE_MODEL_TAG] = model["model_id"]
    all_tags[INCOMPLETE_TAG] = "true"
    fitted = fit_tags(all_tags, RUN_TAG_VALUE_LIMIT, f"logged model {model['model_id']}")
    scope.notes.extend(fitted.notes)
    source_run = model["source_run_id"]
    new_run = scope.runs.get(source_run) if source_run else None
    if source_run and new_run is None:
        scope.notes.append(
            f"logged model {model['model_id']}: its source run {source_run} is not in the "
            "archive: created without a source run"
        )
    experiment_id = scope.experiments[model["experiment_id"]]
    return scope.call(
        f"creating logged model {model['name']!r} (source {model['model_id']})",
        lambda: scope.client.create_logged_model(
            experiment_id,
            name=model["name"],
            source_run_id=new_run,
            tags=fitted.tags,
            params={p["key"]: p["value"] for p in params if len(p["key"]) <= KEY_LIMIT},
            model_type=model["model_type"],
        ),
    )


def _link_runs(scope: UnpackScope, io_rows: list[dict[str, Any]]) -> int:
    """Log each run's model inputs and outputs against the target ids, those not there yet
    (creating a logged model with a source run already links it as the run's output)."""
    from mlflow.entities import LoggedModelInput, LoggedModelOutput

    inputs: dict[str, list[Any]] = defaultdict(list)
    outputs: dict[str, list[Any]] = defaultdict(list)
    linked = 0
    for row in io_rows:
        run_id = scope.runs.get(row["run_id"])
        model_id = scope.logged_models.get(row["model_id"])
        if run_id is None or model_id is None:
            scope.notes.append(
                f"run {row['run_id']}: model {row['direction']} {row['model_id']} is not in "
                "the archive: link not written"
            )
            continue
        if row["direction"] == "input":
            inputs[run_id].append(LoggedModelInput(model_id))
        else:
            outputs[run_id].append(LoggedModelOutput(model_id, row["step"] or 0))
        linked += 1
    for run_id in sorted(set(inputs) | set(outputs)):
        # MLflow keeps one row per link and refuses a second; skip what is already there
        run = scope.call(f"reading run {run_id}", partial(scope.client.get_run, run_id))
        have_in = {m.model_id for m in (run.inputs.model_inputs if run.inputs else [])}
        have_out = {m.model_id for m in (run.outputs.model_outputs if run.outputs else [])}
        inputs[run_id] = [m for m in inputs.get(run_id, []) if m.model_id not in have_in]
        outputs[run_id] = [m for m in outputs.get(run_id, []) if m.model_id not in have_out]
    for run_id, models in sorted(inputs.items()):
        if not models:
            continue
        scope.call(
            f"logging model inputs of run {run_id}",
            partial(scope.client.log_inputs, run_id, models=models),
        )
    for run_id, models in sorted(outputs.items()):
        if not models:
            continue
        scope.call(
            f"logging model outputs of run {run_id}",
            partial(scope.client.log_outputs, run_id, models),
        )
    return linked
