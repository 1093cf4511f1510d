"""The proof after unpack, for the families of format 1.1: the target read back with the
families' own readers (as ``pack`` would read it) and compared with the archive's rows.

* registered models and prompts: each exists (of the same kind); each version exists once as a
  target version tagged ``mlflow_exim.unpack.source_version`` = its number (a version whose run
  or logged model is outside the archive may legitimately be missing); its tags are there with
  the archive's values (as the limits rule wrote them); each alias names the copy of its version;
* logged models: each exists once (by ``mlflow_exim.unpack.source_model_id``), is complete, has
  the archive's status, params, tags, metric points per key and files;
* traces: each trace id exists with as many spans, the archive's tags and its assessments (a
  trace that unpack found in another experiment of the target is left there: it exists);
* evaluation datasets: each exists (by ``mlflow_exim.unpack.source_dataset_id``) with at least
  the archive's records (by inputs, MLflow's dedup key).

Only the families the archive holds are read; an archive without family rows costs no call.
``mlflow_exim.*`` tags are not compared: unpack writes its own (bookkeeping, lineage).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from . import tables as T
from .bundle_reader import ArchiveReader
from .eval_datasets import SOURCE_DATASET_TAG, _inputs_key, read_eval_datasets
from .families import PackScope, Rows
from .lineage import INCOMPLETE_TAG, PREFIX
from .logged_models import SOURCE_MODEL_TAG, read_logged_models
from .mlflow_errors import Caller
from .pool import ordered_map
from .registry import SOURCE_VERSION_TAG, read_registry
from .sink import KEY_LIMIT, REGISTRY_TAG_VALUE_LIMIT, RUN_TAG_VALUE_LIMIT, TRACE_TAG_VALUE_LIMIT
from .traces import (
    _CLIENT_TAG_VALUE_LIMIT,
    _INFO_BATCH,
    _SERVER_TAGS,
    _TRACE_ID,
    _infos,
    _tracing_client,
    read_traces,
)

if TYPE_CHECKING:
    from .proof import ProofReport

__all__ = ["check_families"]

_OURS = f"{PREFIX}."
_LISTING_WORKERS = 4
_FINAL_STATUSES = ("READY", "FAILED")


def check_families(
    report: ProofReport,
    reader: ArchiveReader,
    client: Callable[[], Any],
    call: Caller,
    tracking_uri: str,
    experiment_map: Mapping[str, str],
) -> None:
    """Add to ``report`` what the target lacks of the archive's families.

    ``experiment_map`` maps the archive's experiment ids to the target's (the experiments found
    by name); the families are looked for in those target experiments. ``client`` gives
    MLflow's client for the target, asked for only when the archive holds a family (opening it
    imports MLflow)."""
    rows = reader.family_rows()
    if not any(rows.values()):
        return
    scope = PackScope(
        client=client(),
        call=call,
        tracking_uri=tracking_uri,
        experiment_ids=list(dict.fromkeys(experiment_map.values())),
        run_ids=frozenset(),  # no run links nor model inputs/outputs: one call per run each
        everything=False,
        notes=[],
    )
    if rows.get("logged_models"):
        _check_logged_models(report, reader, scope, rows)
    if rows.get("registered_models"):
        _check_registry(report, scope, rows)
    if rows.get("traces"):
        _check_traces(report, scope, rows)
    if rows.get("evaluation_datasets"):
        _check_datasets(report, scope, rows, experiment_map)


def _tags_differ(want: Mapping[str, str], have: Mapping[str, str], limit: int) -> list[str]:
    """The keys of ``want`` (not ours, not too long) whose value the target lacks, cut to
    ``limit`` as unpack's limits rule writes it."""
    return [
        key
        for key, value in sorted(want.items())
        if not key.startswith(_OURS) and len(key) <= KEY_LIMIT and have.get(key) != value[:limit]
    ]


# -- registry ---------------------------------------------------------------------------------


def _check_registry(report: ProofReport, scope: PackScope, rows: Rows) -> None:
    # The whole registry: a selection by runs and logged models would miss versions without
    # either, and prompts without experiment links.
    got = read_registry(replace(scope, everything=True), frozenset())
    kinds = {m["name"]: m["kind"] for m in got.get("registered_models", [])}
    copies: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    target_tags: dict[tuple[str, int], dict[str, str]] = defaultdict(dict)
    for t in got.get("model_version_tags", []):
        target_tags[(t["name"], t["version"])][t["key"]] = t["value"]
        if t["key"] == SOURCE_VERSION_TAG and t["value"].isdigit():
            copies[t["name"]][int(t["value"])].append(t["version"])
    others = {  # versions no unpack made: they may stand for copies of themselves (A -> B -> A)
        (v["name"], v["version"])
        for v in got.get("model_versions", [])
        if SOURCE_VERSION_TAG not in target_tags[(v["name"], v["version"])]
    }
    target_aliases: dict[str, dict[str, int]] = defaultdict(dict)
    for a in got.get("registered_model_aliases", []):
        target_aliases[a["name"]][a["alias"]] = a["version"]

    versions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for v in rows.get("model_versions", []):
        versions[v["name"]].append(v)
    tags: dict[tuple[str, int], dict[str, str]] = defaultdict(dict)
    for t in rows.get("model_version_tags", []):
        tags[(t["name"], t["version"])][t["key"]] = t["value"]
    aliases: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in rows.get("registered_model_aliases", []):
        aliases[a["name"]].append(a)

    for model in sorted(rows.get("registered_models", []), key=lambda m: m["name"]):
        name, kind = model["name"], model["kind"]
        label = f"{'prompt' if kind == 'prompt' else 'registered model'} {name!r}"
        have = kinds.get(name)
        if have is None:
            report.add(f"{label}: missing in the target")
            continue
        if have != kind:
            report.add(f"{label}: the target has a {have} of that name (nothing of it written)")
            continue
        made = copies.get(name, {})
        for v in sorted(versions[name], key=lambda v: v["version"]):
            number = v["version"]
            found = made.get(number)
            origin = tags[(name, number)].get(SOURCE_VERSION_TAG, "")
            if not found and origin.isdigit() and (name, int(origin)) in others:
                continue  # a copy of a target version: unpack leaves that version
            if not found:
                # unpack may not create a version whose run or logged model is not in the
                # archive (MLflow refuses some sources without their run): it says so in a note
                if "outside" not in (v["run_scope"], v["model_scope"]):
                    report.add(f"{label} version {number}: missing in the target")
                continue
            if len(found) > 1:
                shown = ", ".join(str(n) for n in sorted(found))
                report.add(
                    f"{label} version {number}: {len(found)} copies in the target "
                    f"(versions {shown})"
                )
            copy = number if number in found else min(found)
            for key in _tags_differ(
                tags[(name, number)], target_tags[(name, copy)], REGISTRY_TAG_VALUE_LIMIT
            ):
                report.add(f"{label} version {number}: tag {key!r} is missing or differs")
        for a in sorted(aliases[name], key=lambda a: a["alias"]):
            found = made.get(a["version"])
            if not found:
                continue  # the version is missing (reported above) or legitimately not made
            points_at = target_aliases.get(name, {}).get(a["alias"])
            if points_at is None:
                report.add(f"{label}: alias {a['alias']!r} missing in the target")
            elif points_at not in found:
                report.add(
                    f"{label}: alias {a['alias']!r} names version {points_at} in the target, "
                    f"not the copy of version {a['version']}"
                )


# -- logged models ----------------------------------------------------------------------------


def _archive_run_ids(reader: ArchiveReader) -> set[str]:
    return set(reader.read_table(T.RUNS).column("run_id").to_pylist())


def _points(metrics: list[dict[str, Any]]) -> dict[str, int]:
    """Distinct points per key, as a store keeps them (one per key, timestamp, step and run)."""
    seen = {(m["key"], m["timestamp"], m["step"], m["run_id"]) for m in metrics}
    out: dict[str, int] = defaultdict(int)
    for key, *_ in seen:
        out[key] += 1
    return dict(out)


def _model_files(scope: PackScope, model_id: str) -> dict[str, int]:
    """Every file of a target logged model with its size."""

    def listing(path: str | None) -> dict[str, int]:
        infos = scope.call(
            f"listing files of logged model {model_id}",
            partial(scope.client.list_logged_model_artifacts, model_id, path),
        )
        out: dict[str, int] = {}
        for info in infos:
            if info.is_dir:
                out.update(listing(info.path))
            else:
                out[info.path] = int(info.file_size or 0)
        return out

    return listing(None)


def _check_logged_models(
    report: ProofReport, reader: ArchiveReader, scope: PackScope, rows: Rows
) -> None:
    got = read_logged_models(scope)
    by_target: dict[str, dict[str, dict[str, Any]]] = defaultdict(lambda: defaultdict(dict))
    target_metrics: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for table in ("logged_model_params", "logged_model_tags"):
        for r in got.get(table, []):
            by_target[r["model_id"]][table][r["key"]] = r["value"]
    for r in got.get("logged_model_metrics", []):
        target_metrics[r["model_id"]].append(r)
    copies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    others: set[str] = set()  # models no unpack made
    for m in got.get("logged_models", []):
        source_id = by_target[m["model_id"]]["logged_model_tags"].get(SOURCE_MODEL_TAG)
        if source_id:
            copies[source_id].append(m)
        else:
            others.add(m["model_id"])

    params: dict[str, dict[str, str]] = defaultdict(dict)
    tags: dict[str, dict[str, str]] = defaultdict(dict)
    for r in rows.get("logged_model_params", []):
        params[r["model_id"]][r["key"]] = r["value"]
    for r in rows.get("logged_model_tags", []):
        tags[r["model_id"]][r["key"]] = r["value"]
    metrics: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if rows.get("logged_model_metrics"):
        # unpack writes a model's metric only against a run of the archive (else: a note)
        runs = _archive_run_ids(reader)
        for r in rows["logged_model_metrics"]:
            if r["run_id"] in runs:
                metrics[r["model_id"]].append(r)
    files: dict[str, dict[str, int]] = defaultdict(dict)
    for r in rows.get("logged_model_artifacts", []):
        files[r["model_id"]][r["path"]] = r["size"]

    found: dict[str, dict[str, Any]] = {}
    for model in rows["logged_models"]:
        source_id = model["model_id"]
        label = f"logged model {source_id} ({model['name']!r})"
        twins = copies.get(source_id, [])
        if not twins and tags[source_id].get(SOURCE_MODEL_TAG) in others:
            continue  # a copy of a target logged model: unpack leaves that model
        if not twins:
            report.add(f"{label}: missing in the target")
            continue
        if len(twins) > 1:
            report.add(f"{label}: {len(twins)} copies in the target")
        # the complete copy if there is one (a second unpack replaces a half-written one)
        twin = min(
            twins,
            key=lambda m: INCOMPLETE_TAG in by_target[m["model_id"]]["logged_model_tags"],
        )
        found[source_id] = twin
        mine = by_target[twin["model_id"]]
        if INCOMPLETE_TAG in mine["logged_model_tags"]:
            report.add(f"{label}: only partly written (run unpack again to finish it)")
        if model["status"] in _FINAL_STATUSES and twin["status"] != model["status"]:
            report.add(f"{label}: is {twin['status']} in the target, {model['status']} here")
        for key, value in sorted(params[source_id].items()):
            if len(key) <= KEY_LIMIT and mine["logged_model_params"].get(key) != value:
                report.add(f"{label}: param {key!r} is missing or differs")
        for key in _tags_differ(tags[source_id], mine["logged_model_tags"], RUN_TAG_VALUE_LIMIT):
            report.add(f"{label}: tag {key!r} is missing or differs")
        have = _points(target_metrics[twin["model_id"]])
        for key, count in sorted(_points(metrics[source_id]).items()):
            if have.get(key, 0) != count:
                report.add(
                    f"{label}: metric {key!r} has {have.get(key, 0)} points in the target, "
                    f"{count} here"
                )

    listed = [source_id for source_id in sorted(found) if files.get(source_id)]
    listings = ordered_map(
        lambda source_id: _model_files(scope, found[source_id]["model_id"]),
        listed,
        _LISTING_WORKERS,
    )
    for source_id, target_files in zip(listed, listings, strict=True):
        want = files[source_id]
        wrong = sorted(p for p, size in want.items() if target_files.get(p) != size)
        if wrong:
            report.add(
                f"logged model {source_id}: {len(wrong)} of its {len(want)} files missing in "
                f"the target or of another size (e.g. {wrong[0]!r})"
            )


# -- traces -----------------------------------------------------------------------------------


def _tag_matches(want: str, have: str | None) -> bool:
    """A server answers with trace tags cut to the client's limit: a prefix of that length
    of a longer value counts as the value."""
    if have == want:
        return True
    return (
        have is not None
        and len(have) == _CLIENT_TAG_VALUE_LIMIT < len(want)
        and want.startswith(have)
    )


def _elsewhere(scope: PackScope, trace_ids: list[str]) -> set[str]:
    """Those of ``trace_ids`` the target holds in any experiment (unpack leaves a trace it
    finds in another experiment where it is)."""
    if not trace_ids:
        return set()
    client = _tracing_client(scope.call, scope.tracking_uri)
    out: set[str] = set()
    for start in range(0, len(trace_ids), _INFO_BATCH):
        chunk = trace_ids[start : start + _INFO_BATCH]
        infos = scope.call(
            f"looking up {len(chunk)} traces in the target", partial(_infos, client, chunk)
        )
        out.update(str(info.trace_id) for info in infos)
    return out


def _check_traces(report: ProofReport, scope: PackScope, rows: Rows) -> None:
    got = read_traces(scope)
    present = {str(r["trace_id"]) for r in got.get("traces", [])}
    target_spans: dict[str, int] = defaultdict(int)
    for r in got.get("spans", []):
        target_spans[str(r["trace_id"])] += 1
    target_tags: dict[str, dict[str, str]] = defaultdict(dict)
    for r in got.get("trace_tags", []):
        target_tags[str(r["trace_id"])][str(r["key"])] = str(r["value"])
    target_assessments: dict[str, set[str]] = defaultdict(set)
    for r in got.get("assessments", []):
        target_assessments[str(r["trace_id"])].add(str(r["assessment_id"]))

    spans: dict[str, int] = defaultdict(int)
    for r in rows.get("spans", []):
        spans[str(r["trace_id"])] += 1
    tags: dict[str, dict[str, str]] = defaultdict(dict)
    for r in rows.get("trace_tags", []):
        tags[str(r["trace_id"])][str(r["key"])] = str(r["value"])
    assessments: dict[str, list[str]] = defaultdict(list)
    for r in rows.get("assessments", []):
        assessments[str(r["trace_id"])].append(str(r["assessment_id"]))

    trace_ids = sorted(str(r["trace_id"]) for r in rows["traces"])
    absent = [t for t in trace_ids if t not in present]
    elsewhere = _elsewhere(scope, absent)
    for trace_id in trace_ids:
        label = f"trace {trace_id}"
        if trace_id not in present:
            if trace_id not in elsewhere:
                report.add(f"{label}: missing in the target")
            continue
        # unpack drops the spans of a trace whose id does not name its OTel trace id (a note)
        want = spans.get(trace_id, 0) if _TRACE_ID.match(trace_id) else 0
        have = target_spans.get(trace_id, 0)
        if have != want:
            report.add(f"{label}: has {have} spans in the target, {want} here")
        mine = target_tags.get(trace_id, {})
        for key, value in sorted(tags[trace_id].items()):
            if key in _SERVER_TAGS or key.startswith(_OURS) or len(key) > KEY_LIMIT:
                continue
            if not _tag_matches(value[:TRACE_TAG_VALUE_LIMIT], mine.get(key)):
                report.add(f"{label}: tag {key!r} is missing or differs")
        for assessment_id in sorted(assessments[trace_id]):
            if assessment_id not in target_assessments.get(trace_id, set()):
                report.add(f"{label}: assessment {assessment_id} missing in the target")


# -- evaluation datasets ----------------------------------------------------------------------


def _keys(records: list[dict[str, Any]]) -> set[str]:
    return {_inputs_key(json.loads(r["inputs"])) for r in records}


def _check_datasets(
    report: ProofReport, scope: PackScope, rows: Rows, experiment_map: Mapping[str, str]
) -> None:
    linked = {
        str(r["dataset_id"])
        for r in rows.get("evaluation_dataset_experiments", [])
        if str(r["experiment_id"]) in experiment_map
    }
    datasets = rows["evaluation_datasets"]
    # unpack links a dataset to the target copies of its experiments; one linked to none of
    # them is found only by listing every dataset of the target
    everything = any(str(d["dataset_id"]) not in linked for d in datasets)
    got = read_eval_datasets(replace(scope, everything=everything))
    copies: dict[str, list[str]] = defaultdict(list)
    for r in got.get("evaluation_dataset_tags", []):
        if r["key"] == SOURCE_DATASET_TAG:
            copies[str(r["value"])].append(str(r["dataset_id"]))
    made = {t for found in copies.values() for t in found}
    others = {str(d["dataset_id"]) for d in got.get("evaluation_datasets", [])} - made
    origins = {
        str(r["dataset_id"]): str(r["value"])
        for r in rows.get("evaluation_dataset_tags", [])
        if r["key"] == SOURCE_DATASET_TAG
    }
    target_records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in got.get("evaluation_dataset_records", []):
        target_records[str(r["dataset_id"])].append(r)
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows.get("evaluation_dataset_records", []):
        records[str(r["dataset_id"])].append(r)

    for d in sorted(datasets, key=lambda d: str(d["dataset_id"])):
        source_id = str(d["dataset_id"])
        label = f"evaluation dataset {source_id} ({d['name']!r})"
        twins = copies.get(source_id, [])
        if not twins and origins.get(source_id) in others:
            continue  # a copy of a target dataset: unpack leaves that dataset
        if not twins:
            report.add(f"{label}: missing in the target")
            continue
        want = _keys(records[source_id])
        missing = min(len(want - _keys(target_records[t])) for t in twins)
        if missing:
            report.add(f"{label}: {missing} of its {len(want)} records missing in the target")
