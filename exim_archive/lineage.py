"""Lineage: the ``mlflow_exim.*`` tags that ``unpack --import-source-tags`` writes, and the two
bookkeeping tags every unpacked run carries. The rules are ``shared/LINEAGE.md``, made exact in
``spec/1.0/unpack.md``:

* ``mlflow_exim.field.<F>`` for each raw field of an experiment, ``mlflow_exim.run_info.<F>`` for
  each raw RunInfo field; ``str`` of the value, times as epoch-ms decimal strings; no tag for null;
* ``mlflow_exim.mlflow_tag.<rest>`` for each source tag ``mlflow.<rest>`` (only the leading
  ``mlflow.`` stripped);
* ``mlflow_exim.archive.{digest,source_tracking_uri,created_at}``: where the object came from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .manifest import canonical_json
from .records import ArtifactRecord, ExperimentRecord, RunRecord

__all__ = [
    "BOOKKEEPING_PREFIX",
    "INCOMPLETE_TAG",
    "PENDING_PARENT_TAG",
    "PREFIX",
    "SOURCE_RUN_TAG",
    "STATE_TAG",
    "Origin",
    "experiment_source_tags",
    "newer_copy",
    "run_source_tags",
    "source_state",
]

PREFIX = "mlflow_exim"
BOOKKEEPING_PREFIX = f"{PREFIX}.unpack."
"""Tags by which unpack recognises its own objects; an archive packed from an earlier unpack's
target carries that unpack's, which this unpack replaces (spec/1.0/unpack.md §3, §8)."""
SOURCE_RUN_TAG = f"{BOOKKEEPING_PREFIX}source_run_id"
"""On every unpacked run: the source run id. How a re-run recognises what is already there."""
INCOMPLETE_TAG = f"{BOOKKEEPING_PREFIX}incomplete"
"""On a run while unpack writes it; removed as the run's last write."""
STATE_TAG = f"{BOOKKEEPING_PREFIX}source_state"
"""On every unpacked run: ``<archive created_at> <digest of the source run's contents>``; a
newer archive whose digest differs updates the copy (spec/1.0/unpack.md §3)."""
PENDING_PARENT_TAG = f"{BOOKKEEPING_PREFIX}pending_parent"
"""On a run whose parent was neither in its archive nor copied into the target yet: the source
parent run id, which ``mlflow.parentRunId`` keeps until an unpack brings that parent; removed
when it does (spec/1.0/unpack.md §7)."""

_EXPERIMENT_FIELDS = (
    "experiment_id",
    "name",
    "artifact_location",
    "lifecycle_stage",
    "creation_time",
    "last_update_time",
)
_RUN_FIELDS = (
    "run_id",
    "experiment_id",
    "run_name",
    "user_id",
    "status",
    "start_time",
    "end_time",
    "lifecycle_stage",
    "artifact_uri",
)


@dataclass(frozen=True)
class Origin:
    """Where the archive came from: its digest, the source server (no credentials), pack time."""

    digest: str
    source_tracking_uri: str
    created_at: str

    def tags(self) -> dict[str, str]:
        return {
            f"{PREFIX}.archive.digest": self.digest,
            f"{PREFIX}.archive.source_tracking_uri": self.source_tracking_uri,
            f"{PREFIX}.archive.created_at": self.created_at,
        }


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def _fields(
    prefix: str, known: Mapping[str, Any], source_json: str, skip: frozenset[str]
) -> dict[str, str]:
    """Known columns first, then any other top-level raw field the source returned."""
    out: dict[str, str] = {}
    try:
        raw = json.loads(source_json)
    except ValueError:
        raw = {}
    merged = {k: v for k, v in raw.items() if k not in skip} if isinstance(raw, dict) else {}
    merged.update(known)
    for name, value in sorted(merged.items()):
        text = _text(value)
        if text is not None:
            out[f"{prefix}.{name}"] = text
    return out


def _system_tags(tags: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return {
        f"{PREFIX}.mlflow_tag.{key[len('mlflow.') :]}": value
        for key, value in tags
        if key.startswith("mlflow.")
    }


def experiment_source_tags(exp: ExperimentRecord, origin: Origin) -> dict[str, str]:
    """The lineage tags of one experiment."""
    known = {f: getattr(exp, f) for f in _EXPERIMENT_FIELDS}
    tags = _fields(f"{PREFIX}.field", known, exp.source_json, frozenset({"tags"}))
    tags.update(_system_tags(exp.tags))
    tags.update(origin.tags())
    return tags


def run_source_tags(run: RunRecord, origin: Origin) -> dict[str, str]:
    """The lineage tags of one run."""
    known = {f: getattr(run, f) for f in _RUN_FIELDS}
    tags = _fields(f"{PREFIX}.run_info", known, run.source_json, frozenset())
    tags.update(_system_tags(run.tags))
    tags.update(origin.tags())
    return tags


def object_source_tags(
    known: Mapping[str, Any], source_json: str, tags: tuple[tuple[str, str], ...], origin: Origin
) -> dict[str, str]:
    """The lineage tags of a registered model, model version, logged model, trace or dataset:
    ``mlflow_exim.field.<f>`` for its raw fields, ``mlflow_exim.mlflow_tag.<rest>`` for its
    ``mlflow.<rest>`` tags, and where it came from."""
    out = _fields(f"{PREFIX}.field", known, source_json, frozenset({"tags", "aliases"}))
    out.update(_system_tags(tags))
    out.update(origin.tags())
    return out


def source_state(run: RunRecord, points: int, artifacts: Iterable[ArtifactRecord]) -> str:
    """A digest of what an archive holds of a run (its lifecycle aside, which unpack applies
    to complete copies too): the second half of :data:`STATE_TAG`."""
    content = {
        "status": run.status,
        "end_time": run.end_time,
        "run_name": run.run_name,
        "params": run.params,
        "tags": run.tags,
        "inputs": [dataclasses.asdict(i) for i in run.inputs],
        "metric_keys": run.metric_keys,
        "points": points,
        "artifacts": sorted((a.path, a.size, a.sha256) for a in artifacts),
    }
    return hashlib.sha256(canonical_json(content)).hexdigest()[:32]


def newer_copy(copy_state: str | None, created_at: str, state: str) -> bool:
    """Whether a copy whose :data:`STATE_TAG` is ``copy_state`` holds other contents than
    ``state`` (see :func:`source_state`) and was made from an archive packed at ``created_at``
    or later: unpack leaves it as it is (two pack times alike cannot be ordered)."""
    made_at, _, digest = (copy_state or "").partition(" ")
    return bool(made_at) and made_at >= created_at and digest != state
