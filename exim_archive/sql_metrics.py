"""Whether metric points may go straight through SQL, below MLflow's store layer, and the one
object that does it for a store (:class:`SqlMetrics`: :mod:`.sql_point_reader` for pack,
:mod:`.sql_point_writer` for unpack, and :mod:`.sql_run_writer` for the runs unpack creates:
their start, and their params, late tags and status in one transaction at the end).

Metric points are the bulk of any archive, and MLflow's store spends Python objects, a session
and (on write) a latest-metric merge on every batch of them. On a database tracking URI
(``sqlite:``, ``postgresql:``, ``mysql:``) whose ``alembic_version`` holds a revision in
:data:`TESTED_REVISIONS`, points go through the store's own SQLAlchemy engine instead, the bulk
statements straight to the driver's cursor. Any other revision, or none readable, means
MLflow's API (slower) and a note saying so. Set ``EXIM_NO_SQL_FAST_PATH=1`` to use MLflow's API
always (benchmarks, or a suspected problem).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .sql_point_reader import PointReader
from .sql_point_writer import PointWriter
from .sql_run_writer import NewRuns, RunEnd
from .uri import redact_uri, uri_kind

if TYPE_CHECKING:
    import pyarrow as pa
    import sqlalchemy as sa

    from .records import RunRecord

__all__ = [
    "DIALECTS",
    "DISABLE_ENV",
    "POSTGRES_DRIVERS",
    "TESTED_REVISIONS",
    "Decided",
    "LazyFastPath",
    "SqlMetrics",
    "disabled",
    "open_fast_path",
    "revisions_tested",
    "untested",
]

TESTED_REVISIONS = frozenset({"dc11669786a5"})
"""Alembic revisions whose ``metrics`` / ``latest_metrics`` tables the direct SQL paths were
tested on: the head of mlflow 3.17.2's migrations (``add job executor persistence model``)."""

DISABLE_ENV = "EXIM_NO_SQL_FAST_PATH"
DIALECTS = frozenset({"sqlite", "postgresql", "mysql"})
POSTGRES_DRIVERS = frozenset({"psycopg", "psycopg2"})
"""PostgreSQL drivers whose COPY the point writer uses; another one goes through MLflow."""

_log = logging.getLogger(__name__)
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def revisions_tested(found: set[str]) -> bool:
    """Whether a database's ``alembic_version`` rows are all revisions this package was tested
    on (none found: not an MLflow database, or not readable)."""
    return bool(found) and found <= TESTED_REVISIONS


def disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _revisions(engine: sa.Engine) -> set[str]:
    import sqlalchemy as sa

    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    return {str(row[0]) for row in rows}


def _note(uri: str, text: str) -> str:
    """The note, logged once per store and text so a long pack does not repeat it."""
    with _warned_lock:
        fresh = (uri, text) not in _warned
        _warned.add((uri, text))
    if fresh:
        _log.warning("%s: %s", redact_uri(uri), text)
    return text


def untested(engine: sa.Engine) -> str | None:
    """Why direct SQL may not write through ``engine`` (a dialect, driver or schema revision
    not tested; an unreadable revision), or None when it may. The one rule for
    :func:`open_fast_path` and :func:`.sql_target.open_sql_target`."""
    import sqlalchemy as sa

    if engine.dialect.name not in DIALECTS:
        return f"{engine.dialect.name} not tested for direct SQL; using MLflow's API (slower)"
    if engine.dialect.name == "postgresql" and engine.dialect.driver not in POSTGRES_DRIVERS:
        return (
            f"PostgreSQL driver {engine.dialect.driver} not tested for direct SQL; using "
            "MLflow's API (slower; psycopg and psycopg2 are)"
        )
    try:
        found = _revisions(engine)
    except sa.exc.SQLAlchemyError as exc:
        return f"schema revision unreadable ({type(exc).__name__}); using MLflow's API (slower)"
    if not revisions_tested(found):
        shown = ", ".join(sorted(found)) or "none"
        return f"schema revision {shown} not tested; using MLflow's API (slower)"
    return None


def open_fast_path(store: Any, uri: str) -> tuple[SqlMetrics | None, str | None]:
    """Direct SQL for ``uri`` if allowed, else None and (when it is not plain N/A) a note why.

    Never for http(s) or file stores; only on the store's own SQLAlchemy engine, only for the
    dialects tested, and only when ``alembic_version`` holds a tested revision.
    """
    import sqlalchemy as sa

    if disabled() or uri_kind(uri) != "database":
        return None, None
    engine = getattr(store, "engine", None)
    if not isinstance(engine, sa.Engine):
        return None, None
    text = untested(engine)
    if text is not None:
        return None, _note(uri, text)
    return SqlMetrics(engine), None


class LazyFastPath:
    """Decides once, on first use, whether one store's points may go through direct SQL."""

    def __init__(self, store: Any, uri: str, notes: list[str]) -> None:
        self._store = store
        self._uri = uri
        self._notes = notes
        self._lock = threading.Lock()
        self._decided = False
        self._fast: SqlMetrics | None = None

    def get(self) -> SqlMetrics | None:
        with self._lock:
            if not self._decided:
                self._fast, note = open_fast_path(self._store, self._uri)
                if note is not None:
                    self._notes.append(note)
                self._decided = True
            return self._fast


class Decided:
    """A fast path known from the start (the direct SQL target's, :mod:`.sql_target`)."""

    def __init__(self, fast: SqlMetrics) -> None:
        self._fast = fast

    def get(self) -> SqlMetrics | None:
        return self._fast


class SqlMetrics:
    """Reads (:class:`.PointReader`) and writes (:class:`.PointWriter`) the metric points of one
    database through the store's SQLAlchemy engine."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.reader = PointReader(engine.dialect.name, engine.dialect.driver, self._raw_connection)
        self.writer = PointWriter(engine)
        self.runs = NewRuns(engine)

    @contextmanager
    def _raw_connection(self) -> Iterator[Any]:
        with self.engine.connect() as conn:
            yield conn.connection.dbapi_connection

    def read(self, runs: Sequence[RunRecord]) -> dict[str, pa.Table | Iterator[pa.Table]]:
        return self.reader.read(runs)

    def count(self, run_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        return self.reader.count(run_ids)

    def write(self, run_id: str, points: pa.Table) -> None:
        self.writer.write(run_id, points)

    def finish(self, run_id: str, end: RunEnd, points: pa.Table | None) -> None:
        """A new run's last ``points`` and its ``end`` (:meth:`.NewRuns.finish`) in one
        transaction: one commit a run fewer (a small run's unpack into SQLite spent ~2.6 ms on
        each). On PostgreSQL a point already there (the archive repeating one) loses that
        transaction; the points then go by :meth:`.PointWriter.write`, which skips those, and
        the end by itself."""
        if points is None or not points.num_rows:
            self.runs.finish(run_id, end)
            return
        try:
            with self.engine.begin() as conn:
                self.writer.write_in(conn, run_id, points)
                self.runs.finish_in(conn, run_id, end)
        except self.writer.conflict():
            self.writer.write(run_id, points)
            self.runs.finish(run_id, end)

    def finish_many(self, ends: Sequence[tuple[str, RunEnd, pa.Table | None]]) -> None:
        """:meth:`finish` for several new runs in one transaction: all end or none, with one
        commit (half of a small run's end transaction on SQLite, ~4 ``fdatasync`` each). A
        point already there (PostgreSQL) loses it; each run then goes by :meth:`finish`."""
        if len(ends) == 1:
            self.finish(*ends[0])
            return
        try:
            with self.engine.begin() as conn:
                for run_id, end, points in ends:
                    if points is not None and points.num_rows:
                        self.writer.write_in(conn, run_id, points)
                    self.runs.finish_in(conn, run_id, end)
        except self.writer.conflict():
            for run_id, end, points in ends:
                self.finish(run_id, end, points)
