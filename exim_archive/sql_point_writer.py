"""Metric points written with plain SQL (unpack), below MLflow's store layer; see
:mod:`.sql_metrics` for when this path is taken.

Points are sanitised as MLflow's ``sanitize_metric_value`` does (NaN -> 0 with ``is_nan``,
+/-inf -> +/-DBL_MAX). On PostgreSQL (psycopg or psycopg2) they go by ``COPY ... FROM STDIN`` of CSV
that Arrow writes, one transaction per slice; a point already there fails that whole, and the
slice is then copied into a temporary table and merged with ``INSERT ... SELECT ... ON CONFLICT DO
NOTHING``. SQLite and MySQL/MariaDB take batches through the driver's executemany that skip rows
already present (``ON CONFLICT DO NOTHING``; on MySQL/MariaDB a no-op ``ON DUPLICATE KEY UPDATE``,
which unlike ``INSERT IGNORE`` keeps strict mode's errors). Then ``latest_metrics`` is raised per
key to the first point with the greatest (step, timestamp, stored value), as
``_update_latest_metrics_if_necessary`` leaves it. Every write is idempotent: a resumed unpack
may send the same points again.

Values arrive exactly: CSV carries each double's shortest form that reads back to the same bits
(``-0.0`` included, which psycopg2's inlined parameters turn into ``0``).
"""

from __future__ import annotations

import codecs
import io
import itertools
import math
import posixpath
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from . import tables as T
from .mlflow_errors import refuse_unless_active
from .sql_text import METRICS_COLUMNS, marks, quoted

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["DBL_MAX", "WRITE_ROWS", "PointWriter"]

WRITE_ROWS = 5_000
"""Rows per INSERT batch (each batch becomes Python objects at once)."""
_KEYS_PER_QUERY = 500
_MERGE_TABLE = "exim_points"
"""The temporary table a resumed run's points pass through on PostgreSQL."""
DBL_MAX = 1.7976931348623157e308

_Newest = dict[str, tuple[int, int, float, bool]]
"""Per metric key: (step, timestamp, stored value, is_nan) of the point ``latest_metrics`` keeps."""


class _Batch(NamedTuple):
    """Up to :data:`WRITE_ROWS` points of one run as MLflow stores them (:func:`_stored`) as
    Python values, column by column, in the order of :data:`.METRICS_COLUMNS` after
    ``run_uuid``."""

    keys: list[str]
    steps: list[int]
    stamps: list[int]
    values: list[float]
    nans: list[bool]


_Put = Callable[["sa.Connection", str, pa.Table], None]
"""One way of sending up to :data:`WRITE_ROWS` stored points (:func:`_stored`): COPY, COPY and
merge, or executemany."""

_CSV = pcsv.WriteOptions(include_header=False)
"""Arrow's CSV for COPY: strings quoted (an empty one stays an empty string, not NULL), floats
in their shortest form that reads back to the same double, booleans as true/false."""


class PointWriter:
    """Writes metric points and ``latest_metrics`` of one database through the store's
    SQLAlchemy engine."""

    def __init__(self, engine: sa.Engine) -> None:
        from .sql_tables import LATEST_METRICS, RUNS  # SQLAlchemy, only where points are written

        self.engine = engine
        self.dialect = engine.dialect.name
        self.driver = engine.dialect.driver
        self.latest = LATEST_METRICS
        self.runs = RUNS

    def quoted(self, *names: str) -> str:
        return quoted(self.dialect, *names)

    def marks(self, count: int) -> str:
        return marks(self.dialect, count)

    def write(self, run_id: str, points: pa.Table) -> None:
        """Insert the run's points (those already there are skipped), then raise
        ``latest_metrics`` to the newest point per key. Safe to repeat.

        Points are sent :data:`WRITE_ROWS` at a time, as CSV or Python objects (a whole slice
        of Python objects at once cost ~12 MB per 50,000 points in every writer thread), all in
        one transaction: a commit per batch was a tenth of an unpack into SQLite (each one a
        sync to disk)."""
        if not points.num_rows:
            return
        if self.dialect != "postgresql":
            with self.engine.begin() as conn:
                self.write_in(conn, run_id, points)
            return
        try:
            self._write_copy(run_id, points)
        except self.conflict():  # points already there (a resumed run)
            with self.engine.begin() as conn:  # skip them
                self._write_batches(conn, run_id, points, self._merge_batch)

    def write_in(self, conn: sa.Connection, run_id: str, points: pa.Table) -> None:
        """:meth:`write` in the caller's transaction, without its second chance: on
        PostgreSQL a point already there raises :meth:`conflict` (the transaction is then
        lost); elsewhere such points are skipped."""
        if not points.num_rows:
            return
        _validate_keys(pc.unique(points.column("key")).to_pylist())
        put = self._copy_batch if self.dialect == "postgresql" else self._insert_rows
        self._write_batches(conn, run_id, points, put)

    def conflict(self) -> tuple[type[Exception], ...]:
        """What :meth:`write_in` raises for a point already there: on PostgreSQL the driver's
        unique violation; elsewhere nothing (such points are skipped)."""
        return (_unique_violation(self.driver),) if self.dialect == "postgresql" else ()

    def _write_copy(self, run_id: str, points: pa.Table) -> None:
        """PostgreSQL: the points by ``COPY ... FROM STDIN``, all or none (one
        transaction); a third less time than ``INSERT ... ON CONFLICT``, but a point already
        there fails it with a unique violation (the caller then merges, skipping those)."""
        with self.engine.begin() as conn:
            self.write_in(conn, run_id, points)

    def _write_batches(self, conn: sa.Connection, run_id: str, points: pa.Table, put: _Put) -> None:
        """In ``conn``'s transaction: the run checked, the points sanitised :data:`WRITE_ROWS`
        at a time, each batch handed to ``put(conn, run_id, stored)``, then ``latest_metrics``
        raised to the newest point per key (see :func:`_newest`). One commit (a small run's
        unpack into SQLite spent a fifth of its time on a second)."""
        newest: _Newest = {}
        self._check_run(conn, run_id)
        for start in range(0, points.num_rows, WRITE_ROWS):
            stored = _stored(points.slice(start, WRITE_ROWS))
            put(conn, run_id, stored)
            _newest(stored, newest)
        self._raise_latest(conn, run_id, newest)

    def _copy_batch(
        self, conn: sa.Connection, run_id: str, stored: pa.Table, table: str = "metrics"
    ) -> None:
        """The batch into ``table`` as CSV written by Arrow (~0.25 µs a point, where psycopg's
        ``write_row`` of Python values cost ~2 µs), in the connection's encoding."""
        q = self.quoted
        sql = f"COPY {q(table)} ({q(*METRICS_COLUMNS)}) FROM STDIN (FORMAT csv)"
        raw: Any = conn.connection.dbapi_connection
        run = pc.fill_null(pa.nulls(stored.num_rows, pa.string()), run_id)
        sink = pa.BufferOutputStream()
        pcsv.write_csv(stored.add_column(0, "run_uuid", run), sink, _CSV)
        buffer = sink.getvalue()
        data: pa.Buffer | bytes = buffer
        encoding = _client_encoding(self.driver, raw)
        if encoding != "utf-8":
            data = buffer.to_pybytes().decode("utf-8").encode(encoding)
        with raw.cursor() as cursor:
            if self.driver == "psycopg":
                with cursor.copy(sql) as copy:
                    copy.write(data)
            else:  # psycopg2 sends what read() returns as it is
                cursor.copy_expert(sql, io.BytesIO(data))

    def _insert_rows(self, conn: sa.Connection, run_id: str, stored: pa.Table) -> None:
        """SQLite and MySQL/MariaDB: one batch through the driver's executemany."""
        b = _python(stored)
        rows = list(zip(itertools.repeat(run_id, len(b.keys)), *b, strict=True))
        conn.exec_driver_sql(self._insert_skipping_existing(), rows)

    def _merge_batch(self, conn: sa.Connection, run_id: str, stored: pa.Table) -> None:
        """PostgreSQL, points of which some are there already: the batch copied into a
        temporary table (dropped at commit), then inserted from it skipping rows present."""
        q = self.quoted
        columns = q(*METRICS_COLUMNS)
        conn.exec_driver_sql(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {q(_MERGE_TABLE)} "
            f"(LIKE {q('metrics')}) ON COMMIT DROP"
        )
        conn.exec_driver_sql(f"TRUNCATE {q(_MERGE_TABLE)}")
        self._copy_batch(conn, run_id, stored, _MERGE_TABLE)
        conn.exec_driver_sql(
            f"INSERT INTO {q('metrics')} ({columns}) SELECT {columns} FROM {q(_MERGE_TABLE)} "
            "ON CONFLICT DO NOTHING"
        )

    def _check_run(self, conn: sa.Connection, run_id: str) -> None:
        """Refuse, as MLflow does, points for a run that is missing or deleted."""
        import sqlalchemy as sa

        r = self.runs.c
        stage = conn.execute(
            sa.select(r.lifecycle_stage).where(r.run_uuid == run_id)
        ).scalar_one_or_none()
        refuse_unless_active("run", run_id, stage)

    def _insert_skipping_existing(self) -> str:
        """INSERT of one point that leaves a row already there alone; executed many times by
        the driver (SQLAlchemy's per-row parameter processing would double the cost)."""
        sql = (
            f"INSERT INTO {self.quoted('metrics')} ({self.quoted(*METRICS_COLUMNS)}) "
            f"VALUES ({self.marks(len(METRICS_COLUMNS))})"
        )
        if self.dialect == "mysql":
            # A no-op update: unlike INSERT IGNORE it keeps strict mode's errors.
            run = self.quoted("run_uuid")
            return f"{sql} ON DUPLICATE KEY UPDATE {run} = {run}"
        return f"{sql} ON CONFLICT DO NOTHING"

    def _raise_latest(self, conn: sa.Connection, run_id: str, newest: _Newest) -> None:
        """``latest_metrics`` per key: insert where missing, update where strictly older."""
        import sqlalchemy as sa

        lm = self.latest.c
        found: dict[str, tuple[int, int, float]] = {}
        keys = sorted(newest)
        for start in range(0, len(keys), _KEYS_PER_QUERY):
            chunk = keys[start : start + _KEYS_PER_QUERY]
            stmt = (
                sa.select(lm.key, lm.step, lm.timestamp, lm.value)
                .where(lm.run_uuid == run_id, lm.key.in_(list(chunk)))
                .order_by(lm.key)
            )
            if self.dialect != "sqlite":
                stmt = stmt.with_for_update()
            for key, step, stamp, value in conn.execute(stmt):
                found[key] = (int(step), int(stamp), float(value))
        missing = [
            {"run_uuid": run_id, "key": k, "step": s, "timestamp": t, "value": v, "is_nan": n}
            for k, (s, t, v, n) in sorted(newest.items())
            if k not in found
        ]
        if missing:
            conn.execute(sa.insert(self.latest), missing)
        for key, old in sorted(found.items()):
            step, stamp, value, is_nan = newest[key]
            if (step, stamp, value) > old:
                conn.execute(
                    sa.update(self.latest)
                    .where(lm.run_uuid == run_id, lm.key == key)
                    .values(step=step, timestamp=stamp, value=value, is_nan=is_nan)
                )


def _unique_violation(driver: str) -> type[Exception]:
    """The driver's unique-violation error, imported only where it writes."""
    if driver == "psycopg":
        from psycopg.errors import UniqueViolation

        return UniqueViolation
    from psycopg2.errors import UniqueViolation as Violation2

    return Violation2  # type: ignore[no-any-return]


def _client_encoding(driver: str, raw: Any) -> str:
    """The Python codec of the connection's client encoding."""
    if driver == "psycopg":
        return codecs.lookup(raw.info.encoding).name
    from psycopg2.extensions import encodings

    return codecs.lookup(encodings[raw.encoding]).name


def _stored(points: pa.Table) -> pa.Table:
    """The points as MLflow stores them (NaN -> 0 with is_nan, +/-inf -> +/-DBL_MAX), in the
    order of :data:`.METRICS_COLUMNS` after ``run_uuid``."""
    raw = points.column("value")
    is_nan = pc.fill_null(pc.is_nan(raw), False)
    value = pc.if_else(is_nan, pa.scalar(0.0, pa.float64()), raw)
    value = pc.if_else(pc.equal(value, math.inf), pa.scalar(DBL_MAX, pa.float64()), value)
    value = pc.if_else(pc.equal(value, -math.inf), pa.scalar(-DBL_MAX, pa.float64()), value)
    return pa.table(
        {
            "key": points.column("key"),
            "step": points.column("step"),
            "timestamp": points.column("timestamp"),
            "value": value,
            "is_nan": is_nan,
        }
    )


def _python(stored: pa.Table) -> _Batch:
    """Stored points as Python values, for the drivers' parameters."""
    return _Batch(
        T.pylist(stored.column("key")),
        stored.column("step").to_pylist(),
        stored.column("timestamp").to_pylist(),
        stored.column("value").to_pylist(),
        stored.column("is_nan").to_pylist(),
    )


def _validate_keys(keys: list[str]) -> None:
    """MLflow's check of metric names (``mlflow.utils.validation._validate_metric_name`` on a
    POSIX system), once per distinct key, without importing MLflow unless a key fails it: MLflow
    then raises its own error."""
    for key in sorted(set(keys)):
        if not valid_metric_name(key):
            from mlflow.utils.validation import _validate_metric_name

            _validate_metric_name(key)


_METRIC_NAME = re.compile(r"^[/\w.\- :]*$")


def valid_metric_name(name: str) -> bool:
    """Whether MLflow 3.17 accepts ``name`` for a metric: slashes, alphanumerics, underscores,
    periods, dashes, colons and spaces, and a path that normalises to itself inside the run."""
    norm = posixpath.normpath(name)
    return bool(_METRIC_NAME.match(name)) and not (
        norm != name or norm == "." or norm.startswith("..") or norm.startswith("/")
    )


def _newest(stored: pa.Table, best: _Newest) -> None:
    """Per key in ``best``, the first point with the greatest (step, timestamp, stored value):
    what MLflow's strictly-greater replacement leaves after logging the points in this order.
    ``best`` carries on from earlier batches of the same run.

    Arrow's sort is stable (and holds -0.0 equal to 0.0, as Python does), so the first row per
    key after sorting by key, then (step, timestamp, value) descending, is each key's first
    greatest point of the batch; each replaces ``best``'s only if strictly greater."""
    table = stored.set_column(0, "key", pc.cast(stored.column("key"), pa.string()))
    order = pc.sort_indices(
        table,
        sort_keys=[
            ("key", "ascending"),
            ("step", "descending"),
            ("timestamp", "descending"),
            ("value", "descending"),
        ],
    )
    ranked = table.take(order).combine_chunks()
    keys = ranked.column("key")
    first = pa.concat_arrays(
        [
            pa.array([True]),
            pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1)).combine_chunks(),
        ]
    )
    for key, step, stamp, value, is_nan in zip(
        *(ranked.filter(first).column(c).to_pylist() for c in ranked.column_names), strict=True
    ):
        old = best.get(key)
        if old is None or (step, stamp, value) > old[:3]:
            best[key] = (step, stamp, value, is_nan)
