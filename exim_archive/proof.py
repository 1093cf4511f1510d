"""The proof after unpack: the target checked against the archive, object by object.

For every experiment: it exists under its name with the archive's lifecycle. For every run: it
exists once (found by its source-run tag), is complete, has the archive's lifecycle, every param
and every source tag with its value (as unpack's limits rule wrote it), as many distinct metric
points per key, and every artifact file with its size. Then the families of format 1.1 (see
:mod:`.family_proof`). Used at the end of ``unpack`` and by ``verify --against``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import islice

import pyarrow as pa
import pyarrow.compute as pc

from .artifact_roots import ArtifactRoots
from .bundle_reader import ArchiveReader
from .errors import TargetError
from .histories import HistoryReader
from .id_map import IdMap
from .lineage import (
    BOOKKEEPING_PREFIX,
    INCOMPLETE_TAG,
    PREFIX,
    SOURCE_RUN_TAG,
    STATE_TAG,
    newer_copy,
    source_state,
)
from .parent_links import PARENT_TAG, copies_of
from .pool import ordered_map
from .records import ArtifactRecord, RunRecord
from .run_order import RunOrdered
from .sink import (
    KEY_LIMIT,
    PARAM_VALUE_LIMIT,
    RUN_TAG_VALUE_LIMIT,
    MlflowSink,
    RunContents,
    open_sink,
)
from .source import MlflowSource
from .sql_source import SqlSource, open_sql_source
from .uri import redact_uri, resolve_tracking_uri

__all__ = ["ProofReport", "check_against"]

MAX_PROBLEMS = 100
LIST_WORKERS = 16


@dataclass
class ProofReport:
    """Whether the target holds everything the archive does; ``problems`` says what is not."""

    archive: str
    tracking_uri: str
    runs_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)


_DISTINCT = pa.schema([("run_id", pa.string()), ("key", pa.string()), ("new_sum", pa.int64())])


def _distinct_points(reader: ArchiveReader) -> RunOrdered:
    """Distinct (key, step, timestamp, value) points per run and key (what a store keeps), as
    ``(run_id, key, new_sum)`` rows handed out a chunk of runs at a time; a run and key whose
    points span row groups has a row per group (add them up).

    The metrics table is sorted by (run_id, key, step, timestamp, value), so equal points sit
    next to each other: a point is new when it differs from the one before. One row group at a
    time, whatever the length of a history."""

    def groups() -> Iterator[pa.Table]:
        last: tuple[object, ...] | None = None
        for batch in reader.iter_metric_batches():
            if not len(batch):
                continue
            values = pc.cast(batch.column("value"), pa.float64()).to_numpy(zero_copy_only=False)
            cols = [
                batch.column("run_id"),
                batch.column("key"),
                batch.column("step"),
                batch.column("timestamp"),
                pa.array(values.view("int64")),
            ]
            n = len(batch)
            new = pc.not_equal(cols[0].slice(1), cols[0].slice(0, n - 1))
            for col in cols[1:]:
                new = pc.or_(new, pc.not_equal(col.slice(1), col.slice(0, n - 1)))
            first = tuple(c[0].as_py() for c in cols)
            flags = pa.concat_arrays([pa.array([first != last]), new])
            last = tuple(c[n - 1].as_py() for c in cols)
            table = pa.table({"run_id": cols[0], "key": cols[1], "new": pc.cast(flags, pa.int64())})
            sums = table.group_by(["run_id", "key"]).aggregate([("new", "sum")])
            yield sums.select(_DISTINCT.names).cast(_DISTINCT).sort_by("run_id")

    return RunOrdered(groups(), _DISTINCT)


def _point_counts(rows: pa.Table) -> dict[str, dict[str, int]]:
    """``run_id -> key -> distinct points`` of rows from :func:`_distinct_points`."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for row in rows.to_pylist():
        run = out[row["run_id"]]
        run[row["key"]] = run.get(row["key"], 0) + row["new_sum"]
    return out


def _expected_value(value: str, limit: int) -> str:
    return value[:limit]


def check_run(
    report: ProofReport,
    run: RunRecord,
    got: RunContents | None,
    points: dict[str, int],
    files: dict[str, int],
    run_ids: Mapping[str, str],
    outside_parents: Mapping[str, str],
) -> None:
    """``run_ids``: source run id -> its copy; ``outside_parents``: the same for parents that
    are not in the archive but were copied into the target by an earlier unpack (§7)."""
    label = f"run {run.run_id} ({run.run_name or 'unnamed'})"
    if got is None:
        report.add(f"{label}: missing in the target")
        return
    if INCOMPLETE_TAG in got.tags:
        report.add(f"{label}: only partly written (run unpack again to finish it)")
    if got.lifecycle_stage != run.lifecycle_stage:
        report.add(f"{label}: is {got.lifecycle_stage} in the target, {run.lifecycle_stage} here")
    for key, value in run.params:
        if got.params.get(key) != _expected_value(value, PARAM_VALUE_LIMIT):
            report.add(f"{label}: param {key!r} is missing or differs")
    for key, value in run.tags:
        if len(key) > KEY_LIMIT or key.startswith(BOOKKEEPING_PREFIX):
            continue  # bookkeeping: this unpack's own values (the copy was found by them)
        if key.startswith(f"{PREFIX}.") and key in got.tags:
            continue  # an earlier unpack's lineage tag: this one's lineage may replace it
        want = (
            run_ids.get(value) or outside_parents.get(value, value)
            if key == PARENT_TAG
            else _expected_value(value, RUN_TAG_VALUE_LIMIT)
        )
        if key == "mlflow.runName" and value != run.run_name:
            continue
        if got.tags.get(key) != want:
            report.add(f"{label}: tag {key!r} is missing or differs")
    for key, count in sorted(points.items()):
        have = got.points.get(key, 0)
        if have != count:
            report.add(f"{label}: metric {key!r} has {have} points in the target, {count} here")
    for path, size in sorted(files.items()):
        if got.files.get(path) != size:
            report.add(f"{label}: artifact {path!r} is missing or has another size")


def check_against(
    archive: str | os.PathLike[str],
    *,
    tracking_uri: str | None = None,
    sink: MlflowSink | None = None,
    workers: int = 8,
) -> ProofReport:
    """Check that ``tracking_uri`` holds everything in ``archive`` (as unpack writes it).

    The target is read the way ``pack`` reads a source, in bulk: first the ids of its runs and
    their source-run tags, then, a chunk of the archive's runs at a time
    (:data:`.bundle_reader.RUNS_AT_A_TIME`), the copies' params and tags by id, their histories
    through :class:`HistoryReader` and one artifact listing per run with files.
    """
    uri = resolve_tracking_uri(tracking_uri) if sink is None else sink.uri
    report = ProofReport(os.fspath(archive), redact_uri(uri))
    with ArchiveReader(archive) as reader, ExitStack() as cleanup:
        if sink is None:  # a check only: MLflow would make a store where none is
            MlflowSource.check_exists(uri, TargetError)
            sink = open_sink(uri, ArtifactRoots())
            cleanup.callback(sink.close)
        hint = "run the same unpack again, or check the target"
        target: MlflowSource | SqlSource = open_sql_source(
            uri, sink.artifact_roots, error=TargetError, hint=hint
        ) or MlflowSource(uri, error=TargetError, hint=hint)
        cleanup.callback(target.close)
        points = _distinct_points(reader)
        experiment_ids = []
        experiment_map: dict[str, str] = {}
        for exp in reader.experiments():
            found = sink.find_experiment(exp.name)
            if found is None:
                report.add(f"experiment {exp.name!r}: missing in the target")
                continue
            experiment_ids.append(found.experiment_id)
            experiment_map[exp.experiment_id] = found.experiment_id
            if found.lifecycle_stage != exp.lifecycle_stage:
                report.add(
                    f"experiment {exp.name!r}: is {found.lifecycle_stage} in the target, "
                    f"{exp.lifecycle_stage} here"
                )
        # The target's copy of each source run (the smallest run id, if there are more): ids
        # only, as Arrow columns, so what the proof holds per run stays small; the runs are
        # read a chunk at a time.
        run_ids, copies, others = _copies(target.run_tag(experiment_ids, SOURCE_RUN_TAG))
        dangling = reader.dangling_run_references(PARENT_TAG)
        outside = copies_of(sink, {parent for _, parent in dangling}) if dangling else {}
        known = _Target(target, sink, experiment_ids, copies, others, run_ids, outside, workers)
        # the archive's runs a chunk at a time (bundle_reader.RUNS_AT_A_TIME): for every run the
        # proof keeps only its copies' ids and its distinct point counts per key
        for chunk, artifacts in reader.iter_runs_with_artifacts():
            ids = pa.array([run.run_id for run in chunk], pa.string())
            _check_chunk(report, chunk, artifacts, known, reader, _point_counts(points.of(ids)))
        from .family_proof import check_families  # the family modules load only when needed

        writer = sink  # the sink as a name the lambda keeps (its client opens only for families)
        check_families(report, reader, lambda: writer.client, sink.call, uri, experiment_map)
    return report


@dataclass
class _Target:
    """What the proof knows of the target for every chunk of runs."""

    source: MlflowSource | SqlSource
    sink: MlflowSink
    experiment_ids: list[str]
    copies: dict[str, int]
    """How many copies a source run has in the target, of those with more than one."""
    others: IdMap
    """Ids of the target's runs that no unpack made (each its own value: a sorted set)."""
    run_ids: IdMap
    """Source run id -> the copy checked (the smallest id)."""
    outside_parents: dict[str, str]
    """Parents not in the archive -> their copies in the target, where there are."""
    workers: int


def _check_chunk(
    report: ProofReport,
    chunk: list[RunRecord],
    artifacts: dict[str, list[ArtifactRecord]],
    target: _Target,
    reader: ArchiveReader,
    points: dict[str, dict[str, int]],
) -> None:
    """Check one chunk of the archive's runs: their copies, counts, files and listings are read
    for these runs only."""
    created_at = reader.manifest.created_at
    files = {run_id: {a.path: a.size for a in arts} for run_id, arts in artifacts.items()}
    ids = [r.run_id for r in chunk]
    copy_ids = dict(zip(ids, target.run_ids.values_of(ids), strict=True))
    wanted = [c for c in copy_ids.values() if c is not None]
    found = {run.run_id: run for run in target.source.runs_by_id(target.experiment_ids, wanted)}
    counts = _target_counts(target.source, list(found.values()), target.workers)
    # Only runs with files in the archive are listed, many at once: a listing is one call
    # per folder, each mostly waiting on the server (~45 ms on a default mlflow server).
    with_files = [
        found[copy_id]
        for r in chunk
        if files.get(r.run_id) and (copy_id := copy_ids[r.run_id]) in found
    ]
    sink = target.sink
    listed = dict(
        ordered_map(
            lambda r: (r.run_id, sink.files(r.run_id, r.artifact_uri)),
            with_files,
            max(target.workers, LIST_WORKERS),
        )
    )
    for run in chunk:
        copy_id = copy_ids[run.run_id]
        if copy_id is None and dict(run.tags).get(SOURCE_RUN_TAG) in target.others:
            report.runs_checked += 1  # a copy of a target run: unpack leaves that run
            continue
        if run.run_id in target.copies:
            report.add(f"run {run.run_id}: {target.copies[run.run_id]} copies in the target")
        got = None
        copy = found.get(copy_id) if copy_id is not None else None
        if copy is not None:
            state = source_state(run, run.metric_points, artifacts.get(run.run_id, []))
            if newer_copy(dict(copy.tags).get(STATE_TAG), created_at, state):
                report.runs_checked += 1  # made from a newer archive: unpack leaves it
                continue
            got = RunContents(
                lifecycle_stage=copy.lifecycle_stage,
                params=dict(copy.params),
                tags=dict(copy.tags),
                points=counts.get(copy.run_id, {}),
                files=listed.get(copy.run_id, {}),
            )
        check_run(
            report,
            run,
            got,
            points.get(run.run_id, {}),
            files.get(run.run_id, {}),
            target.run_ids,
            target.outside_parents,
        )
        report.runs_checked += 1


def _copies(pairs: Iterable[tuple[str, str | None]]) -> tuple[IdMap, dict[str, int], IdMap]:
    """From ``(target run id, its source run tag or None)``: the copy of each source run (the
    smallest id), how many copies the runs with more than one have, and the runs no unpack
    made; gathered 10,000 runs at a time into Arrow, not Python strings."""
    tagged: list[pa.Table] = []
    untagged: list[pa.ChunkedArray] = []
    rest = iter(pairs)
    for batch in iter(lambda: list(islice(rest, 10_000)), []):
        runs, sources = zip(*batch, strict=True)
        table = pa.table({"k": pa.array(sources, pa.string()), "v": pa.array(runs, pa.string())})
        tagged.append(table.filter(pc.is_valid(table["k"])))
        untagged.append(table.filter(pc.is_null(table["k"]))["v"])
    if not tagged:
        return IdMap(), {}, IdMap()
    table = pa.concat_tables(tagged).sort_by([("k", "ascending"), ("v", "ascending")])
    keys = table["k"].combine_chunks()
    starts = pc.not_equal(keys.slice(1), keys.slice(0, max(len(keys) - 1, 0)))  # a new source
    firsts = table.filter(pa.concat_arrays([pa.array([True][: len(keys)], pa.bool_()), starts]))
    counts = table.group_by("k").aggregate([("v", "count")])
    many = counts.filter(pc.greater(counts["v_count"], 1))
    alone = pa.chunked_array(untagged, pa.string()).combine_chunks()
    alone = alone.take(pc.sort_indices(alone))
    return (
        IdMap(firsts["k"].combine_chunks(), firsts["v"].combine_chunks()),
        dict(zip(many["k"].to_pylist(), many["v_count"].to_pylist(), strict=True)),
        IdMap(alone, alone),
    )


def _target_counts(
    target: MlflowSource | SqlSource, runs: list[RunRecord], workers: int
) -> dict[str, dict[str, int]]:
    """Metric points per key of each target run (a store keeps each distinct point once)."""
    if isinstance(target, SqlSource):
        return target.point_counts(runs)
    reader = HistoryReader(target, workers)
    out: dict[str, dict[str, int]] = {}
    for start in range(0, len(runs), 200):
        out.update(reader.counts(runs[start : start + 200]))
    return out
