"""The source read straight from an MLflow database, without importing MLflow.

``pack`` from a database URI spends most of its time, at a few hundred thousand points, importing
MLflow (about 2.5 s on the project's machine; the points themselves take about 1 s). When the
database's ``alembic_version`` holds a revision in :data:`.sql_metrics.TESTED_REVISIONS` and its
driver is one of :data:`DRIVERS`, this module reads experiments, runs (params, tags, latest
metrics, dataset inputs) and metric points with plain SQL through the driver itself, and lists
local artifact folders directly. It gives the same records as MLflow's store does
(``tests/test_sql_source.py`` compares them field by field on SQLite, PostgreSQL and MariaDB).

MLflow is imported only when needed: for the object families (registry, prompts, logged models,
traces, evaluation datasets) when the database holds any, and for artifacts that are not in a
local folder. Anything else (another revision, another driver, several workspaces, a connection
that fails here) means MLflow's own path (:class:`.source.MlflowSource`), which reports errors
its usual way. ``EXIM_NO_SQL_FAST_PATH=1`` turns this module off as well.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pyarrow as pa

from .artifact_roots import ArtifactRoots
from .errors import ArchiveError, SourceError
from .manifest import canonical_json
from .mlflow_errors import Caller, open_client
from .records import DatasetInputRecord, ExperimentRecord, RunRecord
from .sql_metrics import disabled, revisions_tested
from .sql_point_reader import PointReader
from .uri import redact_uri
from .versions import installed_version

__all__ = ["DRIVERS", "SqlSource", "open_sql_source"]

DRIVERS = {"sqlite": ("pysqlite",), "postgresql": ("psycopg2", "psycopg"), "mysql": ("pymysql",)}
"""The drivers (SQLAlchemy's names) this module reads each dialect with: the one a URI names
(``postgresql+psycopg:``, ``postgresql+psycopg2:``, ``mysql+pymysql:``), else the first that
imports. For ``postgresql:`` that is psycopg2 before psycopg (SQLAlchemy 2.1's default): the
rows are the same (the tests compare archives byte for byte), and psycopg2 packs the
benchmark's 40 runs in 0.65 s against 0.86 (a lighter import, COPY data written in C). A URI
naming another driver goes through MLflow."""
_PACK_HINT = "check the database and the URI, then run pack again"
_RUNS_PER_QUERY = 500
_RUN_COLUMNS = (
    "run_uuid",
    "experiment_id",
    "name",
    "user_id",
    "status",
    "start_time",
    "end_time",
    "lifecycle_stage",
    "artifact_uri",
)
"""The ``runs`` columns a run record is made of, in :meth:`SqlSource._run_records`' order."""
_FAMILY_TABLES = ("logged_models", "registered_models", "trace_info", "evaluation_datasets")
"""Tables whose rows need MLflow's readers (:mod:`.registry`, :mod:`.traces`, ...)."""
_RUN_STATUS = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")


class _Database:
    """One DB-API connection to the store, shared by the source's threads under a lock."""

    def __init__(self, dialect: str, driver: str, conn: Any) -> None:
        self.dialect = dialect
        self.driver = driver
        self._conn = conn
        self._lock = threading.Lock()
        self.points = PointReader(dialect, driver, self.connection)

    @contextmanager
    def connection(self) -> Iterator[Any]:
        with self._lock:
            try:
                yield self._conn
            finally:
                if self.dialect != "sqlite":
                    self._conn.rollback()  # end the read transaction: no snapshot held open

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.connection() as conn:
            cursor = conn.cursor()
            try:
                cursor.execute(sql, tuple(params))
                return list(cursor.fetchall())
            finally:
                cursor.close()

    def q(self, *names: str) -> str:
        return self.points.quoted(*names)

    def marks(self, count: int) -> str:
        return self.points.marks(count)

    def close(self) -> None:
        self._conn.close()


def _connect(uri: str) -> _Database | None:
    """A connection through the dialect's driver, or None where this module does not apply."""
    scheme, _, rest = uri.partition("://")
    dialect, _, driver = scheme.partition("+")
    if dialect not in DRIVERS or driver not in ("", *DRIVERS[dialect]):
        return None
    if dialect == "sqlite":
        import sqlite3

        path = rest[1:] if rest.startswith("/") else rest
        if not path or path == ":memory:" or "?" in path:
            return None
        target = f"{Path(path).absolute().as_uri()}?mode=ro"
        return _Database(
            dialect, "sqlite3", sqlite3.connect(target, uri=True, check_same_thread=False)
        )
    name, module = _driver(driver, DRIVERS[dialect])
    if dialect == "postgresql":
        return _Database(dialect, name, module.connect(f"postgresql://{rest}"))
    parts = urlsplit(uri)
    options = dict(parse_qsl(parts.query))
    if set(options) - {"charset"}:
        return None
    conn = module.connect(
        host=parts.hostname or "localhost",
        port=parts.port or 3306,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=unquote(parts.path.lstrip("/")),
        charset=options.get("charset", "utf8mb4"),
    )
    return _Database(dialect, name, conn)


def _driver(named: str, drivers: tuple[str, ...]) -> tuple[str, Any]:
    """The driver module the URI names, else the first of ``drivers`` that imports."""
    candidates = (named,) if named else drivers
    for name in candidates[:-1]:
        with contextlib.suppress(ImportError):
            return name, importlib.import_module(name)
    return candidates[-1], importlib.import_module(candidates[-1])


def open_sql_source(
    uri: str,
    artifact_roots: ArtifactRoots,
    error: type[ArchiveError] = SourceError,
    hint: str = _PACK_HINT,
) -> SqlSource | None:
    """A :class:`SqlSource` for ``uri`` if this module applies to it (see the module's
    docstring), else None: the caller then reads through MLflow. ``error`` and ``hint``: how
    its failures are reported (the proof after unpack reads a target with it)."""
    if disabled():
        return None
    try:
        db = _connect(uri)
    except Exception:  # MLflow's path reports connection problems its own way
        return None
    if db is None:
        return None
    try:
        revisions = {str(r[0]) for r in db.rows("SELECT version_num FROM alembic_version")}
        workspaces = db.rows(f"SELECT DISTINCT {db.q('workspace')} FROM {db.q('experiments')}")
    except Exception:
        db.close()
        return None
    if not revisions_tested(revisions) or len(workspaces) > 1:
        db.close()
        return None
    return SqlSource(uri, db, artifact_roots, error, hint)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _proto_json(fields: dict[str, Any]) -> str:
    """What ``MessageToDict(entity.to_proto(), preserving_proto_field_name=True)`` gives:
    int64 fields as strings, unset fields left out."""
    return canonical_json(fields).decode("utf-8").rstrip("\n")


class SqlSource:
    """Reads experiments, runs, metric points and local artifacts of one MLflow database with
    plain SQL; MLflow's client only on demand (:attr:`client`)."""

    def __init__(
        self,
        uri: str,
        db: _Database,
        artifact_roots: ArtifactRoots,
        error: type[ArchiveError] = SourceError,
        hint: str = _PACK_HINT,
    ) -> None:
        self.uri = uri
        self.safe_uri = redact_uri(uri)
        self.kind = "database"
        self.call = Caller(error, self.safe_uri, hint)
        self.notes: list[str] = []
        self.db = db
        self.artifact_roots = artifact_roots
        self._client: Any = None
        self._client_lock = threading.Lock()

    @property
    def client(self) -> Any:
        """MLflow's client for the same URI, opened (and MLflow imported) on first use."""
        with self._client_lock:
            if self._client is None:
                self._client = open_client(self.uri, self.call)
            return self._client

    def _rows(self, what: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.call(what, partial(self.db.rows, sql, params))

    # -- experiments and runs -------------------------------------------------------------------

    def experiments(self, selection: list[str] | None) -> list[ExperimentRecord]:
        """The selected experiments (every one, deleted included, when ``selection`` is None);
        a name is looked up first, then (all digits) an id, as MLflow's path does."""
        db = self.db
        columns = db.q(
            "experiment_id",
            "name",
            "artifact_location",
            "lifecycle_stage",
            "creation_time",
            "last_update_time",
            "workspace",
        )
        rows = self._rows("listing experiments", f"SELECT {columns} FROM {db.q('experiments')}")
        by_id = {str(r[0]): r for r in rows}
        if selection is None:
            chosen = list(by_id)
        else:
            by_name = {str(r[1]): str(r[0]) for r in rows}
            chosen = []
            for wanted in selection:
                found = by_name.get(wanted) or (wanted if wanted in by_id else None)
                if found is None:
                    raise SourceError(
                        f"no experiment named or numbered {wanted!r}",
                        where=self.safe_uri,
                        hint="check the name or id (mlflow experiments search lists them)",
                    )
                chosen.append(found)
        tags: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for exp_id, key, value in self._rows(
            "listing experiment tags",
            f"SELECT {db.q('experiment_id', 'key', 'value')} FROM {db.q('experiment_tags')}",
        ):
            tags[str(exp_id)].append((str(key), str(value)))
        return [self._experiment_record(by_id[k], tags[k]) for k in sorted(set(chosen))]

    @staticmethod
    def _experiment_record(row: tuple[Any, ...], tags: list[tuple[str, str]]) -> ExperimentRecord:
        exp_id, name, location, stage, created, updated, workspace = row
        ordered = sorted(tags)
        raw: dict[str, Any] = {
            "experiment_id": str(exp_id),
            "name": name,
            "artifact_location": location or "",
            "lifecycle_stage": stage,
            "workspace": workspace,
        }
        if created:
            raw["creation_time"] = str(created)
        if updated:
            raw["last_update_time"] = str(updated)
        if ordered:
            raw["tags"] = [{"key": k, "value": v} for k, v in ordered]
        return ExperimentRecord(
            experiment_id=str(exp_id),
            name=str(name),
            artifact_location=_text(location),
            lifecycle_stage=str(stage),
            creation_time=_int(created),
            last_update_time=_int(updated),
            tags=tuple(ordered),
            source_json=_proto_json(raw),
        )

    def runs(self, experiment_ids: list[str]) -> list[RunRecord]:
        """Every run (deleted included) of the experiments, sorted by run_id."""
        return self.runs_by_id(experiment_ids, self.run_ids(experiment_ids))

    def run_ids(self, experiment_ids: list[str]) -> list[str]:
        """The ids of every run (deleted included) of the experiments, sorted."""
        db = self.db
        out: list[str] = []
        for start in range(0, len(experiment_ids), _RUNS_PER_QUERY):
            ids = [int(e) for e in experiment_ids[start : start + _RUNS_PER_QUERY]]
            rows = self._rows(
                f"listing runs of experiments {', '.join(map(str, ids))}",
                f"SELECT {db.q('run_uuid')} FROM {db.q('runs')} WHERE {db.q('experiment_id')} "
                f"IN ({db.marks(len(ids))})",
                ids,
            )
            out.extend(str(row[0]) for row in rows)
        out.sort()
        return out

    def run_tag(self, experiment_ids: list[str], key: str) -> Iterator[tuple[str, str | None]]:
        """``(run id, value of its tag key or None)`` of every run (deleted included) of the
        experiments: one join, no run records."""
        db = self.db
        for start in range(0, len(experiment_ids), _RUNS_PER_QUERY):
            ids = [int(e) for e in experiment_ids[start : start + _RUNS_PER_QUERY]]
            yield from (
                (str(run_id), _text(value))
                for run_id, value in self._rows(
                    f"listing runs of experiments {', '.join(map(str, ids))}",
                    f"SELECT r.{db.q('run_uuid')}, t.{db.q('value')} FROM {db.q('runs')} r "
                    f"LEFT JOIN {db.q('tags')} t ON t.{db.q('run_uuid')} = r.{db.q('run_uuid')} "
                    f"AND t.{db.q('key')} = {db.marks(1)} "
                    f"WHERE r.{db.q('experiment_id')} IN ({db.marks(len(ids))})",
                    [key, *ids],
                )
            )

    def runs_by_id(self, experiment_ids: list[str], run_ids: list[str]) -> list[RunRecord]:
        """The runs with these ids (deleted included), sorted by run_id; ids not found are left
        out. ``experiment_ids``: where they are (the HTTP source needs them; not used here)."""
        db = self.db
        out: list[RunRecord] = []
        for start in range(0, len(run_ids), _RUNS_PER_QUERY):
            ids = run_ids[start : start + _RUNS_PER_QUERY]
            rows = self._rows(
                f"reading {len(ids)} runs",
                f"SELECT {db.q(*_RUN_COLUMNS)} FROM {db.q('runs')} WHERE {db.q('run_uuid')} "
                f"IN ({db.marks(len(ids))})",
                ids,
            )
            out.extend(self._run_records(rows))
        out.sort(key=lambda r: r.run_id)
        return out

    def _per_run(
        self, what: str, table: str, columns: tuple[str, ...], run_ids: list[str]
    ) -> dict[str, list[tuple[Any, ...]]]:
        db = self.db
        out: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for row in self._rows(
            f"reading {what} of {len(run_ids)} runs",
            f"SELECT {db.q('run_uuid', *columns)} FROM {db.q(table)} "
            f"WHERE {db.q('run_uuid')} IN ({db.marks(len(run_ids))})",
            run_ids,
        ):
            out[str(row[0])].append(row[1:])
        return out

    def _run_records(self, rows: list[tuple[Any, ...]]) -> list[RunRecord]:
        run_ids = [str(r[0]) for r in rows]
        params = self._per_run("params", "params", ("key", "value"), run_ids)
        tags = self._per_run("tags", "tags", ("key", "value"), run_ids)
        latest = self._per_run("latest metrics", "latest_metrics", ("key", "step"), run_ids)
        inputs = self._inputs(run_ids)
        out = []
        for run_id, exp_id, name, user, status, start, end, stage, artifact_uri in rows:
            run_id = str(run_id)
            run_tags = {str(k): _text(v) or "" for k, v in tags[run_id]}
            if not name:
                name = run_tags.get("mlflow.runName") or name
            steps = {str(k): int(s) for k, s in latest[run_id]}
            keys = tuple(sorted(steps))
            raw: dict[str, Any] = {
                "run_uuid": run_id,
                "run_id": run_id,
                "experiment_id": str(exp_id),
                "user_id": user or "",
                "status": status if status in _RUN_STATUS else "RUNNING",
                "start_time": str(start or 0),
                "lifecycle_stage": stage,
            }
            if name is not None:
                raw["run_name"] = name
            if end:
                raw["end_time"] = str(end)
            if artifact_uri:
                raw["artifact_uri"] = artifact_uri
            out.append(
                RunRecord(
                    run_id=run_id,
                    experiment_id=str(exp_id),
                    run_name=_text(name),
                    user_id=_text(user),
                    status=str(status),
                    start_time=_int(start),
                    end_time=_int(end),
                    lifecycle_stage=str(stage),
                    artifact_uri=_text(artifact_uri),
                    params=tuple(sorted((str(k), _text(v) or "") for k, v in params[run_id])),
                    tags=tuple(sorted(run_tags.items())),
                    inputs=inputs.get(run_id, ()),
                    metric_keys=keys,
                    metric_last_steps=tuple(steps[k] for k in keys),
                    source_json=_proto_json(raw),
                )
            )
        return out

    def _inputs(self, run_ids: list[str]) -> dict[str, tuple[DatasetInputRecord, ...]]:
        """Each run's dataset inputs (one per dataset, with the input's tags), as MLflow's
        ``_get_run_inputs`` joins them."""
        db = self.db
        i, d, t = "i.", "d.", "t."
        sql = (
            f"SELECT {i}{db.q('destination_id')}, {i}{db.q('input_uuid')}, "
            f"{d}{db.q('dataset_uuid')}, {d}{db.q('name')}, {d}{db.q('digest')}, "
            f"{d}{db.q('dataset_source_type')}, {d}{db.q('dataset_source')}, "
            f"{d}{db.q('dataset_schema')}, {d}{db.q('dataset_profile')}, "
            f"{t}{db.q('name')}, {t}{db.q('value')} "
            f"FROM {db.q('inputs')} i JOIN {db.q('datasets')} d "
            f"ON {i}{db.q('source_id')} = {d}{db.q('dataset_uuid')} "
            f"LEFT JOIN {db.q('input_tags')} t "
            f"ON {t}{db.q('input_uuid')} = {i}{db.q('input_uuid')} "
            f"WHERE {i}{db.q('destination_type')} = 'RUN' "
            f"AND {i}{db.q('destination_id')} IN ({db.marks(len(run_ids))})"
        )
        datasets: dict[str, dict[str, tuple[Any, ...]]] = defaultdict(dict)
        input_tags: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        for row in self._rows(f"reading dataset inputs of {len(run_ids)} runs", sql, run_ids):
            run_id, _input, dataset_id = str(row[0]), row[1], str(row[2])
            datasets[run_id].setdefault(dataset_id, row[3:9])
            if row[9] is not None:
                input_tags[(run_id, dataset_id)].append((str(row[9]), _text(row[10]) or ""))
        out: dict[str, tuple[DatasetInputRecord, ...]] = {}
        for run_id, found in datasets.items():
            records = [
                DatasetInputRecord(
                    name=str(name),
                    digest=str(digest),
                    source_type=str(source_type),
                    source=str(source),
                    schema=_text(schema),
                    profile=_text(profile),
                    tags=tuple(sorted(input_tags[(run_id, dataset_id)])),
                )
                for dataset_id, (
                    name,
                    digest,
                    source_type,
                    source,
                    schema,
                    profile,
                ) in found.items()
            ]
            out[run_id] = tuple(sorted(records, key=lambda r: (r.name, r.digest)))
        return out

    # -- metric histories -----------------------------------------------------------------------

    def metric_histories(
        self, runs: list[RunRecord], workers: int
    ) -> dict[str, pa.Table | Iterator[pa.Table]]:
        """Every point of every listed metric of the runs (:class:`.PointReader`)."""
        return self.call(
            f"reading the metric points of {len(runs)} runs", partial(self.db.points.read, runs)
        )

    def point_counts(self, runs: list[RunRecord]) -> dict[str, dict[str, int]]:
        """Stored points per run and key (the proof after unpack)."""
        return self.call(
            f"counting the metric points of {len(runs)} runs",
            partial(self.db.points.count, [r.run_id for r in runs]),
        )

    # -- artifacts -------------------------------------------------------------------------------

    def reads_in_place(self, runs: list[RunRecord]) -> bool:
        """Whether :meth:`download_artifacts` only lists these runs' files (all local)."""
        return all(self.artifact_roots.in_place(run) for run in runs)

    def download_artifacts(self, run: RunRecord, destination: Path) -> list[tuple[str, Path]]:
        """The run's artifact files: read in place from a local folder, else downloaded through
        MLflow's artifact repository (see :class:`.artifact_roots.ArtifactRoots`)."""
        return self.artifact_roots.run_files(self, run, destination)

    def families_present(self) -> bool:
        """Whether the database holds any object of the 1.1 families (then MLflow reads them)."""
        db = self.db
        for table in _FAMILY_TABLES:
            if self._rows(f"looking for {table}", f"SELECT 1 FROM {db.q(table)} LIMIT 1"):
                return True
        return False

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the source: never a credential."""
        return {
            "tracking_uri": self.safe_uri,
            "kind": self.kind,
            "client_mlflow": installed_version("mlflow"),
        }

    def close(self) -> None:
        self.db.close()
