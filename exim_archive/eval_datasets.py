"""The evaluation-datasets family: MLflow 3 GenAI datasets (``/api/3.0/mlflow/datasets``) read
from the source into four tables and written back into the target.

* pack: every dataset linked to a selected experiment (the whole server's with ``everything``),
  with its tags, all of its experiment links (those outside the selection too) and its records;
* unpack: each dataset is created once, linked to the target ids of its experiments (links to
  experiments outside the archive are dropped with a note), then its records are upserted.

A dataset unpacked once carries the tag ``mlflow_exim.unpack.source_dataset_id`` (the source
dataset id); a later unpack finds it by that tag, creates nothing, adds the experiment links and
the records (by inputs, MLflow's own dedup key) that are still missing, and never re-tags it.
Dataset and record ids, times, digest, schema, profile and ``last_updated_by`` are made anew by
the target; the archive keeps the originals (``source_json``, lineage tags).

Records, experiment links and the create call go through the client's tracking store: MLflow has
no ``MlflowClient`` method for records or links, and the entity's own ``records``,
``experiment_ids`` and ``merge_records`` use the process-wide tracking URI, not the client's.
``MlflowClient.create_dataset`` and ``EvaluationDataset.merge_records`` also add the caller's
``mlflow.user`` where the tags lack it; the store calls write the archive's tags exactly.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from .families import PackScope, Rows, UnpackScope, compact_json
from .lineage import PREFIX, _fields, _system_tags
from .mlflow_errors import Caller
from .pages import iter_token_pages
from .pool import ordered_map
from .sink import fit_tags

__all__ = ["SOURCE_DATASET_TAG", "read_eval_datasets", "write_eval_datasets"]

SOURCE_DATASET_TAG = f"{PREFIX}.unpack.source_dataset_id"
"""On every unpacked dataset: the source dataset id. How a re-run recognises what is there."""

DATASET_TAG_VALUE_LIMIT = 5000
"""MLflow 3.17 checks no dataset tag limits in its API; its tables hold keys of 255 and values of
5,000 characters (PostgreSQL and MySQL refuse longer ones, SQLite does not). Keys follow the
other families' limit (``KEY_LIMIT``, 250)."""

PAGE = 1000
"""Datasets per search page, and records per ``GetDatasetRecords`` page (the server's default)."""
EXPERIMENTS_PER_SEARCH = 100
RECORDS_PER_BATCH = 200
BATCH_CHARS = 4_000_000
"""An upsert carries at most this much record JSON (one larger record goes alone)."""

_TABLES = (
    "evaluation_datasets",
    "evaluation_dataset_tags",
    "evaluation_dataset_experiments",
    "evaluation_dataset_records",
)
_KEYS = {
    "evaluation_datasets": ("dataset_id",),
    "evaluation_dataset_tags": ("dataset_id", "key"),
    "evaluation_dataset_experiments": ("dataset_id", "experiment_id"),
    "evaluation_dataset_records": ("dataset_id", "record_id"),
}
_FIELDS = (
    "dataset_id",
    "name",
    "digest",
    "schema",
    "profile",
    "created_time",
    "last_update_time",
    "created_by",
    "last_updated_by",
)
_SOURCE_HINT = "check the source server, then run pack again"


def _store(client: Any) -> Any:
    """The tracking store behind ``client`` (REST or SQL); see the module docstring for why."""
    return client._tracking_client.store


def _unsupported(call: Caller, client: Any) -> str | None:
    """Why the server cannot hold evaluation datasets, or None when it can."""

    def probe() -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            client.search_datasets(max_results=1)
        except NotImplementedError:
            return "its store has no evaluation datasets (they need a SQL database backend)"
        except MlflowException as exc:
            if exc.error_code == "FEATURE_DISABLED":  # a file store, directly or behind a server
                return "its store has no evaluation datasets (they need a SQL database backend)"
            if exc.error_code == "ENDPOINT_NOT_FOUND":
                return "the server has no evaluation-dataset API (MLflow 3.4 or newer has it)"
            raise
        return None

    return call("checking for evaluation datasets", probe)


def _pages(
    call: Caller, what: str, fetch: Callable[[str | None], tuple[list[Any], str | None]]
) -> list[Any]:
    """Every item of a paged listing; ``fetch(token)`` returns one page and the next token."""
    return [item for page in iter_token_pages(call, what, fetch) for item in page]


def _search_page(
    client: Any, experiment_ids: list[str] | None, token: str | None
) -> tuple[list[Any], str | None]:
    # Oldest first: a dataset created while we page lands on the last page, not between pages.
    page = client.search_datasets(
        experiment_ids=experiment_ids,
        max_results=PAGE,
        order_by=["created_time ASC"],
        page_token=token,
    )
    return list(page), page.token or None


def _all_datasets(call: Caller, client: Any, experiment_ids: list[str] | None) -> list[Any]:
    """The datasets linked to any of ``experiment_ids`` (None: all), each once, oldest first."""
    chunks: list[list[str] | None] = (
        [None]
        if experiment_ids is None
        else [
            experiment_ids[i : i + EXPERIMENTS_PER_SEARCH]
            for i in range(0, len(experiment_ids), EXPERIMENTS_PER_SEARCH)
        ]
    )
    found: dict[str, Any] = {}
    for chunk in chunks:
        what = "listing evaluation datasets"
        for dataset in _pages(call, what, partial(_search_page, client, chunk)):
            found.setdefault(str(dataset.dataset_id), dataset)
    return list(found.values())


def _records_page(store: Any, dataset_id: str, token: str | None) -> tuple[list[Any], str | None]:
    records, next_token = store._load_dataset_records(
        dataset_id, max_results=PAGE, page_token=token
    )
    return list(records), next_token or None


def _records(call: Caller, client: Any, dataset_id: str) -> list[Any]:
    what = f"reading the records of evaluation dataset {dataset_id}"
    return _pages(call, what, partial(_records_page, _store(client), dataset_id))


def _experiment_ids(call: Caller, client: Any, dataset_id: str) -> list[str]:
    store = _store(client)
    ids = call(
        f"reading the experiments of evaluation dataset {dataset_id}",
        lambda: store.get_dataset_experiment_ids(dataset_id),
    )
    return sorted({str(i) for i in ids})


# ------------------------------------------------------------------------------------- pack


def _json(call: Caller, value: Any, what: str) -> str:
    try:
        return compact_json(value)
    except ValueError:
        raise call.error(
            f"{what} holds a value JSON cannot carry (NaN or Infinity)",
            where=call.where,
            hint="replace it in the source, then run pack again",
        ) from None


def _json_or_none(call: Caller, value: Any, what: str) -> str | None:
    return None if value is None else _json(call, value, what)


def _dataset_raw(dataset: Any, experiment_ids: list[str]) -> dict[str, Any]:
    """The fields of MLflow's ``Dataset`` message, tags as an object (the wire has a JSON
    string), with the dataset's experiment links; null fields left out."""
    raw: dict[str, Any] = {f: getattr(dataset, f, None) for f in _FIELDS}
    raw["tags"] = dict(dataset.tags or {})
    raw["experiment_ids"] = experiment_ids
    version = getattr(dataset, "version", None)
    if version is not None:
        raw["version"] = version
    return {k: v for k, v in raw.items() if v is not None}


def _read_one(scope: PackScope, dataset: Any) -> Rows:
    call = scope.call
    dataset_id = str(dataset.dataset_id)
    experiment_ids = _experiment_ids(call, scope.client, dataset_id)
    raw = _dataset_raw(dataset, experiment_ids)
    what = f"evaluation dataset {dataset_id}"
    rows: Rows = {t: [] for t in _TABLES}
    rows["evaluation_datasets"].append(
        {
            **{f: raw.get(f) for f in _FIELDS},
            "dataset_id": dataset_id,
            "name": str(dataset.name),
            "source_json": _json(call, raw, what),
        }
    )
    rows["evaluation_dataset_tags"] = [
        {"dataset_id": dataset_id, "key": str(k), "value": str(v)}
        for k, v in raw["tags"].items()
        if v is not None
    ]
    rows["evaluation_dataset_experiments"] = [
        {"dataset_id": dataset_id, "experiment_id": e} for e in experiment_ids
    ]
    for record in _records(call, scope.client, dataset_id):
        full = record.to_dict()
        record_id = str(full["dataset_record_id"])
        where = f"{what} record {record_id}"
        rows["evaluation_dataset_records"].append(
            {
                "dataset_id": dataset_id,
                "record_id": record_id,
                "inputs": _json(call, full.get("inputs", {}), where),
                "outputs": _json_or_none(call, full.get("outputs"), where),
                "expectations": _json_or_none(call, full.get("expectations"), where),
                "tags": _json_or_none(call, full.get("tags"), where),
                "source": _json_or_none(call, full.get("source"), where),
                "created_time": full.get("created_time"),
                "last_update_time": full.get("last_update_time"),
                "source_json": _json(call, full, where),
            }
        )
    return rows


def _sorted(rows: Rows) -> Rows:
    for table, items in rows.items():
        keys = _KEYS[table]
        items.sort(key=lambda row: tuple(str(row[k]) for k in keys))
    return rows


def read_eval_datasets(scope: PackScope) -> Rows:
    """The evaluation datasets of the selection (with ``everything``, of the whole server):
    rows for the four ``evaluation_dataset*`` tables, sorted by their keys."""
    rows: Rows = {t: [] for t in _TABLES}
    reason = _unsupported(scope.call, scope.client)
    if reason is not None:
        scope.notes.append(f"evaluation datasets: none packed: {reason}")
        return rows
    if not scope.everything and not scope.experiment_ids:
        return rows
    datasets = _all_datasets(
        scope.call, scope.client, None if scope.everything else list(scope.experiment_ids)
    )
    for one in ordered_map(partial(_read_one, scope), datasets, scope.workers):
        for table, items in one.items():
            rows[table].extend(items)
    return _sorted(rows)


# ----------------------------------------------------------------------------------- unpack


def _unpacked_datasets(scope: UnpackScope) -> tuple[dict[str, str], set[str]]:
    """Source dataset id -> target dataset id, for the datasets an earlier unpack created; and
    the ids of the other target datasets.

    Every target dataset is listed and its tags read here: MLflow's dataset search does not
    strip backquotes from tag keys (``tags.`a.b` = 'x'`` never matches), so a filter on a dotted
    key depends on how one server version parses it. Where two target datasets carry the same
    source id (two unpacks at once), the oldest is used."""
    found: dict[str, str] = {}
    others: set[str] = set()
    for dataset in _all_datasets(scope.call, scope.client, None):
        source_id = (dataset.tags or {}).get(SOURCE_DATASET_TAG)
        if not source_id:
            others.add(str(dataset.dataset_id))
        elif source_id not in found:
            found[str(source_id)] = str(dataset.dataset_id)
    return found, others


def _fit(tags: dict[str, str], what: str, notes: list[str]) -> dict[str, str]:
    """Unpack's one limits rule (:func:`.sink.fit_tags`) with this family's value limit."""
    fitted = fit_tags(tags, DATASET_TAG_VALUE_LIMIT, what)
    notes.extend(fitted.notes)
    return fitted.tags


def _target_tags(
    scope: UnpackScope, dataset: dict[str, Any], tags: dict[str, str]
) -> dict[str, str]:
    """The archive's tags; with lineage on, the lineage tags; then the source-id tag."""
    out = dict(tags)
    if scope.origin is not None:
        known = {f: dataset.get(f) for f in _FIELDS}
        out.update(
            _fields(
                f"{PREFIX}.field",
                known,
                str(dataset.get("source_json") or "{}"),
                frozenset({"tags"}),
            )
        )
        out.update(_system_tags(tuple(sorted(tags.items()))))
        out.update(scope.origin.tags())
    out[SOURCE_DATASET_TAG] = str(dataset["dataset_id"])
    what = f"evaluation dataset {dataset['dataset_id']}"
    return _fit(out, what, scope.notes)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _record_dict(row: dict[str, Any]) -> dict[str, Any]:
    """One record as ``UpsertDatasetRecords`` takes it. ``outputs`` is always given: MLflow
    stores an absent one as ``{}``, an explicit null as null, and the archive keeps which."""
    record: dict[str, Any] = {
        "inputs": _loads(row["inputs"]),
        "outputs": _loads(row.get("outputs")),
    }
    for name in ("expectations", "tags", "source"):
        value = _loads(row.get(name))
        if value is not None:
            record[name] = value
    return record


def _inputs_key(inputs: Any) -> str:
    """MLflow's dedup key for a record: its inputs as sorted-key JSON (it hashes this text)."""
    return json.dumps(inputs if inputs is not None else {}, sort_keys=True)


def _batches(records: Iterable[dict[str, Any]]) -> Iterable[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    size = 0
    for record in records:
        length = len(json.dumps(record))
        if batch and (len(batch) >= RECORDS_PER_BATCH or size + length > BATCH_CHARS):
            yield batch
            batch, size = [], 0
        batch.append(record)
        size += length
    if batch:
        yield batch


def _create(
    scope: UnpackScope, dataset: dict[str, Any], tags: dict[str, str], experiment_ids: list[str]
) -> str:
    source_id = str(dataset["dataset_id"])
    store = _store(scope.client)

    def create() -> str:
        created = store.create_dataset(
            name=str(dataset["name"]), tags=tags, experiment_ids=experiment_ids
        )
        return str(created.dataset_id)

    def landed() -> str | None:
        # A create whose reply was lost may have landed: it carries the source-id tag.
        return _unpacked_datasets(scope)[0].get(source_id)

    return scope.call(
        f"creating evaluation dataset {dataset['name']!r} (source {source_id})",
        create,
        before_retry=landed,
    )


def _add_missing_links(scope: UnpackScope, target_id: str, experiment_ids: list[str]) -> int:
    have = set(_experiment_ids(scope.call, scope.client, target_id))
    missing = [e for e in experiment_ids if e not in have]
    if missing:
        store = _store(scope.client)
        scope.call(
            f"linking evaluation dataset {target_id} to experiments",
            lambda: store.add_dataset_to_experiments(target_id, missing),
        )
    return len(missing)


def write_eval_datasets(scope: UnpackScope, rows: Rows) -> dict[str, int]:
    """Create in the target each archive dataset it does not hold yet, linked to the target ids
    of its experiments, with its tags and records; complete one an earlier unpack left short
    (missing experiment links and records). Idempotent: a second call writes nothing."""
    counts = {"datasets_created": 0, "datasets_skipped": 0, "records": 0, "experiment_links": 0}
    datasets = sorted(rows.get("evaluation_datasets", []), key=lambda r: str(r["dataset_id"]))
    if not datasets:
        return counts
    reason = _unsupported(scope.call, scope.client)
    if reason is not None:
        raise scope.call.error(
            f"the archive holds {len(datasets)} evaluation dataset(s) but the target cannot "
            f"store them: {reason}",
            where=scope.call.where,
            hint="unpack into an MLflow 3.4+ server with a SQL database backend",
        )
    tags: dict[str, dict[str, str]] = defaultdict(dict)
    for row in rows.get("evaluation_dataset_tags", []):
        tags[str(row["dataset_id"])][str(row["key"])] = str(row["value"])
    links: dict[str, list[str]] = defaultdict(list)
    for row in sorted(
        rows.get("evaluation_dataset_experiments", []), key=lambda r: str(r["experiment_id"])
    ):
        links[str(row["dataset_id"])].append(str(row["experiment_id"]))
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    # In the source's order (MLflow lists records by creation time), so the target lists them alike.
    for row in sorted(
        rows.get("evaluation_dataset_records", []),
        key=lambda r: (r.get("created_time") or 0, str(r["record_id"])),
    ):
        records[str(row["dataset_id"])].append(row)

    existing, others = _unpacked_datasets(scope)
    homes: list[str] = []
    for dataset in datasets:
        source_id = str(dataset["dataset_id"])
        origin = tags[source_id].get(SOURCE_DATASET_TAG)
        if source_id not in existing and origin in others:
            # A copy of a target dataset no unpack made (the archive came back to its source,
            # A -> B -> A): that dataset is left as it is and stands for it.
            existing[source_id] = str(origin)
            homes.append(source_id)
            counts["datasets_skipped"] += 1
            continue
        what = f"evaluation dataset {source_id} ({dataset['name']!r})"
        experiment_ids: list[str] = []
        for source_exp in links[source_id]:
            target_exp = scope.experiments.get(source_exp)
            if target_exp is None:
                scope.notes.append(
                    f"{what}: experiment {source_exp} is not in the archive; link not written"
                )
            elif target_exp not in experiment_ids:
                experiment_ids.append(target_exp)

        target_id = existing.get(source_id)
        have: set[str] = set()
        if target_id is None:
            target_id = _create(
                scope, dataset, _target_tags(scope, dataset, tags[source_id]), experiment_ids
            )
            existing[source_id] = target_id
            counts["datasets_created"] += 1
        else:
            counts["datasets_skipped"] += 1
            counts["experiment_links"] += _add_missing_links(scope, target_id, experiment_ids)
            have = {_inputs_key(r.inputs) for r in _records(scope.call, scope.client, target_id)}

        todo = []
        for row in records[source_id]:
            record = _record_dict(row)
            key = _inputs_key(record["inputs"])
            if key not in have:
                have.add(key)
                todo.append(record)
        store = _store(scope.client)
        for batch in _batches(todo):
            # An upsert is safe to repeat: MLflow merges a record whose inputs it already holds.
            scope.call(
                f"writing {len(batch)} record(s) of evaluation dataset {target_id}",
                partial(store.upsert_dataset_records, dataset_id=target_id, records=batch),
            )
            counts["records"] += len(batch)
    if homes:
        scope.notes.append(
            f"{len(homes)} evaluation dataset(s) (first: {homes[0]}, a copy of "
            f"{existing[homes[0]]}) are copies of datasets of this target that no unpack made "
            "(the archive came back to its source): those are left as they are and stand for them"
        )
    return counts
