"""``unpack``: one archive in, its experiments and runs written into a tracking server.

Order: verify the whole archive (a damaged one writes nothing); plan (limits, references);
experiments; create every missing run (so parents have new ids); fill runs that are new or were
left incomplete (params, tags, metrics, inputs, artifacts, status, end time; then drop the
incomplete marker); finally delete what the source had deleted. Every write is idempotent, so a
killed unpack run again finishes the job without duplicating anything.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from .artifact_roots import ArtifactRoots
from .bundle_reader import RUNS_AT_A_TIME, ArchiveReader, RunPoints
from .errors import TargetError
from .families import UnpackScope
from .id_map import IdMap
from .lineage import (
    INCOMPLETE_TAG,
    PENDING_PARENT_TAG,
    SOURCE_RUN_TAG,
    STATE_TAG,
    Origin,
    experiment_source_tags,
    newer_copy,
    run_source_tags,
    source_state,
)
from .parent_links import (
    PARENT_TAG,
    children_naming,
    copies_of,
    link_parent,
    looks_like_run_id,
    waiting_children,
)
from .pool import ordered_map
from .progress import Progress
from .proof import check_against
from .records import ArtifactRecord, ExperimentRecord, RunRecord
from .sink import (
    EXPERIMENT_NAME_LIMIT,
    EXPERIMENT_TAG_VALUE_LIMIT,
    PARAM_VALUE_LIMIT,
    RUN_TAG_VALUE_LIMIT,
    ExistingRun,
    MlflowSink,
    fit_tags,
    open_sink,
)
from .target_lock import TargetLock
from .uri import redact_uri, resolve_tracking_uri
from .verify import verify

__all__ = ["UnpackReport", "unpack"]

RUN_NAME_TAG = "mlflow.runName"
METRIC_SLICE = 50_000


def _batches(
    runs: Iterable[tuple[RunRecord, list[ArtifactRecord]]], size: int, chunk: int = RUNS_AT_A_TIME
) -> Iterator[list[tuple[RunRecord, list[ArtifactRecord]]]]:
    """``runs`` (with their files) in batches of up to ``size`` runs of one experiment: within
    each ``chunk`` of runs, experiments in order of first appearance, runs in order within each.
    Runs come in run id order, which interleaves experiments: cutting that order where the
    experiment changes made batches of one or two."""
    pending: list[tuple[RunRecord, list[ArtifactRecord]]] = []
    for item in runs:
        pending.append(item)
        if len(pending) >= chunk:
            yield from _grouped_by_experiment(pending, size)
            pending = []
    yield from _grouped_by_experiment(pending, size)


def _grouped_by_experiment(
    runs: list[tuple[RunRecord, list[ArtifactRecord]]], size: int
) -> Iterator[list[tuple[RunRecord, list[ArtifactRecord]]]]:
    by_experiment: dict[str, list[tuple[RunRecord, list[ArtifactRecord]]]] = {}
    for item in runs:
        by_experiment.setdefault(item[0].experiment_id, []).append(item)
    for group in by_experiment.values():
        for start in range(0, len(group), size):
            yield group[start : start + size]


@dataclass
class UnpackReport:
    """What ``unpack`` did; ``id_map`` maps source ids to target ids per object type."""

    archive: str
    digest: str
    tracking_uri: str
    experiments_created: int = 0
    experiments_reused: int = 0
    runs_created: int = 0
    runs_resumed: int = 0
    runs_updated: int = 0
    runs_already_complete: int = 0
    metric_points: int = 0
    artifacts: int = 0
    id_map: dict[str, Mapping[str, str]] = field(
        default_factory=lambda: {"experiments": {}, "runs": {}}
    )
    families: dict[str, int] = field(default_factory=dict)
    """What the 1.1 families wrote: created and skipped counts per object type."""
    notes: list[str] = field(default_factory=list)
    retries: int = 0
    runs_checked: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        plain = {kind: dict(ids.items()) for kind, ids in self.id_map.items()}
        return {**self.__dict__, "id_map": plain}


def _fit(tags: dict[str, str], value_limit: int, what: str, notes: list[str]) -> dict[str, str]:
    fitted = fit_tags(tags, value_limit, what)
    notes.extend(fitted.notes)
    return fitted.tags


@dataclass
class _Target:
    """One source experiment's place in the target."""

    source: ExperimentRecord
    experiment_id: str
    existing: dict[str, ExistingRun]
    foreign: set[str]
    """Ids of the target experiment's runs that no unpack made."""
    was_deleted: bool = False
    restored: bool = False
    found: bool = True
    """Whether the experiment was there before this unpack (else it is created)."""
    work: bool = False
    """Whether a run of it is to be created, resumed or updated."""


_Item = tuple[RunRecord, RunPoints | None, ExistingRun | None, list[ArtifactRecord], bool]
"""A run to fill, its points, what the target holds of it, its files, and whether they are
written."""


class _Unpacker:
    def __init__(
        self,
        reader: ArchiveReader,
        sink: MlflowSink,
        import_source_tags: bool,
        workers: int,
        progress: bool | None,
        report: UnpackReport,
        check_lock: Callable[[], None],
    ) -> None:
        """``check_lock``: raises if the target's unpack lock is no longer this unpack's
        (:meth:`.TargetLock.check`); called before each batch of new runs and each run filled."""
        self.reader, self.sink, self.report = reader, sink, report
        self.check_lock = check_lock
        self.lineage = import_source_tags
        self.workers, self.progress = workers, progress
        m = reader.manifest
        self.origin = Origin(reader.digest, str(m.source.get("tracking_uri", "")), m.created_at)
        self.experiments = reader.experiments()
        # The runs themselves are read from the archive a chunk at a time, in each pass that
        # needs them (plan, create, fill): what is kept per run is ids, never records.
        self.run_ids: dict[str, str] = {}
        """Source run id -> target run id, as runs are found and made (plan, create, fill)."""
        self.run_map = IdMap()
        """The same map once every run is filled, compact (:class:`.IdMap`): kept and reported."""
        self.home_runs = 0
        self.first_home: str | None = None
        """How many source runs are copies of target runs no unpack made (see :meth:`home`);
        the first of them in run id order."""
        self.to_create: set[str] = set()
        self.to_fill: set[str] = set()
        """Source runs to create; to fill (created, resumed or updated). Emptied once done."""
        self.dangling: list[tuple[str, str]] = []
        """(run id, parent id) of the archive's runs whose parent is not in the archive."""
        self.outside_parents: dict[str, str] = {}
        """Of those parents, the ones an earlier unpack copied here: source id -> target id."""
        self.deleted: list[tuple[str, str, bool]] = []
        """(run id, experiment id, to be filled) of the archive's deleted runs, but those
        copies of target runs no unpack made stand for (never touched)."""

    def notes(self) -> list[str]:
        return self.report.notes

    # -- plan ------------------------------------------------------------------------------------

    def check_plan(self) -> None:
        for exp in self.experiments:
            if not exp.name or len(exp.name) > EXPERIMENT_NAME_LIMIT:
                raise TargetError(
                    f"experiment {exp.experiment_id} has a name MLflow rejects "
                    f"(empty or over {EXPERIMENT_NAME_LIMIT} chars)",
                    where=self.reader.path,
                    hint="nothing was written",
                )
        self.dangling = self.reader.dangling_run_references(PARENT_TAG)
        self.outside_parents = copies_of(self.sink, {parent for _, parent in self.dangling})
        for run_id, parent in self.dangling:
            copy = self.outside_parents.get(parent)
            self.notes().append(
                f"run {run_id}: parent run {parent} is not in the archive; "
                + (
                    f"{PARENT_TAG} names its copy {copy}, made by an earlier unpack"
                    if copy is not None
                    else f"{PARENT_TAG} keeps the source id until an unpack brings that run"
                )
            )

    # -- experiments -----------------------------------------------------------------------------

    def experiment_tags(self, exp: ExperimentRecord) -> dict[str, str]:
        tags = dict(exp.tags)
        if self.lineage:
            tags.update(experiment_source_tags(exp, self.origin))
        return _fit(tags, EXPERIMENT_TAG_VALUE_LIMIT, f"experiment {exp.name!r}", self.notes())

    def find_experiment(self, exp: ExperimentRecord) -> _Target:
        """Where the experiment is in the target, with the runs it holds; nothing is written
        (an experiment that is not there is made by :meth:`place_experiment`)."""
        found = self.sink.find_experiment(exp.name)
        if found is None:
            return _Target(exp, "", {}, set(), found=False)
        if found.lifecycle_stage == "deleted" and not exp.deleted:
            raise TargetError(
                f"experiment {exp.name!r} exists in the target but is deleted there, "
                "while the archive has it active",
                where=self.sink.safe_uri,
                hint="restore it (mlflow experiments restore) or remove it for good "
                "(mlflow gc), then run unpack again",
            )
        existing, foreign = self.sink.existing_runs(found.experiment_id)
        was_deleted = found.lifecycle_stage == "deleted"
        return _Target(exp, found.experiment_id, existing, foreign, was_deleted)

    def place_experiment(self, target: _Target) -> None:
        """Make the experiment, or bring the one found up to date: restored if deleted and
        runs are to be written into it, its tags set."""
        exp = target.source
        tags = self.experiment_tags(exp)
        if not target.found:
            target.experiment_id = self.sink.create_experiment(exp.name, tags)
            self.report.experiments_created += 1
            return
        self.report.experiments_reused += 1
        current = (
            self.sink.experiment_tags(target.experiment_id)
            if target.work or not exp.deleted
            else {}
        )
        if target.was_deleted:
            if not target.work:
                return
            self.sink.restore_experiment(target.experiment_id)
            target.restored = True
        missing = {k: v for k, v in tags.items() if current.get(k) != v}
        if missing:
            self.sink.set_experiment_tags(target.experiment_id, missing)

    # -- runs ------------------------------------------------------------------------------------

    def run_tags(self, run: RunRecord, arts: list[ArtifactRecord]) -> dict[str, str]:
        tags = {k: v for k, v in run.tags if k not in (PARENT_TAG, PENDING_PARENT_TAG)}
        name_tag = tags.get(RUN_NAME_TAG)
        if name_tag is not None and run.run_name is not None and name_tag != run.run_name:
            # MLflow refuses a run whose name and mlflow.runName tag differ; the name wins.
            del tags[RUN_NAME_TAG]
            self.notes().append(
                f"run {run.run_id}: tag {RUN_NAME_TAG}={name_tag[:60]!r} differs from the run "
                f"name {run.run_name[:60]!r}: the run name is kept"
            )
        if self.lineage:
            tags.update(run_source_tags(run, self.origin))
        tags[SOURCE_RUN_TAG] = run.run_id
        tags[STATE_TAG] = self.state(run, arts)
        tags[INCOMPLETE_TAG] = "true"
        return _fit(tags, RUN_TAG_VALUE_LIMIT, f"run {run.run_id}", self.notes())

    def state(self, run: RunRecord, arts: list[ArtifactRecord]) -> str:
        """The run's :data:`.STATE_TAG`: this archive's pack time, then what it holds of the
        run (:func:`.source_state`), ``arts`` being its files."""
        digest = source_state(run, run.metric_points, arts)
        return f"{self.origin.created_at} {digest}"

    def home(self, run: RunRecord, target: _Target) -> str | None:
        """The target run ``run`` was itself copied from, if it is in ``target``: the archive
        was packed from an earlier unpack's target and comes back to the source (A -> B -> A).
        That run, made by no unpack, is left as it is and stands for ``run``."""
        origin = dict(run.tags).get(SOURCE_RUN_TAG)
        return origin if origin in target.foreign else None

    def plan(self, run: RunRecord, arts: list[ArtifactRecord], found: ExistingRun | None) -> str:
        """What the run needs: ``create``, ``resume`` (a copy left unfinished), ``update`` (a
        complete copy made from an older archive that held less or other) or ``complete``."""
        if found is None:
            return "create"
        if found.incomplete:
            return "resume"
        want = self.state(run, arts).partition(" ")[2]
        made_at, _, digest = (found.state or "").partition(" ")
        if digest == want:  # the same contents, whichever pack they came from
            return "complete"
        if not newer_copy(found.state, self.origin.created_at, want):
            return "update"
        # a newer archive, or one of the same pack time (not to be ordered)
        self.notes().append(
            f"run {run.run_id}: its copy {found.run_id} was made from "
            + ("a newer archive" if made_at > self.origin.created_at else "another archive")
            + f" packed at {made_at}; left as it is"
        )
        return "complete"

    def late_tags(self, run: RunRecord) -> dict[str, str]:
        """The parent link (§7): the parent's copy, in this archive or made by an earlier
        unpack; else the source id, with the pending tag that lets a later unpack link it."""
        parent = dict(run.tags).get(PARENT_TAG)
        if parent is None:
            return {}
        copy = self.run_ids.get(parent) or self.outside_parents.get(parent)
        if copy is not None or not parent or not looks_like_run_id(parent):
            return {PARENT_TAG: copy or parent}
        return {PARENT_TAG: parent, PENDING_PARENT_TAG: parent}

    def params(self, run: RunRecord) -> list[tuple[str, str]]:
        out = []
        for key, value in run.params:
            if len(value) > PARAM_VALUE_LIMIT:
                self.notes().append(
                    f"run {run.run_id}: param {key!r} value cut from {len(value)} "
                    f"to {PARAM_VALUE_LIMIT} chars"
                )
                value = value[:PARAM_VALUE_LIMIT]
            out.append((key, value))
        return out

    def files_ahead(self, item: _Item) -> _Item:
        """A new run's files, written before :meth:`fill` (which then skips them), on the pool
        while the one writer fills earlier runs: file creation is the other half of a small
        run's unpack into a database with local artifacts. The run stays incomplete until
        :meth:`fill` ends it, so a stop in between leaves it to be resumed, files and all."""
        run, points, existing, arts, _ = item
        if existing is not None or not arts:
            return item
        self.sink.put_artifacts(self.run_ids[run.run_id], arts, self.reader.extract_artifact)
        return run, points, existing, arts, True

    def fill(self, item: _Item) -> int:
        self.check_lock()
        run, points, existing, arts, files_written = item
        new_id = self.run_ids[run.run_id]
        if existing is not None and existing.lifecycle_stage == "deleted":
            self.sink.restore_run(new_id)
        if existing is not None:  # resumed or updated: bookkeeping and lineage from this archive,
            # the incomplete marker first of all for an update (an interruption then resumes it)
            self.sink.log_params_and_tags(new_id, [], self.run_tags(run, arts))
        # Python objects for one slice at a time; a long run's row groups decoded as needed.
        pieces = points.slices(METRIC_SLICE) if points is not None else ()
        self.sink.log_run_data(new_id, self.params(run), self.late_tags(run), pieces)
        self.sink.log_inputs(new_id, run.inputs)
        if arts and not files_written:
            self.sink.put_artifacts(new_id, arts, self.reader.extract_artifact)
        self.sink.finish_run(new_id, run)
        return points.num_rows if points is not None else 0

    def _runs_in(self, wanted: set[str]) -> Iterator[tuple[RunRecord, list[ArtifactRecord]]]:
        """The archive's runs of ``wanted`` with their files, in run id order, read a chunk at
        a time."""
        for chunk, artifacts in self.reader.iter_runs_with_artifacts():
            for run in chunk:
                if run.run_id in wanted:
                    yield run, artifacts.get(run.run_id, [])

    def _with_metrics(self, targets: dict[str, _Target]) -> Iterator[_Item]:
        """Each run to fill with its metric points, in run id order: a merge of the runs with
        the metrics table (also in run id order), each streamed once."""
        metrics = self.reader.iter_run_metrics()
        pending = next(metrics, None)
        for run, arts in self._runs_in(self.to_fill):
            while pending is not None and pending[0] < run.run_id:
                pending = next(metrics, None)
            points = pending[1] if pending is not None and pending[0] == run.run_id else None
            existing = targets[run.experiment_id].existing.get(run.run_id)
            self.report.artifacts += len(arts)
            yield run, points, existing, arts, False

    def plan_runs(self, by_source: dict[str, _Target]) -> None:
        """What each run of the archive needs (:meth:`plan`), one pass over them: the runs to
        create and to fill, the copies found, and which experiments get runs written."""
        for chunk, artifacts in self.reader.iter_runs_with_artifacts():
            for run in chunk:
                target = by_source[run.experiment_id]
                found = target.existing.get(run.run_id)
                origin = self.home(run, target) if found is None else None
                if origin is not None:
                    self.run_ids[run.run_id] = origin
                    self.first_home = self.first_home or run.run_id  # runs come in id order
                    self.home_runs += 1
                    self.report.runs_already_complete += 1
                    continue
                plan = self.plan(run, artifacts.get(run.run_id, []), found)
                if plan != "complete":
                    target.work = True
                    self.to_fill.add(run.run_id)
                if run.deleted:
                    self.deleted.append((run.run_id, run.experiment_id, plan != "complete"))
                if found is None:
                    self.to_create.add(run.run_id)
                    continue
                self.run_ids[run.run_id] = found.run_id
                if plan == "resume":
                    self.report.runs_resumed += 1
                elif plan == "update":
                    self.report.runs_updated += 1
                else:
                    self.report.runs_already_complete += 1

    def run(self) -> None:
        self.check_plan()
        targets = [self.find_experiment(exp) for exp in self.experiments]
        by_source = {t.source.experiment_id: t for t in targets}
        self.plan_runs(by_source)
        experiments: dict[str, str] = {}
        for t in targets:
            self.place_experiment(t)
            experiments[t.source.experiment_id] = t.experiment_id
        self.report.id_map["experiments"] = experiments
        if self.first_home is not None:
            first = self.first_home
            self.notes().append(
                f"{self.home_runs} run(s) (first: {first}, a copy of {self.run_ids[first]}) "
                "are copies of runs of this target that no unpack made (the archive came back "
                "to its source): those runs are left as they are and stand for them"
            )

        def create(batch: list[tuple[RunRecord, list[ArtifactRecord]]]) -> list[tuple[str, str]]:
            self.check_lock()
            target = by_source[batch[0][0].experiment_id]
            made = self.sink.create_runs(
                target.experiment_id, [(run, self.run_tags(run, arts)) for run, arts in batch]
            )
            return [(run.run_id, new_id) for (run, _), new_id in zip(batch, made, strict=True)]

        writers = 1 if self.sink.one_writer else self.workers
        batches = _batches(self._runs_in(self.to_create), self.sink.runs_created_together)
        for pairs in ordered_map(create, batches, writers):
            for source_id, new_id in pairs:
                self.run_ids[source_id] = new_id
                self.report.runs_created += 1
        self.to_create = set()  # made: their ids are in run_ids
        bar = Progress("unpack", len(self.to_fill), enabled=self.progress)
        items = self._with_metrics(by_source)
        with ExitStack() as stack:
            if writers == 1 and self.workers > 1:
                ahead = ordered_map(self.files_ahead, items, self.workers, ahead=self.workers)
                stack.callback(ahead.close)  # on a failure, its pool stops and is waited for
                items = ahead
            for points in ordered_map(self.fill, items, writers):
                self.report.metric_points += points
                bar.advance()
        self.sink.end_runs()  # the last group of new runs' ends
        bar.close()
        self.to_fill = set()  # filled
        self.run_map, self.run_ids = IdMap.of(self.run_ids), {}
        self.report.id_map["runs"] = self.run_map
        self.link_children()
        self.write_families()
        self.apply_lifecycle(targets)

    def link_children(self) -> None:
        """Link the target's runs still waiting for a parent (§7) that this archive holds or
        whose copy was found: those with the pending tag, in any experiment, and this
        archive's copies that still name the source parent (written when its copy was not
        there yet, or by an unpack before pending tags). Their pending tag is removed."""
        todo = dict(waiting_children(self.sink))
        mine = {
            self.run_map[child]: parent
            for child, parent in self.dangling
            if parent in self.outside_parents and child in self.run_map
        }
        if mine:
            for run_id, parent in children_naming(self.sink, set(mine.values())):
                if mine.get(run_id) == parent:
                    todo[run_id] = parent
        linked = []
        for run_id, parent in sorted(todo.items()):
            copy = self.run_map.get(parent) or self.outside_parents.get(parent)
            if copy is not None and copy != run_id:
                self.check_lock()
                link_parent(self.sink, run_id, copy)
                linked.append(run_id)
        if linked:
            self.notes().append(
                f"{len(linked)} run(s) unpacked before their parent (first: {linked[0]}) now "
                f"name its copy in {PARENT_TAG}"
            )

    def write_families(self) -> None:
        """Logged models, then the registry (its versions point at runs and logged models),
        traces and evaluation datasets; before deletions, which would block these writes."""
        from .eval_datasets import write_eval_datasets
        from .logged_models import write_logged_models
        from .registry import write_registry
        from .traces import write_traces

        rows = self.reader.family_rows()
        if not any(rows.values()):
            return
        scope = UnpackScope(
            client=self.sink.client,
            call=self.sink.call,
            tracking_uri=self.sink.uri,
            experiments=self.report.id_map["experiments"],
            runs=self.run_map,
            run_artifact_uris=self.artifact_uris(rows),
            origin=self.origin if self.lineage else None,
            notes=self.report.notes,
            workers=self.workers,
        )
        counts = self.report.families
        counts.update(
            write_logged_models(
                scope, rows, self.reader.model_artifacts(), self.reader.extract_artifact
            )
        )
        registry_counts, versions = write_registry(scope, rows)
        counts.update(registry_counts)
        counts.update(write_traces(scope, rows))
        counts.update(write_eval_datasets(scope, rows))
        self.report.id_map["logged_models"] = dict(sorted(scope.logged_models.items()))
        self.report.id_map["model_versions"] = versions

    def artifact_uris(
        self, rows: dict[str, list[dict[str, Any]]]
    ) -> dict[str, tuple[str | None, str | None]]:
        """(source, target) artifact URI of each run a model version points at."""
        wanted = {
            v["run_id"] for v in rows.get("model_versions", []) if v["run_id"] in self.run_map
        }
        if not wanted:
            return {}
        return {
            run.run_id: (run.artifact_uri, self.sink.artifact_uri(self.run_map[run.run_id]))
            for run, _ in self._runs_in(wanted)
        }

    def apply_lifecycle(self, targets: list[_Target]) -> None:
        """Delete, last, what the source had deleted (deleted objects refuse writes)."""
        by_source = {t.source.experiment_id: t for t in targets}
        for run_id, experiment_id, filled in self.deleted:
            target = by_source[experiment_id]
            found = target.existing.get(run_id)
            active_now = filled or target.restored or found is None
            if active_now or (found is not None and found.lifecycle_stage != "deleted"):
                self.sink.delete_run(self.run_map[run_id])
        for target in targets:
            if not target.source.deleted or (target.was_deleted and not target.restored):
                continue
            # An experiment that was deleted before unpack restored it goes back to deleted,
            # whatever else it holds; only one that was active is guarded for foreign runs.
            if target.foreign and not target.was_deleted:
                self.notes().append(
                    f"experiment {target.source.name!r} is deleted in the archive but was left "
                    f"active in the target: it holds {len(target.foreign)} runs unpack did not make"
                )
                continue
            now = self.sink.find_experiment(target.source.name)
            if now is not None and now.lifecycle_stage != "deleted":
                self.sink.delete_experiment(target.experiment_id)


def unpack(
    archive: str | os.PathLike[str],
    *,
    tracking_uri: str | None = None,
    import_source_tags: bool = False,
    workers: int = 4,
    progress: bool | None = None,
    check: bool = True,
    say: Callable[[str], None] = lambda _text: None,
    artifacts_destination: str | None = None,
) -> UnpackReport:
    """Write the archive's experiments and runs into ``tracking_uri`` (idempotent, resumable),
    then (with ``check``) prove the target holds everything the archive does.

    ``artifacts_destination``: with a database URI, the ``--artifacts-destination`` of the
    server that serves it (see :mod:`.artifact_roots` and :class:`.sink.MlflowSink`)."""
    started = time.perf_counter()
    uri = resolve_tracking_uri(tracking_uri)
    verify(archive, progress=progress).raise_if_failed()
    with ExitStack() as held:
        with ArchiveReader(archive) as reader:
            sink = open_sink(uri, ArtifactRoots(artifacts_destination))
            held.callback(sink.close)
            report = UnpackReport(os.fspath(archive), reader.digest, redact_uri(uri))
            try:
                with TargetLock(sink, say) as lock:
                    if lock.note:
                        report.notes.append(lock.note)
                    _Unpacker(
                        reader, sink, import_source_tags, workers, progress, report, lock.check
                    ).run()
                    lock.check()  # lost during the last writes: no success to report
            finally:
                report.retries = sink.call.retries
                report.notes.extend(sink.notes)
        proof = check_against(archive, sink=sink, workers=workers) if check else None
    if proof is not None:
        report.runs_checked = proof.runs_checked
        if not proof.ok:
            raise TargetError(
                f"unpack finished but the target does not hold everything in the archive: "
                f"{proof.problems[0]}"
                + (f" (and {len(proof.problems) - 1} more)" if len(proof.problems) > 1 else ""),
                where=report.tracking_uri,
                hint="run the same unpack again; 'exim-archive verify ARCHIVE --against URI' "
                "lists every problem",
            )
    report.seconds = time.perf_counter() - started
    return report
