"""Parent links across archives (spec/1.0/unpack.md §7).

A run's ``mlflow.parentRunId`` may name a run that is not in its archive: ``--experiment``
selections pack a child and its parent (in another experiment) into two archives, which may be
unpacked in either order. Unpack then looks for the parent's copy in the whole target (by its
source-run tag, :data:`.SOURCE_RUN_TAG`): found, the child links to it; not found, the child keeps
the source parent id and a pending tag (:data:`.PENDING_PARENT_TAG`) naming it, which the unpack
that later brings the parent finds and resolves. Lookups are by tag, in every experiment of the
target: one SQL query on a database with direct SQL, else MLflow's ``search_runs`` over all
experiments, 100 at a time.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from functools import partial
from typing import TYPE_CHECKING

from .lineage import PENDING_PARENT_TAG, SOURCE_RUN_TAG
from .source import all_experiments, search_runs

if TYPE_CHECKING:
    from .sink import MlflowSink

__all__ = [
    "PARENT_TAG",
    "children_naming",
    "copies_of",
    "link_parent",
    "looks_like_run_id",
    "waiting_children",
]

PARENT_TAG = "mlflow.parentRunId"
_RUN_ID = re.compile(r"[a-zA-Z0-9][\w\-]{0,255}")
"""MLflow's own rule for a run id (``mlflow.utils.validation``): a value outside it names no run,
and is never put in a search filter."""


def looks_like_run_id(value: str) -> bool:
    return _RUN_ID.fullmatch(value) is not None


def copies_of(sink: MlflowSink, source_run_ids: Collection[str]) -> dict[str, str]:
    """Source run id -> the target run an unpack made from it, in any experiment of the target
    (the smallest run id where there are more, as the proof takes); ids without a copy are left
    out."""
    wanted = sorted(i for i in set(source_run_ids) if looks_like_run_id(i))
    if not wanted:
        return {}
    found: dict[str, str] = {}
    for run_id, source_id in _tagged(sink, SOURCE_RUN_TAG, wanted):
        if source_id in found and found[source_id] <= run_id:
            continue
        found[source_id] = run_id
    return found


def waiting_children(sink: MlflowSink) -> list[tuple[str, str]]:
    """``(run id, source parent id)`` of the target's runs still waiting for their parent, in
    any experiment, sorted."""
    return sorted(_tagged(sink, PENDING_PARENT_TAG, None))


def children_naming(sink: MlflowSink, parent_ids: Collection[str]) -> list[tuple[str, str]]:
    """``(run id, parent id)`` of the target's runs whose ``mlflow.parentRunId`` is one of
    ``parent_ids``, in any experiment, sorted."""
    wanted = sorted(i for i in set(parent_ids) if looks_like_run_id(i))
    return sorted(_tagged(sink, PARENT_TAG, wanted)) if wanted else []


def link_parent(sink: MlflowSink, run_id: str, parent_id: str) -> None:
    """Point the run's ``mlflow.parentRunId`` at ``parent_id`` and drop its pending tag. Through
    MLflow, which refuses writes to a deleted run, a deleted run is restored for the two writes
    and deleted again (its deletion time is then this moment)."""
    what = f"linking run {run_id} to its parent {parent_id}"
    direct = sink.direct
    if direct is not None:
        sink.call(
            what, partial(direct.link_parent, run_id, PARENT_TAG, parent_id, PENDING_PARENT_TAG)
        )
        return
    run = sink.call(f"reading run {run_id}", partial(sink.client.get_run, run_id))
    deleted = run.info.lifecycle_stage == "deleted"
    if deleted:
        sink.restore_run(run_id)
    sink.call(what, partial(sink.client.set_tag, run_id, PARENT_TAG, parent_id))
    if PENDING_PARENT_TAG in run.data.tags:
        sink.call(
            what,
            partial(sink.client.delete_tag, run_id, PENDING_PARENT_TAG),
            before_retry=partial(_dropped, sink, run_id),
        )
    if deleted:
        sink.delete_run(run_id)


def _dropped(sink: MlflowSink, run_id: str) -> bool | None:
    """For a retry: True if an earlier try already removed the pending tag."""
    return None if PENDING_PARENT_TAG in sink.client.get_run(run_id).data.tags else True


def _tagged(sink: MlflowSink, key: str, values: list[str] | None) -> Iterator[tuple[str, str]]:
    """``(run id, value)`` of the target's runs carrying tag ``key`` (with one of ``values``)."""
    direct = sink.direct
    if direct is not None:
        yield from sink.call(
            f"looking up runs tagged {key}", partial(direct.tagged_runs, key, values)
        )
        return
    experiment_ids = [exp.experiment_id for exp in all_experiments(sink.client, sink.call)]
    filters = (
        [f"tags.`{key}` LIKE '%'"] if values is None else [f"tags.`{key}` = '{v}'" for v in values]
    )
    what = f"looking up runs tagged {key} in experiments {{}}"
    for filter_string in filters:
        for run in search_runs(sink.client, sink.call, experiment_ids, filter_string, what):
            yield run.info.run_id, run.data.tags.get(key, "")
