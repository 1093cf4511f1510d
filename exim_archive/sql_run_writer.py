"""The start and the end of a new run written with plain SQL (unpack), below MLflow's store
layer; see :mod:`.sql_metrics` for when this path is taken.

Start: the ``runs`` row and its tags, with the values MLflow 3.17's
``SqlAlchemyStore.create_run`` gives them (run id, artifact URI under the experiment's
location, run name and its ``mlflow.runName`` tag, source fields, ``RUNNING``) and its refusals
(experiment missing or not active, run name and tag disagreeing), without importing MLflow
(:func:`append_path`; a generated name, needed only for a nameless run, is MLflow's); several
runs of one experiment in one transaction (:meth:`NewRuns.create_many`). The store spends
~5.6 ms a run on SQLite (reading the experiment with its tags, then the new run back with its
params, metrics, tags and inputs); this ~1.2 ms alone, less in a batch. The experiment id is one
the store resolved (in its workspace).

End: a run unpack has just created holds only what ``create_run`` gave it (its tags, the
incomplete marker among them) and its points. Its params, its late tags (the parent link), its
status and end time, and the removal of the incomplete marker go in one transaction here, where
MLflow's store spends three sessions on them (``log_batch``, ``update_run_info``,
``delete_tag``: ~11 ms of a small run's ~22 ms on SQLite). One transaction also makes the end
atomic: the marker goes exactly when the params arrive. Runs an earlier unpack made (resumed or
updated) keep MLflow's store, which merges with what is already there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .mlflow_errors import mlflow_error, refuse_unless_active

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["NewRuns", "RunEnd", "RunStart", "append_path"]

RUN_NAME_TAG = "mlflow.runName"
_PLAIN_PREFIXES = ("/", "file:///", "mlflow-artifacts:/")


def append_path(uri: str, *parts: str) -> str:
    """``append_to_uri_path(uri, *parts)``, MLflow's join of an artifact location (an
    experiment's to its id, a run's to ``<run id>/artifacts``): done here for a local path or a
    ``file:///`` / ``mlflow-artifacts:/`` URI without query, parameters or fragment (what
    experiments are given), else by MLflow's own function. ``parts`` are plain names."""
    if uri.startswith(_PLAIN_PREFIXES) and not any(c in uri for c in "?#;"):
        sep = "" if uri.endswith("/") else "/"
        return uri + sep + "/".join(parts)
    from mlflow.utils.uri import append_to_uri_path

    joined: str = append_to_uri_path(uri, *parts)
    return joined


def _random_name() -> str:
    """MLflow's generated run name, for a run with neither a name nor a name tag."""
    from mlflow.utils.name_utils import _generate_random_name

    name: str = _generate_random_name()
    return name


@dataclass(frozen=True)
class RunStart:
    """What a new run starts with: its user, start time, tags (``mlflow.runName`` added from
    ``run_name`` where missing) and name."""

    user_id: str
    start_time: int
    tags: Mapping[str, str]
    run_name: str | None


@dataclass(frozen=True)
class RunEnd:
    """What a new run's end writes: ``params`` and ``tags`` (none of them there yet),
    ``status`` and ``end_time`` (None: left as they are), and the tag ``marker`` to delete."""

    params: Sequence[tuple[str, str]]
    tags: Mapping[str, str]
    status: str | None
    end_time: int | None
    marker: str


class NewRuns:
    """Starts and ends new runs of one database through the store's SQLAlchemy engine."""

    def __init__(self, engine: sa.Engine) -> None:
        from .sql_tables import EXPERIMENTS, PARAMS, RUNS, TAGS  # SQLAlchemy, only on a write

        self.engine = engine
        self.experiments = EXPERIMENTS
        self.runs = RUNS
        self.params = PARAMS
        self.tags = TAGS

    def create(
        self,
        experiment_id: str,
        user_id: str,
        start_time: int,
        tags: Mapping[str, str],
        run_name: str | None,
    ) -> tuple[str, str]:
        """A new ``RUNNING`` run holding ``tags``, as MLflow's ``create_run`` makes it (see the
        module docstring); returns ``(run_id, artifact_uri)``. Raises what MLflow raises for a
        missing or deleted experiment, and for a run name its ``mlflow.runName`` tag contradicts."""
        start = RunStart(user_id, start_time, tags, run_name)
        return self.create_many(experiment_id, [start])[0]

    def create_many(self, experiment_id: str, starts: Sequence[RunStart]) -> list[tuple[str, str]]:
        """:meth:`create` for each of ``starts``, all in one transaction (one commit, where a
        small run's unpack into SQLite spent ~1.3 ms on each): all are made or none."""
        import uuid

        import sqlalchemy as sa

        runs: list[dict[str, object]] = []
        tags: list[dict[str, object]] = []
        for start in starts:
            named = start.tags.get(RUN_NAME_TAG)
            if start.run_name and named and start.run_name != named:
                raise mlflow_error(
                    "Both 'run_name' argument and 'mlflow.runName' tag are specified, but with "
                    f"different values (run_name='{start.run_name}', mlflow.runName='{named}').",
                    "INVALID_PARAMETER_VALUE",
                )
            name = start.run_name or named or _random_name()
            run_id = uuid.uuid4().hex
            runs.append(
                {
                    "run_uuid": run_id,
                    "name": name,
                    "source_type": "UNKNOWN",
                    "source_name": "",
                    "entry_point_name": "",
                    "user_id": start.user_id,
                    "status": "RUNNING",
                    "start_time": start.start_time,
                    "end_time": None,
                    "deleted_time": None,
                    "source_version": "",
                    "lifecycle_stage": "active",
                }
            )
            all_tags = dict(start.tags) if named else {**start.tags, RUN_NAME_TAG: name}
            tags += [{"key": k, "value": v, "run_uuid": run_id} for k, v in all_tags.items()]
        e = self.experiments.c
        exp = int(experiment_id)
        with self.engine.begin() as conn:
            found = conn.execute(
                sa.select(e.artifact_location, e.lifecycle_stage).where(e.experiment_id == exp)
            ).one_or_none()
            stage = None if found is None else found.lifecycle_stage
            known = stage if stage in ("active", "deleted") else None  # else: as if missing
            refuse_unless_active("experiment", exp, known)
            assert found is not None
            for row in runs:
                row["artifact_uri"] = append_path(
                    found.artifact_location, str(row["run_uuid"]), "artifacts"
                )
                row["experiment_id"] = exp
            if runs:
                conn.execute(sa.insert(self.runs), runs)
            if tags:
                conn.execute(sa.insert(self.tags), tags)
        return [(str(row["run_uuid"]), str(row["artifact_uri"])) for row in runs]

    def finish(self, run_id: str, end: RunEnd) -> None:
        """Write ``end`` (see :class:`RunEnd`): all or nothing.

        Raises MLflow's "not found" if the run is missing, or is not active, or has no
        ``end.marker`` (it was not made by this unpack, or was finished already)."""
        with self.engine.begin() as conn:
            self.finish_in(conn, run_id, end)

    def finish_in(self, conn: sa.Connection, run_id: str, end: RunEnd) -> None:
        """:meth:`finish` in the caller's transaction (with the run's last points, say)."""
        import sqlalchemy as sa

        r, t = self.runs.c, self.tags.c
        gone = conn.execute(
            sa.delete(self.tags).where(t.run_uuid == run_id, t.key == end.marker)
        ).rowcount
        values: dict[str, object] = {}
        if end.status is not None:
            values["status"] = end.status
        if end.end_time is not None:
            values["end_time"] = end.end_time
        active = sa.and_(r.run_uuid == run_id, r.lifecycle_stage == "active")
        found = conn.execute(
            sa.update(self.runs).where(active).values(**values)
            if values
            else sa.select(sa.func.count()).select_from(self.runs).where(active)
        )
        matched = found.rowcount if values else found.scalar_one()
        if gone != 1 or matched != 1:
            raise mlflow_error(
                f"Run {run_id} is not an active run with the tag {end.marker!r} "
                f"(tags deleted: {gone}, runs matched: {matched})",
                "INVALID_STATE",
            )
        if end.params:
            conn.execute(
                sa.insert(self.params),
                [{"key": k, "value": v, "run_uuid": run_id} for k, v in end.params],
            )
        if end.tags:
            rows = sorted(end.tags.items())
            conn.execute(
                sa.insert(self.tags),
                [{"key": k, "value": v, "run_uuid": run_id} for k, v in rows],
            )
