"""The end of a new run written with plain SQL (unpack), below MLflow's store layer; see
:mod:`.sql_metrics` for when this path is taken.

A run unpack has just created holds only what ``create_run`` gave it (its tags, the incomplete
marker among them) and its points. Its params, its late tags (the parent link), its status and
end time, and the removal of the incomplete marker go in one transaction here, where MLflow's
store spends three sessions on them (``log_batch``, ``update_run_info``, ``delete_tag``: ~11 ms
of a small run's ~22 ms on SQLite). One transaction also makes the end atomic: the marker goes
exactly when the params arrive. Runs an earlier unpack made (resumed or updated) keep MLflow's
store, which merges with what is already there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["RunFinisher"]


class RunFinisher:
    """Ends new runs of one database through the store's SQLAlchemy engine."""

    def __init__(self, engine: sa.Engine) -> None:
        from mlflow.store.tracking.dbmodels.models import SqlParam, SqlRun, SqlTag

        self.engine = engine
        self.runs: sa.Table = SqlRun.__table__
        self.params: sa.Table = SqlParam.__table__
        self.tags: sa.Table = SqlTag.__table__

    def finish(
        self,
        run_id: str,
        params: Sequence[tuple[str, str]],
        tags: Mapping[str, str],
        status: str | None,
        end_time: int | None,
        marker: str,
    ) -> None:
        """Add ``params`` and ``tags`` (none of them may be there yet), set ``status`` and
        ``end_time`` (None: left as they are), and delete the tag ``marker``: all or nothing.

        Raises MLflow's "not found" if the run is missing, or is not active, or has no
        ``marker`` (it was not made by this unpack, or was finished already)."""
        import sqlalchemy as sa
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_STATE

        r, t = self.runs.c, self.tags.c
        with self.engine.begin() as conn:
            gone = conn.execute(
                sa.delete(self.tags).where(t.run_uuid == run_id, t.key == marker)
            ).rowcount
            values: dict[str, object] = {}
            if status is not None:
                values["status"] = status
            if end_time is not None:
                values["end_time"] = end_time
            active = sa.and_(r.run_uuid == run_id, r.lifecycle_stage == "active")
            found = conn.execute(
                sa.update(self.runs).where(active).values(**values)
                if values
                else sa.select(sa.func.count()).select_from(self.runs).where(active)
            )
            matched = found.rowcount if values else found.scalar_one()
            if gone != 1 or matched != 1:
                raise MlflowException(
                    f"Run {run_id} is not an active run with the tag {marker!r} "
                    f"(tags deleted: {gone}, runs matched: {matched})",
                    error_code=INVALID_STATE,
                )
            if params:
                conn.execute(
                    sa.insert(self.params),
                    [{"key": k, "value": v, "run_uuid": run_id} for k, v in params],
                )
            if tags:
                conn.execute(
                    sa.insert(self.tags),
                    [{"key": k, "value": v, "run_uuid": run_id} for k, v in sorted(tags.items())],
                )
