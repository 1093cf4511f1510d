"""The target written straight into an MLflow database, without importing MLflow.

An unpack into a database spent over half its time, at a few hundred thousand points, importing
MLflow's SQL store (~2.4 s on the project's machine, against ~1.5 s for the writes themselves).
Where this module applies (:func:`open_sql_target`), the sink (:class:`.sink.MlflowSink`) does
with plain SQL, through an SQLAlchemy engine of its own, what a first unpack needs: the unpack
lock (a registered model), looking up and creating experiments and setting their tags, listing
the runs an earlier unpack made, creating and finishing runs (:mod:`.sql_run_writer`), metric
points (:mod:`.sql_point_writer`) and dataset inputs; the proof after it reads the target
through :mod:`.sql_source`. Each writes the rows MLflow 3.17's ``SqlAlchemyStore`` writes for
the same call (``tests/test_sql_target.py`` compares whole tables, unpacked both ways, on
SQLite, PostgreSQL and MariaDB).

Everything else (resuming or updating runs an earlier unpack made, restoring and deleting,
artifacts outside a local folder, the MLflow 3 and registry families) goes through MLflow's
client, opened on first use: those paths pay for the import, the common one does not.

It applies when :func:`.sql_metrics.open_fast_path`'s conditions hold (not disabled, a tested
dialect and driver, a tested ``alembic_version``) and also: MLflow has already set the database
up (its default experiment exists; MLflow creates it when it first opens a store), every
experiment is in the default workspace, and nothing configures MLflow's store differently
(``MLFLOW_ENABLE_WORKSPACES``, MySQL SSL settings, a server's artifact root). Otherwise MLflow's
store does it all, as before.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .artifact_roots import PROXIED
from .mlflow_errors import mlflow_error, refuse_unless_active
from .records import DatasetInputRecord
from .sql_metrics import SqlMetrics, disabled, untested
from .sql_run_writer import append_path
from .sql_tables import (
    DATASETS,
    EXPERIMENT_TAGS,
    EXPERIMENTS,
    INPUT_TAGS,
    INPUTS,
    REGISTERED_MODEL_TAGS,
    REGISTERED_MODELS,
    RUNS,
    TAGS,
)
from .uri import uri_kind

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["SqlTarget", "TargetRun", "open_sql_target"]

WORKSPACE = "default"
"""MLflow's default workspace: every row this module writes is in it."""
_DECLINING_ENV = (
    "MLFLOW_ENABLE_WORKSPACES",
    "MLFLOW_MYSQL_SSL_CA",
    "MLFLOW_MYSQL_SSL_CERT",
    "MLFLOW_MYSQL_SSL_KEY",
    "_MLFLOW_SERVER_ARTIFACT_ROOT",
)
"""Settings that change what MLflow's store would write or how it connects."""


def _millis() -> int:
    return int(time.time() * 1000)


def open_sql_target(uri: str, proxied: bool) -> SqlTarget | None:
    """A :class:`SqlTarget` for ``uri`` if this module applies (see the module docstring), else
    None: the sink then goes through MLflow, which reports connection problems its own way.
    ``proxied``: new experiments get ``mlflow-artifacts:/<id>`` locations (the sink was given
    the serving server's ``--artifacts-destination``)."""
    if disabled() or uri_kind(uri) != "database":
        return None
    if any(os.environ.get(name, "").strip() for name in _DECLINING_ENV):
        return None
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(uri, pool_pre_ping=True)
    except Exception:  # unknown dialect, driver not installed, malformed URI
        return None
    try:
        usable = untested(engine) is None and _set_up(engine)
    except Exception:  # MLflow's path reports what is wrong with the database
        usable = False
    if not usable:
        engine.dispose()
        return None
    root = f"{PROXIED}/" if proxied else (Path.cwd() / "mlruns").as_posix()
    return SqlTarget(engine, root)


def _set_up(engine: sa.Engine) -> bool:
    """Whether MLflow has set the database up as its store (its default experiment is there)
    with every experiment in the default workspace."""
    import sqlalchemy as sa

    e = EXPERIMENTS.c
    with engine.connect() as conn:
        workspaces = {str(r[0]) for r in conn.execute(sa.select(e.workspace).distinct())}
        default = conn.execute(sa.select(e.experiment_id).where(e.experiment_id == 0)).first()
    return not workspaces - {WORKSPACE} and default is not None


class TargetRun:
    """A run of the target as unpack needs to know it: id, lifecycle and unpack's own tags."""

    __slots__ = ("lifecycle_stage", "run_id", "tags")

    def __init__(self, run_id: str, lifecycle_stage: str) -> None:
        self.run_id = run_id
        self.lifecycle_stage = lifecycle_stage
        self.tags: dict[str, str] = {}


class SqlTarget:
    """Writes (and reads back what unpack decides on) one MLflow database with plain SQL."""

    def __init__(self, engine: sa.Engine, artifact_root: str) -> None:
        self.engine = engine
        self.artifact_root = artifact_root
        """Where new experiments keep their files: MLflow's default ``./mlruns`` resolved in
        the working directory, as its client gives a store, or ``mlflow-artifacts:/``."""
        self.metrics = SqlMetrics(engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- experiments ---------------------------------------------------------------------------

    def experiment_by_name(self, name: str) -> tuple[str, str] | None:
        """``(experiment_id, lifecycle_stage)`` of the experiment named ``name``, if any."""
        import sqlalchemy as sa

        e = EXPERIMENTS.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(e.experiment_id, e.lifecycle_stage).where(
                    e.name == name, e.workspace == WORKSPACE
                )
            ).one_or_none()
        return None if row is None else (str(row[0]), str(row[1]))

    def create_experiment(self, name: str, tags: Mapping[str, str]) -> str:
        """A new active experiment with ``tags``, its location ``<artifact root>/<id>``: MLflow's
        ``create_experiment`` without an artifact location. Refuses a name in use as MLflow
        does."""
        import sqlalchemy as sa

        e = EXPERIMENTS.c
        now = _millis()
        row = {
            "name": name,
            "lifecycle_stage": "active",
            "artifact_location": None,
            "creation_time": now,
            "last_update_time": now,
            "workspace": WORKSPACE,
        }
        try:
            with self.engine.begin() as conn:
                if self.engine.dialect.name == "postgresql":
                    insert = sa.insert(EXPERIMENTS).values(row).returning(e.experiment_id)
                    new_id = int(conn.execute(insert).scalar_one())
                else:
                    new_id = int(conn.execute(sa.insert(EXPERIMENTS).values(row)).lastrowid)
                location = append_path(self.artifact_root, str(new_id))
                conn.execute(
                    sa.update(EXPERIMENTS)
                    .where(e.experiment_id == new_id)
                    .values(artifact_location=location)
                )
                if tags:
                    conn.execute(
                        sa.insert(EXPERIMENT_TAGS),
                        [{"key": k, "value": v, "experiment_id": new_id} for k, v in tags.items()],
                    )
        except sa.exc.IntegrityError as exc:
            raise mlflow_error(
                f"Experiment(name={name}) already exists. Error: {exc}", "RESOURCE_ALREADY_EXISTS"
            ) from None
        return str(new_id)

    def experiment_tags(self, experiment_id: str) -> dict[str, str]:
        import sqlalchemy as sa

        t = EXPERIMENT_TAGS.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.key, t.value).where(t.experiment_id == int(experiment_id))
            )
            return {str(k): "" if v is None else str(v) for k, v in rows}

    def set_experiment_tags(self, experiment_id: str, tags: Mapping[str, str]) -> None:
        """Set (insert or replace) the experiment's ``tags``, as MLflow's ``set_experiment_tag``
        does one by one: refused unless the experiment is active."""
        import sqlalchemy as sa

        e, t = EXPERIMENTS.c, EXPERIMENT_TAGS.c
        exp = int(experiment_id)
        with self.engine.begin() as conn:
            stage = conn.execute(
                sa.select(e.lifecycle_stage).where(e.experiment_id == exp)
            ).scalar_one_or_none()
            refuse_unless_active("experiment", exp, stage)
            for key, value in sorted(tags.items()):
                where = sa.and_(t.experiment_id == exp, t.key == key)
                if not conn.execute(
                    sa.update(EXPERIMENT_TAGS).where(where).values(value=value)
                ).rowcount:
                    conn.execute(
                        sa.insert(EXPERIMENT_TAGS).values(key=key, value=value, experiment_id=exp)
                    )

    # -- runs ------------------------------------------------------------------------------------

    def runs(
        self, experiment_id: str, keys: Sequence[str], source: tuple[str, str] | None = None
    ) -> list[TargetRun]:
        """Every run of the experiment (deleted ones too) with its tags among ``keys``; with
        ``source`` (a tag key and value), only the runs carrying that tag."""
        import sqlalchemy as sa

        r, t = RUNS.c, TAGS.c
        stmt = (
            sa.select(r.run_uuid, r.lifecycle_stage, t.key, t.value)
            .select_from(
                RUNS.outerjoin(TAGS, sa.and_(t.run_uuid == r.run_uuid, t.key.in_(list(keys))))
            )
            .where(r.experiment_id == int(experiment_id))
        )
        if source is not None:
            s = TAGS.alias("s")
            stmt = stmt.where(
                sa.exists().where(
                    s.c.run_uuid == r.run_uuid, s.c.key == source[0], s.c.value == source[1]
                )
            )
        found: dict[str, TargetRun] = {}
        with self.engine.connect() as conn:
            for run_id, stage, key, value in conn.execute(stmt):
                run = found.get(run_id)
                if run is None:
                    run = found[run_id] = TargetRun(str(run_id), str(stage))
                if key is not None:
                    run.tags[str(key)] = "" if value is None else str(value)
        return [found[k] for k in sorted(found)]

    def tagged_runs(self, key: str, values: Sequence[str] | None = None) -> list[tuple[str, str]]:
        """``(run id, value)`` of every run carrying tag ``key`` (with one of ``values``, if
        given), in any experiment, deleted ones too, sorted."""
        import sqlalchemy as sa

        t = TAGS.c
        chunks: list[Sequence[str] | None] = (
            [None] if values is None else [values[i : i + 500] for i in range(0, len(values), 500)]
        )
        found: list[tuple[str, str]] = []
        with self.engine.connect() as conn:
            for chunk in chunks:
                stmt = sa.select(t.run_uuid, t.value).where(t.key == key)
                if chunk is not None:
                    stmt = stmt.where(t.value.in_(list(chunk)))
                found += [(str(r), "" if v is None else str(v)) for r, v in conn.execute(stmt)]
        return sorted(found)

    def link_parent(self, run_id: str, parent_tag: str, parent_id: str, pending_tag: str) -> None:
        """In one transaction: the run's ``parent_tag`` set to ``parent_id``, its
        ``pending_tag`` removed. Written whatever the run's lifecycle stage (MLflow's calls
        would have to restore a deleted run for it, and delete it again)."""
        import sqlalchemy as sa

        t = TAGS.c
        with self.engine.begin() as conn:
            where = sa.and_(t.run_uuid == run_id, t.key == parent_tag)
            if not conn.execute(sa.update(TAGS).where(where).values(value=parent_id)).rowcount:
                conn.execute(
                    sa.insert(TAGS).values(key=parent_tag, value=parent_id, run_uuid=run_id)
                )
            conn.execute(sa.delete(TAGS).where(t.run_uuid == run_id, t.key == pending_tag))

    def log_inputs(self, run_id: str, inputs: Sequence[DatasetInputRecord]) -> None:
        """The run's dataset inputs as MLflow's ``log_inputs`` stores them: a dataset row per
        (name, digest) in the experiment, shared by its runs; one input edge per dataset with
        the input's tags. What is already there is left alone."""
        import sqlalchemy as sa

        r, d, i = RUNS.c, DATASETS.c, INPUTS.c
        unique: dict[tuple[str, str], DatasetInputRecord] = {}
        for record in inputs:
            unique.setdefault((record.name, record.digest), record)
        with self.engine.begin() as conn:
            found = conn.execute(
                sa.select(r.experiment_id, r.lifecycle_stage).where(r.run_uuid == run_id)
            ).one_or_none()
            refuse_unless_active("run", run_id, None if found is None else found[1])
            assert found is not None
            experiment_id = found[0]
            datasets = {
                (str(name), str(digest)): str(dataset_uuid)
                for name, digest, dataset_uuid in conn.execute(
                    sa.select(d.name, d.digest, d.dataset_uuid).where(
                        d.experiment_id == experiment_id,
                        d.name.in_(sorted({k[0] for k in unique})),
                        d.digest.in_(sorted({k[1] for k in unique})),
                    )
                )
            }
            new_datasets: list[dict[str, Any]] = []
            for key, record in unique.items():
                if key not in datasets:
                    datasets[key] = uuid.uuid4().hex
                    new_datasets.append(
                        {
                            "dataset_uuid": datasets[key],
                            "experiment_id": experiment_id,
                            "name": record.name,
                            "digest": record.digest,
                            "dataset_source_type": record.source_type,
                            "dataset_source": record.source,
                            "dataset_schema": record.schema,
                            "dataset_profile": record.profile,
                        }
                    )
            if new_datasets:
                conn.execute(sa.insert(DATASETS), new_datasets)
            linked = {
                str(source_id)
                for (source_id,) in conn.execute(
                    sa.select(i.source_id).where(
                        i.source_type == "DATASET",
                        i.source_id.in_(sorted(datasets.values())),
                        i.destination_type == "RUN",
                        i.destination_id == run_id,
                    )
                )
            }
            edges: list[dict[str, Any]] = []
            tags: list[dict[str, Any]] = []
            for key, record in unique.items():
                if datasets[key] in linked:
                    continue
                input_uuid = uuid.uuid4().hex
                edges.append(
                    {
                        "input_uuid": input_uuid,
                        "source_type": "DATASET",
                        "source_id": datasets[key],
                        "destination_type": "RUN",
                        "destination_id": run_id,
                        "step": 0,
                    }
                )
                tags += [{"input_uuid": input_uuid, "name": k, "value": v} for k, v in record.tags]
            if edges:
                conn.execute(sa.insert(INPUTS), edges)
            if tags:
                conn.execute(sa.insert(INPUT_TAGS), tags)

    # -- the unpack lock's registered model (target_lock._Models) -------------------------------

    def model_tags(self, name: str) -> dict[str, str] | None:
        """The registered model's tags, None if there is no such model."""
        import sqlalchemy as sa

        m, t = REGISTERED_MODELS.c, REGISTERED_MODEL_TAGS.c
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(m.name).where(m.name == name, m.workspace == WORKSPACE)
            ).one_or_none()
            if found is None:
                return None
            rows = conn.execute(
                sa.select(t.key, t.value).where(t.name == name, t.workspace == WORKSPACE)
            )
            return {str(k): "" if v is None else str(v) for k, v in rows}

    def create_model(self, name: str, tags: Mapping[str, str], description: str) -> bool:
        """Register ``name`` with ``tags``, as MLflow's ``create_registered_model``; False if
        the name is taken (the database's primary key decides, atomically)."""
        import sqlalchemy as sa

        now = _millis()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.insert(REGISTERED_MODELS).values(
                        name=name,
                        creation_time=now,
                        last_updated_time=now,
                        description=description,
                        workspace=WORKSPACE,
                    )
                )
                if tags:
                    conn.execute(
                        sa.insert(REGISTERED_MODEL_TAGS),
                        [
                            {"key": k, "value": v, "name": name, "workspace": WORKSPACE}
                            for k, v in tags.items()
                        ],
                    )
        except sa.exc.IntegrityError:
            return False
        return True

    def beat_if_owner(self, name: str, owner: str, value: str) -> bool:
        """Set the registered model's ``heartbeat`` tag to ``value`` if its ``owner`` tag is
        ``owner``; False, with nothing written, if it is not (the lock was taken over) or there
        is no such model. One transaction: the heartbeat is changed first (a row lock on
        PostgreSQL and MariaDB, the write lock on SQLite; :meth:`delete_model_if` of a stale
        lock takes the same rows in the same order), then the owner is read under that lock,
        and if it is another's the change is rolled back. Several statements rather than one
        ``UPDATE`` with a subquery on the same table, which MySQL refuses."""
        import sqlalchemy as sa

        t = REGISTERED_MODEL_TAGS.c
        mine = sa.and_(t.name == name, t.workspace == WORKSPACE)
        with self.engine.connect() as conn, conn.begin() as txn:
            beat = conn.execute(
                sa.update(REGISTERED_MODEL_TAGS)
                .where(mine, t.key == "heartbeat")
                .values(value=value)
            ).rowcount
            holder = conn.execute(
                sa.select(t.value).where(mine, t.key == "owner").with_for_update()
            ).scalar_one_or_none()
            if beat != 1 or holder != owner:
                txn.rollback()
                return False
        return True

    atomic_delete = True
    """:meth:`delete_model_if` checks and removes in one transaction."""

    def delete_model_if(self, name: str, expected: Mapping[str, str]) -> bool:
        """Remove the registered model and its tags if its tags hold ``expected``; True if it
        was removed. Each expected tag is first changed in place where it still has its value
        (a row lock on PostgreSQL and MariaDB, the write lock on SQLite, and a count of changed
        rows on all three), so a lock another unpack took in the meantime is never removed.
        For the lock's model, which has no versions or aliases (the database refuses the
        delete of one that has)."""
        import sqlalchemy as sa

        m, t = REGISTERED_MODELS.c, REGISTERED_MODEL_TAGS.c
        mine = sa.and_(t.name == name, t.workspace == WORKSPACE)
        with self.engine.connect() as conn, conn.begin() as txn:
            for key, value in sorted(expected.items()):
                claimed = conn.execute(
                    sa.update(REGISTERED_MODEL_TAGS)
                    .where(mine, t.key == key, t.value == value)
                    .values(value=f"{value} (being removed)")
                ).rowcount
                if claimed != 1:
                    txn.rollback()
                    return False
            conn.execute(sa.delete(REGISTERED_MODEL_TAGS).where(mine))
            gone = conn.execute(
                sa.delete(REGISTERED_MODELS).where(m.name == name, m.workspace == WORKSPACE)
            ).rowcount
        return bool(gone)
