"""The source: an MLflow tracking server read into records.

MLflow types stop here. Every call that can fail goes through a :class:`Caller`, which retries
transient failures and turns the rest into one :class:`SourceError` naming server and object.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from .artifact_roots import PROXIED, ArtifactRoots, files_under
from .errors import ArchiveError, SourceError
from .histories import HistoryReader
from .manifest import canonical_json
from .mlflow_errors import Caller, open_client
from .pages import iter_pages
from .records import DatasetInputRecord, ExperimentRecord, RunRecord
from .uri import redact_uri, uri_kind

__all__ = ["MlflowSource", "all_experiments", "search_runs"]

_PAGE = 50_000
RUN_PAGE = 2_000
"""Runs a ``search_runs`` page asks for. MLflow builds each as whole objects (10-15 KB for a run
with a few params, tags and metrics), so the 50,000 it allows would hold ~0.6 GB while the page
lasts: a page of 2,000 costs one call per 2,000 runs and ~30 MB."""


def _proto_json(entity: Any) -> str:
    """The entity's protobuf message as JSON (spec 1.0 §6.6); a ``tags`` list sorted by key
    (MLflow gives them in the database's row order, which a copy of the store does not keep)."""
    from google.protobuf.json_format import MessageToDict  # ~45 ms: only MLflow's path needs it

    raw = MessageToDict(entity.to_proto(), preserving_proto_field_name=True)
    if isinstance(raw.get("tags"), list):
        raw["tags"] = sorted(raw["tags"], key=lambda t: (t.get("key", ""), t.get("value", "")))
    return canonical_json(raw).decode("utf-8").rstrip("\n")


def _last_steps(run: Any) -> tuple[int, ...]:
    steps = {m.key: int(m.step) for m in getattr(run.data, "_metric_objs", [])}
    return tuple(steps.get(k, 0) for k in sorted(run.data.metrics))


def _sorted_tags(items: Any) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in items))


def all_experiments(client: Any, call: Caller) -> Iterator[Any]:
    """MLflow's experiments, deleted ones too, page by page."""
    from mlflow.entities import ViewType

    for page in iter_pages(
        call,
        "listing experiments",
        client.search_experiments,
        view_type=ViewType.ALL,
        max_results=_PAGE,
    ):
        yield from page


def search_runs(
    client: Any, call: Caller, experiment_ids: list[str], filter_string: str, what: str
) -> Iterator[Any]:
    """MLflow's runs (deleted ones too) from ``search_runs`` over the experiments, 100 a call,
    page by page; ``what`` names the read in messages, ``{}`` standing for the experiment ids."""
    from mlflow.entities import ViewType

    for start in range(0, len(experiment_ids), 100):
        ids = experiment_ids[start : start + 100]
        for page in iter_pages(
            call,
            what.format(", ".join(ids)),
            client.search_runs,
            experiment_ids=ids,
            filter_string=filter_string,
            run_view_type=ViewType.ALL,
            max_results=RUN_PAGE,
        ):
            yield from page


class MlflowSource:
    """Reads experiments, runs, metric histories and artifacts from one tracking URI."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        error: type[ArchiveError] = SourceError,
        hint: str = "check the server and the URI, then run pack again",
        artifact_roots: ArtifactRoots | None = None,
    ) -> None:
        """``error`` and ``hint``: how failures are reported (a target read back by the proof
        after unpack reports them as the target's); ``artifact_roots``: where a database's
        served (``mlflow-artifacts:``) artifacts are."""
        self.uri = tracking_uri
        self.safe_uri = redact_uri(tracking_uri)
        self.kind = uri_kind(tracking_uri)
        self.call = Caller(error, self.safe_uri, hint)
        self.notes: list[str] = []
        self._histories: HistoryReader | None = None
        self.artifact_roots = artifact_roots or ArtifactRoots()
        self.check_exists(tracking_uri, error)
        self.client = open_client(tracking_uri, self.call)

    @staticmethod
    def check_exists(uri: str, error: type[ArchiveError] = SourceError) -> None:
        """MLflow would create a missing sqlite file, or a file store in a missing or empty
        folder: what is read must exist."""
        if uri.startswith("sqlite:"):
            path = uri.split("///", 1)[-1] if "///" in uri else ""
            if path and path != ":memory:" and not os.path.exists(path):
                raise error(
                    "no such database file",
                    where=redact_uri(uri),
                    hint="check the path (sqlite:/// then an absolute or relative path)",
                )
        elif uri_kind(uri) == "file":
            folder = ArtifactRoots.local_folder(uri) or Path(uri)
            hint = "check the path: a file store is the folder that holds the experiment folders "
            hint += "(often ./mlruns)"
            if not folder.is_dir():
                raise error("no such folder", where=redact_uri(uri), hint=hint)
            if not any(folder.glob("*/meta.yaml")) and not (folder / ".trash").is_dir():
                raise error(
                    "not an MLflow file store (no experiment folder with a meta.yaml)",
                    where=redact_uri(uri),
                    hint=hint,
                )

    # -- experiments and runs -------------------------------------------------------------------

    def experiments(self, selection: list[str] | None) -> list[ExperimentRecord]:
        """The selected experiments (every one, deleted included, when ``selection`` is None)."""
        found: dict[str, Any] = {}
        if selection is None:
            for exp in all_experiments(self.client, self.call):
                found[exp.experiment_id] = exp
        else:
            for wanted in selection:
                exp = self._find_experiment(wanted)
                found[exp.experiment_id] = exp
        return [self._experiment_record(found[k]) for k in sorted(found)]

    def _find_experiment(self, wanted: str) -> Any:
        from mlflow.exceptions import MlflowException

        def lookup() -> Any:
            exp = self.client.get_experiment_by_name(wanted)
            if exp is None and wanted.isdigit():
                try:
                    exp = self.client.get_experiment(wanted)
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                        raise
            return exp

        exp = self.call(f"looking up experiment {wanted!r}", lookup)
        if exp is None:
            raise SourceError(
                f"no experiment named or numbered {wanted!r}",
                where=self.safe_uri,
                hint="check the name or id (mlflow experiments search lists them)",
            )
        return exp

    @staticmethod
    def _experiment_record(exp: Any) -> ExperimentRecord:
        return ExperimentRecord(
            experiment_id=str(exp.experiment_id),
            name=exp.name,
            artifact_location=exp.artifact_location,
            lifecycle_stage=exp.lifecycle_stage,
            creation_time=exp.creation_time,
            last_update_time=exp.last_update_time,
            tags=_sorted_tags(exp.tags.items()),
            source_json=_proto_json(exp),
        )

    def runs(self, experiment_ids: list[str]) -> list[RunRecord]:
        """Every run (deleted included) of the experiments, sorted by run_id (at once: pack
        reads them a chunk at a time, by id)."""
        what = "listing runs of experiments {}"
        out = [self._run_record(run) for run in self._search(experiment_ids, "", what)]
        out.sort(key=lambda r: r.run_id)
        return out

    def run_ids(self, experiment_ids: list[str]) -> list[str]:
        """The ids of every run (deleted included) of the experiments, sorted. MLflow lists
        whole runs: only their ids are kept."""
        what = "listing runs of experiments {}"
        return sorted(run.info.run_id for run in self._search(experiment_ids, "", what))

    def run_tag(self, experiment_ids: list[str], key: str) -> Iterator[tuple[str, str | None]]:
        """``(run id, value of its tag key or None)`` of every run (deleted included) of the
        experiments. MLflow lists whole runs: only the id and the one tag are kept."""
        for run in self._search(experiment_ids, "", "listing runs of experiments {}"):
            yield run.info.run_id, run.data.tags.get(key)

    def runs_by_id(self, experiment_ids: list[str], run_ids: list[str]) -> list[RunRecord]:
        """The runs with these ids (deleted included) among the experiments', sorted by run_id;
        ids not found are left out. ``search_runs`` with ``run_id IN (...)``, 100 ids a call."""
        out: list[RunRecord] = []
        for start in range(0, len(run_ids), 100):
            ids = run_ids[start : start + 100]
            listed = ", ".join("'" + i.replace("'", "") + "'" for i in ids)  # ids are hex
            what = f"reading {len(ids)} runs of experiments {{}}"
            found = self._search(experiment_ids, f"attributes.run_id IN ({listed})", what)
            out.extend(self._run_record(run) for run in found)
        out.sort(key=lambda r: r.run_id)
        return out

    def _search(self, experiment_ids: list[str], filter_string: str, what: str) -> Iterator[Any]:
        return search_runs(self.client, self.call, experiment_ids, filter_string, what)

    @staticmethod
    def _run_record(run: Any) -> RunRecord:
        info = run.info
        inputs = tuple(
            sorted(
                (
                    DatasetInputRecord(
                        name=d.dataset.name,
                        digest=d.dataset.digest,
                        source_type=d.dataset.source_type,
                        source=d.dataset.source,
                        schema=d.dataset.schema,
                        profile=d.dataset.profile,
                        tags=_sorted_tags((t.key, t.value) for t in d.tags),
                    )
                    for d in (run.inputs.dataset_inputs if run.inputs else [])
                ),
                key=lambda d: (d.name, d.digest),
            )
        )
        return RunRecord(
            run_id=info.run_id,
            experiment_id=str(info.experiment_id),
            run_name=info.run_name,
            user_id=info.user_id,
            status=info.status,
            start_time=info.start_time,
            end_time=info.end_time,
            lifecycle_stage=info.lifecycle_stage,
            artifact_uri=info.artifact_uri,
            params=_sorted_tags(run.data.params.items()),
            tags=_sorted_tags(run.data.tags.items()),
            inputs=inputs,
            metric_keys=tuple(sorted(run.data.metrics)),
            metric_last_steps=_last_steps(run),
            source_json=_proto_json(info),
        )

    # -- metric histories -----------------------------------------------------------------------

    def metric_histories(
        self, runs: list[RunRecord], workers: int
    ) -> dict[str, pa.Table | Iterator[pa.Table]]:
        """Every point of every metric of the runs, as ``metrics`` table slices per run.

        Bulk reads (up to 100 runs per call and key) where the source has them and they are
        complete; per run and key where not. See :mod:`.histories`.
        """
        if self._histories is None:
            self._histories = HistoryReader(self, workers)
            if self._histories.note:
                self.notes.append(self._histories.note)
        return self._histories.read(runs)

    # -- artifacts -------------------------------------------------------------------------------

    def download_artifacts(self, run: RunRecord, destination: Path) -> list[tuple[str, Path]]:
        """Download the run's whole artifact tree; returns (artifact path, local file) sorted."""
        uri = run.artifact_uri or ""
        if uri.startswith(PROXIED) and self.kind != "http":
            # MLflow cannot reach them from a database URI (and its error names no way out)
            return self.artifact_roots.run_files(self, run, destination)
        repo = self._artifact_repo(uri) if uri else None

        # MLflow's download of the whole tree lists it first (an empty run downloads nothing):
        # a listing of ours before it was one more request per run.
        def download() -> Path:
            shutil.rmtree(destination, ignore_errors=True)
            destination.mkdir(parents=True)
            if repo is not None:
                return Path(repo.download_artifacts("", str(destination)))
            return Path(self.client.download_artifacts(run.run_id, "", str(destination)))

        return files_under(
            self.call(f"downloading artifacts of run {run.run_id} ({uri})", download)
        )

    def _artifact_repo(self, artifact_uri: str) -> Any:
        """The repository of a run's artifact URI, as MLflow's client makes it for the run's
        whole tree (which asks the server for the run again first: two calls per run saved)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

        return get_artifact_repository(
            add_databricks_profile_info_to_artifact_uri(artifact_uri, self.uri),
            tracking_uri=self.uri,
        )

    def close(self) -> None:
        """Nothing to release: MLflow's client holds no connection of ours."""

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the source: never a credential."""
        import mlflow

        return {
            "tracking_uri": self.safe_uri,
            "kind": self.kind,
            "client_mlflow": mlflow.__version__,
        }
