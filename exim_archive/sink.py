"""The sink: records written into an MLflow tracking server.

MLflow types start here. Calls go through :func:`translating`, so a failure leaves as one
:class:`TargetError` naming the server and the object. Runs are created through the store so that
``user_id``, ``start_time`` and every tag arrive exactly as the archive has them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from . import log_batch
from . import tables as T
from .artifact_roots import PROXIED, ArtifactRoots, files_under
from .errors import TargetError
from .lineage import INCOMPLETE_TAG, SOURCE_RUN_TAG, STATE_TAG
from .mlflow_errors import Caller, open_client
from .records import ArtifactRecord, DatasetInputRecord, RunRecord
from .source import search_runs
from .sql_metrics import Decided, LazyFastPath
from .sql_run_writer import RunEnd, RunStart
from .uri import redact_uri, uri_kind

if TYPE_CHECKING:
    from .sql_target import SqlTarget

__all__ = ["ExistingRun", "Fitted", "MlflowSink", "TargetExperiment", "fit_tags", "open_sink"]

# MLflow 3.17's limits (mlflow/utils/validation.py): unpack's limits rule applies them before
# writing, and the proof after unpack expects values as that rule wrote them.
KEY_LIMIT = 250
RUN_TAG_VALUE_LIMIT = 8000
PARAM_VALUE_LIMIT = 6000
EXPERIMENT_TAG_VALUE_LIMIT = 20000
EXPERIMENT_NAME_LIMIT = 500
REGISTRY_TAG_VALUE_LIMIT = 5000
"""Registered-model and model-version tag values: MLflow allows 100,000, but the database
columns are VARCHAR(5000) on PostgreSQL and MySQL."""
TRACE_TAG_VALUE_LIMIT = 8000


@dataclass(frozen=True)
class Fitted:
    """Tags cut to MLflow's limits, and what was cut."""

    tags: dict[str, str]
    notes: list[str]


def fit_tags(tags: Mapping[str, str], value_limit: int, what: str) -> Fitted:
    """Apply the one rule for values MLflow would reject: long keys skipped, long values cut."""
    out: dict[str, str] = {}
    notes: list[str] = []
    for key, value in tags.items():
        if len(key) > KEY_LIMIT:
            notes.append(f"{what}: tag key {key[:60]!r}... is over {KEY_LIMIT} chars: not written")
            continue
        if len(value) > value_limit:
            notes.append(f"{what}: tag {key!r} value cut from {len(value)} to {value_limit} chars")
            value = value[:value_limit]
        out[key] = value
    return Fitted(out, notes)


CREATE_BATCH = 100
"""New runs of one experiment created in one transaction on a database with direct SQL."""
END_GROUP_RUNS = 16
END_GROUP_POINTS = 50_000
"""New runs' ends go to a database with direct SQL in groups of up to this many runs and
held metric points, one transaction a group (:meth:`MlflowSink.finish_run`)."""
_RUN_STATUSES = frozenset({"RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"})
_LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"


@dataclass(frozen=True)
class TargetExperiment:
    experiment_id: str
    lifecycle_stage: str


@dataclass(frozen=True)
class ExistingRun:
    """A run already in the target that an earlier unpack made from source run ``source_run_id``."""

    run_id: str
    source_run_id: str
    incomplete: bool
    lifecycle_stage: str
    state: str | None = None
    """Its :data:`.STATE_TAG`: which archive, and what of the source run, it was made from."""


@dataclass(frozen=True)
class _Held:
    """What a new run keeps for its end on a database with direct SQL (:meth:`finish_run`)."""

    params: list[tuple[str, str]]
    tags: dict[str, str]
    points: pa.Table | None
    """Its last piece of metric points (the earlier ones are written as they come)."""


def _run_start(run: RunRecord, tags: Mapping[str, str]) -> RunStart:
    """How a new run for ``run`` starts: MLflow's defaults for a missing user (``unknown``) and
    start time (now); tags in key order."""
    return RunStart(
        run.user_id if run.user_id is not None else "unknown",
        run.start_time if run.start_time is not None else int(time.time() * 1000),
        dict(sorted(tags.items())),
        run.run_name,
    )


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class MlflowSink:
    """Writes experiments, runs, metrics, inputs and artifacts to one tracking URI."""

    def __init__(
        self,
        tracking_uri: str,
        artifact_roots: ArtifactRoots | None = None,
        direct: SqlTarget | None = None,
    ) -> None:
        """``artifact_roots``: on a database URI, where the server that serves it keeps its
        ``mlflow-artifacts:/`` files (see :mod:`.artifact_roots`). Given a destination, new
        experiments get ``mlflow-artifacts:/<id>`` locations, as that server would give them,
        and run files are written under the destination.

        ``direct``: the same database written with plain SQL (:func:`open_sink`); MLflow's
        client is then opened only when a call needs it."""
        self.uri = tracking_uri
        self.artifact_roots = artifact_roots or ArtifactRoots()
        self.safe_uri = redact_uri(tracking_uri)
        # Runs of one experiment share dataset rows; MLflow's insert-if-absent races between
        # concurrent log_inputs calls (UNIQUE constraint on datasets), so they go one at a time.
        self._inputs_lock = threading.Lock()
        self._artifact_uris: dict[str, str | None] = {}
        """Of the runs this sink created and has not finished (they hold nothing but
        ``create_run``'s tags until they are filled)."""
        self._pending: dict[str, _Held] = {}
        """What new runs keep for :meth:`finish_run` (direct SQL)."""
        self._ends: list[tuple[str, RunEnd, pa.Table | None]] = []
        """Ends of new runs waiting for their group's transaction (:meth:`end_runs`)."""
        self._ends_lock = threading.Lock()
        self.call = Caller(
            TargetError,
            self.safe_uri,
            "fix the cause and run the same unpack again: it resumes where it stopped",
        )
        self.direct = direct
        self._client: Any = None
        self._client_lock = threading.Lock()
        self.notes: list[str] = []
        """Things worth telling about how this target was written (e.g. no direct SQL)."""
        # Metric points go through direct SQL on a database at a tested schema revision: known
        # from the start with ``direct``, else decided on first use (see sql_metrics).
        self._sql_metrics: LazyFastPath | Decided
        if direct is not None:
            self._sql_metrics = Decided(direct.metrics)
        else:  # connect now: an unreachable target fails before any work
            self._sql_metrics = LazyFastPath(self._store, tracking_uri, self.notes)

    @property
    def client(self) -> Any:
        """MLflow's client for the target, opened (and MLflow imported) on first use."""
        with self._client_lock:
            if self._client is None:
                client = open_client(self.uri, self.call)
                if self.artifact_roots.destination and uri_kind(self.uri) == "database":
                    # what the server's store is given
                    client._tracking_client.store.artifact_root_uri = f"{PROXIED}/"
                self._client = client
            return self._client

    @property
    def _store(self) -> Any:
        return self.client._tracking_client.store

    def close(self) -> None:
        """Let go of the direct SQL connections (MLflow's client keeps its own)."""
        if self.direct is not None:
            self.direct.close()

    # -- experiments ---------------------------------------------------------------------------

    def find_experiment(self, name: str) -> TargetExperiment | None:
        direct = self.direct
        if direct is not None:
            found = self.call(
                f"looking up experiment {name!r}", partial(direct.experiment_by_name, name)
            )
            return None if found is None else TargetExperiment(*found)
        exp = self.call(
            f"looking up experiment {name!r}", lambda: self.client.get_experiment_by_name(name)
        )
        return None if exp is None else TargetExperiment(exp.experiment_id, exp.lifecycle_stage)

    def create_experiment(self, name: str, tags: Mapping[str, str]) -> str:
        def landed() -> str | None:
            found = self.find_experiment(name)
            return None if found is None else found.experiment_id

        direct = self.direct
        create = (
            partial(direct.create_experiment, name, dict(tags))
            if direct is not None
            else lambda: self.client.create_experiment(name, tags=dict(tags))
        )
        return str(self.call(f"creating experiment {name!r}", create, before_retry=landed))

    def set_experiment_tags(self, experiment_id: str, tags: Mapping[str, str]) -> None:
        direct = self.direct
        if direct is not None:
            self.call(
                f"tagging experiment {experiment_id}",
                partial(direct.set_experiment_tags, experiment_id, tags),
            )
            return
        for key, value in sorted(tags.items()):
            self.call(
                f"tagging experiment {experiment_id}",
                partial(self.client.set_experiment_tag, experiment_id, key, value),
            )

    def experiment_tags(self, experiment_id: str) -> dict[str, str]:
        direct = self.direct
        if direct is not None:
            return self.call(
                f"reading experiment {experiment_id}",
                partial(direct.experiment_tags, experiment_id),
            )
        exp = self.call(
            f"reading experiment {experiment_id}", lambda: self.client.get_experiment(experiment_id)
        )
        return dict(exp.tags)

    def _experiment_stage_is(self, experiment_id: str, stage: str) -> bool | None:
        """For a retry: True if an earlier try already brought the experiment to ``stage``."""
        exp = self.client.get_experiment(experiment_id)
        return True if exp.lifecycle_stage == stage else None

    def restore_experiment(self, experiment_id: str) -> None:
        self.call(
            f"restoring experiment {experiment_id}",
            lambda: self.client.restore_experiment(experiment_id),
            before_retry=lambda: self._experiment_stage_is(experiment_id, "active"),
        )

    def delete_experiment(self, experiment_id: str) -> None:
        self.call(
            f"deleting experiment {experiment_id}",
            lambda: self.client.delete_experiment(experiment_id),
            before_retry=lambda: self._experiment_stage_is(experiment_id, "deleted"),
        )

    # -- runs ------------------------------------------------------------------------------------

    def existing_runs(
        self, experiment_id: str, source_run_id: str | None = None
    ) -> tuple[dict[str, ExistingRun], set[str]]:
        """Runs an earlier unpack made here (by source run id), and the ids of the other runs."""
        ours: dict[str, ExistingRun] = {}
        foreign: set[str] = set()
        for run_id, stage, tags in self._runs_of(experiment_id, source_run_id):
            source_id = tags.get(SOURCE_RUN_TAG)
            if source_id is None:
                foreign.add(run_id)
                continue
            found = ExistingRun(
                run_id, source_id, INCOMPLETE_TAG in tags, stage, tags.get(STATE_TAG)
            )
            previous = ours.get(source_id)
            # Two copies only arise from concurrent unpacks; prefer a complete, active one.
            if previous is None or (previous.incomplete, previous.run_id) > (
                found.incomplete,
                found.run_id,
            ):
                ours[source_id] = found
        return ours, foreign

    def _runs_of(
        self, experiment_id: str, source_run_id: str | None
    ) -> Iterator[tuple[str, str, Mapping[str, str]]]:
        """``(run id, lifecycle stage, tags)`` of every run of the experiment (deleted ones
        too), or of those made from ``source_run_id``."""
        direct = self.direct
        if direct is not None:
            keys = (SOURCE_RUN_TAG, INCOMPLETE_TAG, STATE_TAG)
            only = None if source_run_id is None else (SOURCE_RUN_TAG, source_run_id)
            runs = self.call(
                f"listing runs of experiment {experiment_id}",
                partial(direct.runs, experiment_id, keys, only),
            )
            for run in runs:
                yield run.run_id, run.lifecycle_stage, run.tags
            return
        filter_string = (
            "" if source_run_id is None else f"tags.`{SOURCE_RUN_TAG}` = '{source_run_id}'"
        )
        what = "listing runs of experiment {}"
        for run in search_runs(self.client, self.call, [experiment_id], filter_string, what):
            yield run.info.run_id, run.info.lifecycle_stage, run.data.tags

    def find_run(self, experiment_id: str, source_run_id: str) -> ExistingRun | None:
        """The run an earlier (or concurrent) unpack made from ``source_run_id``, if any."""
        found, _ = self.existing_runs(experiment_id, source_run_id)
        return found.get(source_run_id)

    def create_runs(
        self, experiment_id: str, batch: Sequence[tuple[RunRecord, Mapping[str, str]]]
    ) -> list[str]:
        """New runs for the source runs of ``batch``, each with its tags, in the experiment: on a
        database with direct SQL all in one transaction, elsewhere one MLflow ``create_run``
        each. Returns their ids, in order."""
        fast = self._sql_metrics.get()
        if fast is None:
            return [self._create_run(experiment_id, run, tags) for run, tags in batch]
        starts = [_run_start(run, tags) for run, tags in batch]

        def create() -> list[str]:
            made = fast.runs.create_many(experiment_id, starts)
            self._artifact_uris.update(made)
            return [run_id for run_id, _ in made]

        def landed() -> list[str] | None:
            # not idempotent: a reply lost on the way back may hide runs made; all or none
            # landed (one transaction), unless another unpack wrote in between
            only = batch[0][0].run_id if len(batch) == 1 else None
            found, _ = self.existing_runs(experiment_id, only)
            ids = [found[run.run_id].run_id for run, _ in batch if run.run_id in found]
            if not ids:
                return None
            if len(ids) < len(batch):
                raise TargetError(
                    f"{len(ids)} of {len(batch)} runs being created in experiment "
                    f"{experiment_id} appeared while unpack retried: another writer?",
                    where=self.safe_uri,
                    hint="run the same unpack again: it resumes where it stopped",
                )
            return ids

        first, last = batch[0][0].run_id, batch[-1][0].run_id
        what = (
            f"creating run for source run {first}"
            if len(batch) == 1
            else f"creating runs for source runs {first} .. {last} ({len(batch)})"
        )
        return self.call(what, create, before_retry=landed)

    def _create_run(self, experiment_id: str, run: RunRecord, tags: Mapping[str, str]) -> str:
        """One new run through MLflow's store (a tracking server, or no direct SQL)."""
        from mlflow.entities import RunTag

        start = _run_start(run, tags)

        def create() -> str:
            created = self._store.create_run(
                experiment_id=experiment_id,
                user_id=start.user_id,
                start_time=start.start_time,
                tags=[RunTag(k, v) for k, v in start.tags.items()],
                run_name=run.run_name,
            )
            self._artifact_uris[str(created.info.run_id)] = created.info.artifact_uri
            return str(created.info.run_id)

        def landed() -> str | None:
            # create_run is not idempotent: a reply lost on the way back may hide a run made.
            found = self.find_run(experiment_id, run.run_id)
            return None if found is None else found.run_id

        return self.call(f"creating run for source run {run.run_id}", create, before_retry=landed)

    def log_params_and_tags(
        self, run_id: str, params: Sequence[tuple[str, str]], tags: Mapping[str, str]
    ) -> None:
        """Params and tags, up to 100 of each in one ``log_batch`` call (each alone where
        large: :data:`.log_batch.RIDER_CHARS`)."""
        from mlflow.entities import Param, RunTag

        param_chunks = list(_chunks(params, log_batch.PARAMS_PER_BATCH))
        tag_chunks = list(_chunks(sorted(tags.items()), log_batch.TAGS_PER_BATCH))
        pairs: list[tuple[Sequence[tuple[str, str]], Sequence[tuple[str, str]]]] = []
        for i in range(max(len(param_chunks), len(tag_chunks))):
            some = param_chunks[i] if i < len(param_chunks) else ()
            more = tag_chunks[i] if i < len(tag_chunks) else ()
            if log_batch.text_size(some) + log_batch.text_size(more) <= log_batch.RIDER_CHARS:
                pairs.append((some, more))
            else:  # large values: each in its own request (a proxy may refuse bodies over 1 MB)
                pairs += [(some, ()), ((), more)]
        for some, more in pairs:
            batch = [Param(k, v) for k, v in some]
            tag_batch = [RunTag(k, v) for k, v in more]
            what = "params" if not tag_batch else "tags" if not batch else "params and tags"
            self.call(
                f"logging {what} of run {run_id}",
                partial(self.client.log_batch, run_id, params=batch, tags=tag_batch),
            )

    def log_run_data(
        self,
        run_id: str,
        params: Sequence[tuple[str, str]],
        tags: Mapping[str, str],
        pieces: Iterable[pa.Table],
    ) -> None:
        """A run's params, tags and metric points (``pieces``, in order).

        Over HTTP, params and tags that fit ride in the first ``log-batch`` request of points:
        one request fewer per run, which is what a server of many small runs spends its time
        on (each request ~10 ms of its CPU, whatever it carries). On a database with direct
        SQL, a run this sink created keeps its params, tags and last piece of points for
        :meth:`finish_run`, which writes them with its end in one transaction."""
        if run_id in self._artifact_uris and self._sql_metrics.get() is not None:
            last: pa.Table | None = None
            for piece in pieces:
                if last is not None:
                    self.log_metrics(run_id, last)
                last = piece if piece.num_rows else last
            self._pending[run_id] = _Held(list(params), dict(tags), last)
            return
        rider = log_batch.rider(params, tags) if uri_kind(self.uri) == "http" else None
        if rider is None:
            self.log_params_and_tags(run_id, params, tags)
        for piece in pieces:
            if rider is not None and piece.num_rows:
                self._post_points(run_id, piece, rider)
                rider = None
            else:
                self.log_metrics(run_id, piece)
        if rider is not None:  # no points to ride with
            self.log_params_and_tags(run_id, params, tags)

    @property
    def runs_created_together(self) -> int:
        """How many new runs of one experiment :meth:`create_runs` best takes at once: a batch
        (one transaction) with direct SQL, one elsewhere, where each is a call of its own and
        several go at once on the unpack's writers."""
        return CREATE_BATCH if self._sql_metrics.get() is not None else 1

    @property
    def one_writer(self) -> bool:
        """Whether runs are best filled one at a time: SQLite lets one connection write at a
        time and its busy handler sleeps (1, 2, 5 ... 100 ms) between tries, so more writer
        threads only wait longer (800,000 points: 4 threads 9.5 s, one 8.4 s)."""
        return self.uri.startswith("sqlite:")

    def log_metrics(self, run_id: str, points: pa.Table) -> None:
        fast = self._sql_metrics.get()
        if fast is not None:
            self.call(f"logging metrics of run {run_id}", partial(fast.write, run_id, points))
            return
        if uri_kind(self.uri) == "http":
            self._post_points(run_id, points)
            return
        from mlflow.entities import Metric

        keys = T.pylist(points.column("key"))
        steps = points.column("step").to_pylist()
        stamps = points.column("timestamp").to_pylist()
        values = points.column("value").to_pylist()
        metrics = [
            Metric(k, v, t, s) for k, v, t, s in zip(keys, values, stamps, steps, strict=True)
        ]
        for chunk in _chunks(metrics, log_batch.METRICS_PER_BATCH):
            self.call(
                f"logging metrics of run {run_id}",
                partial(self.client.log_batch, run_id, metrics=list(chunk)),
            )

    def _post_points(
        self, run_id: str, points: pa.Table, rider: log_batch.Rider | None = None
    ) -> None:
        """Points (and ``rider``'s params and tags, in the first) as ``log-batch`` bodies."""
        for what, body in log_batch.bodies(run_id, points, rider):
            self.call(f"logging {what} of run {run_id}", partial(self._log_batch, body))

    def _log_batch(self, body: dict[str, Any]) -> None:
        """POST one ``runs/log-batch`` body; errors as MLflow's client raises them."""
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        resp = http_request(self._store.get_host_creds(), _LOG_BATCH, "POST", json=body)
        verify_rest_response(resp, _LOG_BATCH)

    def log_inputs(self, run_id: str, inputs: Sequence[DatasetInputRecord]) -> None:
        if not inputs:
            return
        direct = self.direct
        if direct is not None:
            with self._inputs_lock:
                self.call(
                    f"logging dataset inputs of run {run_id}",
                    partial(direct.log_inputs, run_id, inputs),
                )
            return
        from mlflow.entities import Dataset, DatasetInput, InputTag

        datasets = [
            DatasetInput(
                Dataset(d.name, d.digest, d.source_type, d.source, d.schema, d.profile),
                [InputTag(k, v) for k, v in d.tags],
            )
            for d in inputs
        ]
        with self._inputs_lock:
            self.call(
                f"logging dataset inputs of run {run_id}",
                lambda: self.client.log_inputs(run_id, datasets=datasets),
            )

    def put_artifacts(
        self,
        run_id: str,
        records: Sequence[ArtifactRecord],
        extract: Callable[[ArtifactRecord, Path], None],
    ) -> None:
        """The run's files out of the archive (``extract(record, path)`` writes one, checked).

        Where the run keeps its files in a local folder (a database or file store, or a
        served location through ``--artifacts-destination``) they are written straight into
        it; elsewhere into a scratch folder first, then uploaded through MLflow's artifact
        repository (:meth:`log_artifacts`)."""
        folder = self._local_artifact_folder(run_id)
        if folder is not None:

            def write() -> None:
                for record in records:
                    extract(record, folder / record.path)

            self.call(f"writing artifacts of run {run_id}", write)
            return
        scratch = Path(tempfile.mkdtemp(prefix="exim-unpack-"))
        try:
            for record in records:
                extract(record, scratch / record.path)
            self.log_artifacts(run_id, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _local_artifact_folder(self, run_id: str) -> Path | None:
        """The local folder of the run's files, if that is where a database or file store
        keeps them (a served URI resolved through the destination)."""
        if uri_kind(self.uri) not in ("database", "file"):
            return None
        where = self._store_location(run_id)
        return ArtifactRoots.local_folder(where) if where else None

    def _store_location(self, run_id: str) -> str | None:
        """Where a database or file store's run keeps its files: its artifact URI, a served
        one resolved through the destination (MLflow cannot reach those from here)."""
        uri = self.artifact_uri(run_id)
        if not uri:
            return None
        return self._resolved(run_id, uri) if uri.startswith(PROXIED) else uri

    def log_artifacts(self, run_id: str, directory: Path) -> None:
        """Upload a folder's files into the run's artifact location, found from the URI
        ``create_run`` returned (MLflow's ``log_artifacts(run_id)`` reads the whole run again
        for it: a quarter of the time of a small run's unpack into SQLite)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        kind = uri_kind(self.uri)
        if kind == "http":
            uri = self.artifact_uri(run_id)
            repo = get_artifact_repository(uri, tracking_uri=self.uri) if uri else None
        else:
            where = self._store_location(run_id) if kind in ("database", "file") else None
            repo = get_artifact_repository(where) if where else None
        if repo is None:  # another kind of tracking URI: MLflow's way (it may add credentials)
            upload = partial(self.client.log_artifacts, run_id, os.fspath(directory))
        else:
            upload = partial(repo.log_artifacts, os.fspath(directory))
        self.call(f"uploading artifacts of run {run_id}", upload)

    def _resolved(self, run_id: str, artifact_uri: str) -> str:
        """Where a database target's run keeps its files (a served URI through the destination)."""
        return self.artifact_roots.located(
            run_id,
            artifact_uri,
            error=TargetError,
            where=self.safe_uri,
            other_ways="or unpack through the server's http:// URI",
        )

    def finish_run(self, run_id: str, run: RunRecord) -> None:
        """Set status and end time as the source had them, then drop the incomplete marker.
        Where :meth:`log_run_data` held the run's params, tags and last points (a new run,
        direct SQL), they go with its end in one transaction, shared by a group of such runs
        (:data:`END_GROUP_RUNS`): the group's last runs end at :meth:`end_runs`."""
        ends = run.status != "RUNNING" or run.end_time is not None
        held = self._pending.pop(run_id, None)
        self._artifact_uris.pop(run_id, None)  # filled: kept per run in flight, not per run made
        fast = self._sql_metrics.get()
        if held is not None and fast is not None:
            if ends and run.status not in _RUN_STATUSES:
                raise TargetError(
                    f"run {run.run_id} has status {run.status!r}, which MLflow does not know",
                    where=self.safe_uri,
                    hint="check the archive (exim-archive verify), then run unpack again",
                )
            status = run.status if ends else None
            end_time = run.end_time if ends else None
            end = RunEnd(held.params, held.tags, status, end_time, INCOMPLETE_TAG)
            with self._ends_lock:
                self._ends.append((run_id, end, held.points))
                held_points = sum(p.num_rows for _, _, p in self._ends if p is not None)
                if len(self._ends) < END_GROUP_RUNS and held_points < END_GROUP_POINTS:
                    return
                group, self._ends = self._ends, []
            self._end_group(group)
            return
        if ends:
            from mlflow.entities import RunStatus

            self.call(
                f"finishing run {run_id}",
                lambda: self._store.update_run_info(
                    run_id, RunStatus.from_string(run.status), run.end_time, run.run_name
                ),
            )
        self.call(
            f"finishing run {run_id}",
            lambda: self.client.delete_tag(run_id, INCOMPLETE_TAG),
            before_retry=partial(self._ended, run_id),
        )

    def end_runs(self) -> None:
        """End the new runs :meth:`finish_run` still holds (the last group): call it once every
        run is filled. Until then those runs keep their incomplete marker: a stop before this
        leaves them to be resumed."""
        with self._ends_lock:
            group, self._ends = self._ends, []
        if group:
            self._end_group(group)

    def _end_group(self, group: list[tuple[str, RunEnd, pa.Table | None]]) -> None:
        """One transaction for the ends of ``group`` (see :meth:`.SqlMetrics.finish_many`)."""
        fast = self._sql_metrics.get()
        assert fast is not None
        first = group[0][0]
        what = f"finishing run {first}" + (f" and {len(group) - 1} more" if group[1:] else "")
        # the group's transaction is all or none: its first run tells whether a lost reply hid
        # a commit that landed
        ended = partial(self._ended, first)
        self.call(what, partial(fast.finish_many, group), before_retry=ended)

    def _ended(self, run_id: str) -> bool | None:
        """For a retry of a run's end: True if an earlier try already dropped its marker."""
        tags = self.client.get_run(run_id).data.tags
        return None if INCOMPLETE_TAG in tags else True

    def artifact_uri(self, run_id: str) -> str | None:
        """The run's artifact URI: as create_run returned it, else read from the target."""
        if run_id in self._artifact_uris:
            return self._artifact_uris[run_id]
        run = self.call(f"reading run {run_id}", lambda: self.client.get_run(run_id))
        uri: str | None = run.info.artifact_uri
        return uri

    def _run_stage_is(self, run_id: str, stage: str) -> bool | None:
        """For a retry: True if an earlier try already brought the run to ``stage``."""
        return True if self.client.get_run(run_id).info.lifecycle_stage == stage else None

    def restore_run(self, run_id: str) -> None:
        self.call(
            f"restoring run {run_id}",
            lambda: self.client.restore_run(run_id),
            before_retry=lambda: self._run_stage_is(run_id, "active"),
        )

    def delete_run(self, run_id: str) -> None:
        self.call(
            f"deleting run {run_id}",
            lambda: self.client.delete_run(run_id),
            before_retry=lambda: self._run_stage_is(run_id, "deleted"),
        )

    # -- reading back, for the proof after unpack ------------------------------------------------

    def files(self, run_id: str, artifact_uri: str | None = None) -> dict[str, int]:
        """Every artifact file of the run with its size.

        Given the run's ``artifact_uri``, a local folder is walked directly and other storage
        (a server's ``mlflow-artifacts:`` included) listed through the run's own artifact
        repository, one call per folder: MLflow's ``list_artifacts(run_id)`` fetches the run
        again and searches its logged models for every folder."""
        if not artifact_uri:
            return self._files(run_id, None, partial(self.client.list_artifacts, run_id))
        http = uri_kind(self.uri) == "http"
        where = artifact_uri if http else self._resolved(run_id, artifact_uri)
        folder = None if http else ArtifactRoots.local_folder(where)
        if folder is not None:
            return {path: local.stat().st_size for path, local in files_under(folder)}
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = (
            get_artifact_repository(where, tracking_uri=self.uri)
            if http
            else get_artifact_repository(where)
        )
        return self._files(run_id, None, repo.list_artifacts)

    def _files(
        self, run_id: str, path: str | None, list_folder: Callable[[str | None], Any]
    ) -> dict[str, int]:
        listing = self.call(f"listing artifacts of run {run_id}", partial(list_folder, path))
        out: dict[str, int] = {}
        for info in listing:
            if info.is_dir:
                out.update(self._files(run_id, info.path, list_folder))
            else:
                out[info.path] = int(info.file_size or 0)
        return out


def open_sink(tracking_uri: str, artifact_roots: ArtifactRoots) -> MlflowSink:
    """The sink for ``tracking_uri``: on a database that :mod:`.sql_target` applies to, one that
    writes it with plain SQL and opens MLflow only for what that module leaves to it."""
    from .sql_target import open_sql_target  # SQLAlchemy loads only for a database URI

    direct = open_sql_target(tracking_uri, proxied=bool(artifact_roots.destination))
    return MlflowSink(tracking_uri, artifact_roots, direct)


@dataclass(frozen=True)
class RunContents:
    lifecycle_stage: str
    params: dict[str, str]
    tags: dict[str, str]
    points: dict[str, int]
    files: dict[str, int]
