"""Metric points straight through SQL, below MLflow's store layer. The one module of the package
that speaks SQL: it owns the schema-revision check, the read path (pack) and the write path
(unpack).

Metric points are the bulk of any archive, and MLflow's store spends Python objects, a session
and (on write) a latest-metric merge on every batch of them. On a database tracking URI
(``sqlite:``, ``postgresql:``, ``mysql:``) whose ``alembic_version`` holds a revision in
:data:`TESTED_REVISIONS`, points go through the store's own SQLAlchemy engine instead, the two
bulk statements straight to the driver's cursor:

* read: ``SELECT run_uuid, key, COUNT(*) ... GROUP BY run_uuid, key ORDER BY run_uuid, key``
  and, in the same read snapshot, ``SELECT step, timestamp, value, is_nan FROM metrics WHERE
  run_uuid IN (...) ORDER BY run_uuid, key, step`` (the order of an index MLflow keeps): the
  counts label the numeric rows, so no string is fetched per point (:mod:`.sql_columns`:
  PostgreSQL's binary COPY through psycopg, numpy record arrays otherwise). Totals that
  disagree (points written meanwhile) read the batch again, then with keys and run ids per row
  (``ORDER BY run_uuid, key, step``), as MySQL/MariaDB always do (their default collations
  group keys that differ in case). NaN where ``is_nan``, every other value exactly as stored
  (SQL stores already hold +/-inf as +/-DBL_MAX); only the keys the run lists, as the API path
  reads; a run that looks longer than :data:`LONG_RUN_POINTS` one key at a time;
* write: points sanitised as MLflow's ``sanitize_metric_value`` does (NaN -> 0 with ``is_nan``,
  +/-inf -> +/-DBL_MAX); on PostgreSQL through psycopg first by ``COPY ... FROM STDIN`` (one
  transaction per slice; a point already there fails it whole), else inserted in batches that
  skip rows already present (``ON CONFLICT DO NOTHING``; on MySQL/MariaDB a no-op ``ON
  DUPLICATE KEY UPDATE``, which unlike ``INSERT IGNORE`` keeps strict mode's errors), then
  ``latest_metrics`` raised per key to the first point with the greatest (step, timestamp,
  stored value), as ``_update_latest_metrics_if_necessary`` leaves it. Every write is
  idempotent: a resumed unpack may send the same points again.

Any other revision, or none readable, means MLflow's API (slower) and a note saying so. Set
``EXIM_NO_SQL_FAST_PATH=1`` to use MLflow's API always (benchmarks, or a suspected problem).
"""

from __future__ import annotations

import importlib
import itertools
import logging
import math
import os
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import tables as T
from .sql_columns import NUMERIC_COLUMNS, UnexpectedCopyData, fetch_points
from .uri import redact_uri, uri_kind

if TYPE_CHECKING:
    import sqlalchemy as sa

    from .records import RunRecord

__all__ = [
    "DISABLE_ENV",
    "TESTED_REVISIONS",
    "LazyFastPath",
    "PointReader",
    "SqlMetrics",
    "disabled",
    "open_fast_path",
    "revisions_tested",
    "size_hint",
]

TESTED_REVISIONS = frozenset({"dc11669786a5"})
"""Alembic revisions whose ``metrics`` / ``latest_metrics`` tables this module was tested on:
the head of mlflow 3.17.2's migrations (``add job executor persistence model``)."""

DISABLE_ENV = "EXIM_NO_SQL_FAST_PATH"
_DIALECTS = frozenset({"sqlite", "postgresql", "mysql"})
READ_RUNS = 500
"""Run ids per ``IN (...)`` list."""
READ_ROWS = 50_000
LONG_RUN_POINTS = 1_000_000
"""Rows per streamed partition."""
WRITE_ROWS = 5_000
"""Rows per INSERT batch and per transaction (short, so SQLite writers do not wait long)."""
_KEYS_PER_QUERY = 500
_COLUMNS = ("run_uuid", "key", "step", "timestamp", "value", "is_nan")
DBL_MAX = 1.7976931348623157e308

_Newest = dict[str, tuple[int, int, float, bool]]
"""Per metric key: (step, timestamp, stored value, is_nan) of the point ``latest_metrics`` keeps."""

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
    if engine.dialect.name not in _DIALECTS:
        text = f"{engine.dialect.name} not tested for direct SQL; using MLflow's API (slower)"
        return None, _note(uri, text)
    try:
        found = _revisions(engine)
    except sa.exc.SQLAlchemyError as exc:
        text = f"schema revision unreadable ({type(exc).__name__}); using MLflow's API (slower)"
        return None, _note(uri, text)
    if not revisions_tested(found):
        shown = ", ".join(sorted(found)) or "none"
        return None, _note(uri, f"schema revision {shown} not tested; using MLflow's API (slower)")
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


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _empty() -> pa.Table:
    return T.METRIC_POINTS.empty_table()


class PointReader:
    """Reads metric points with plain SQL over DB-API connections from ``connect`` (a context
    manager yielding one connection): the store's engine on MLflow's path, or the database's
    own driver (:mod:`.sql_source`)."""

    def __init__(
        self, dialect: str, driver: str, connect: Callable[[], AbstractContextManager[Any]]
    ) -> None:
        self.dialect = dialect
        self.driver = driver
        self._connect = connect
        self.rows_read = 0

    def read(self, runs: Sequence[RunRecord]) -> dict[str, pa.Table | Iterator[pa.Table]]:
        """Every point of every listed key of the runs: ``metrics`` slices per run, in (key,
        step) order (the order of the ``run_uuid, key, step`` index; the writer sorts fully).

        A run whose histories look longer than :data:`LONG_RUN_POINTS` (by its latest steps)
        comes as a lazy sequence of one table per key instead, read when the writer gets to
        it: memory then holds one key's history, not the run's."""
        out: dict[str, pa.Table | Iterator[pa.Table]] = {}
        short = [r for r in runs if size_hint(r) <= LONG_RUN_POINTS]
        for batch in _chunks(short, READ_RUNS):
            out.update(self._read_runs(batch))
        for run in runs:
            if run.run_id not in out:
                out[run.run_id] = self._by_key(run)
        return out

    def _read_runs(self, batch: Sequence[RunRecord]) -> dict[str, pa.Table]:
        """The points of a batch of runs: numeric columns plus counts per run and key where
        the rows can be told apart by those counts, else the rows with their strings."""
        ids = [r.run_id for r in batch]
        if self.dialect != "mysql":  # MySQL's default collations group 'Loss' with 'loss'
            for _attempt in range(2):
                counted = self._counted(ids)
                if counted is not None:
                    counts, points = counted
                    return _assemble(counts, points, batch)
            _log.info("metric points changed while read; reading them with their keys")
        return _split(self._select(ids), batch)

    def _counted(self, ids: Sequence[str]) -> tuple[list[tuple[str, str, int]], pa.Table] | None:
        """``COUNT(*)`` per run and key, then only ``step, timestamp, value, is_nan`` of the
        same rows in the same order (:mod:`.sql_columns`), both in one read snapshot where the
        database offers one. None when the totals differ (points written meanwhile)."""
        q = self.quoted
        where = f"{q('run_uuid')} IN ({self.marks(len(ids))})"
        order = f"ORDER BY {q('run_uuid', 'key')}"
        count_sql = (
            f"SELECT {q('run_uuid', 'key')}, COUNT(*) FROM {q('metrics')} WHERE {where} "
            f"GROUP BY {q('run_uuid', 'key')} {order}"
        )
        rest = f"FROM {q('metrics')} WHERE {where} {order}, {q('step')}"
        params = tuple(ids)
        with self._connect() as raw, _snapshot(raw, self.dialect, self.driver):
            cursor = raw.cursor()
            try:
                cursor.execute(count_sql, params)
                counts = [(str(r), str(k), int(n)) for r, k, n in cursor.fetchall()]
            finally:
                cursor.close()
            points = self._points(raw, rest, params)
        self.rows_read += points.num_rows
        if sum(n for _r, _k, n in counts) != points.num_rows:
            return None
        return counts, points

    def _points(self, raw: Any, rest: str, params: tuple[str, ...]) -> pa.Table:
        columns = self.quoted(*NUMERIC_COLUMNS)
        try:
            return fetch_points(raw, self.driver, self._streaming_cursor, columns, rest, params)
        except UnexpectedCopyData as exc:  # a stream of another shape: fetch the rows instead
            _log.info("binary COPY not usable (%s); fetching rows", exc)
            raw.rollback()
            return fetch_points(raw, "", self._streaming_cursor, columns, rest, params)

    def _by_key(self, run: RunRecord) -> Iterator[pa.Table]:
        for key in sorted(run.metric_keys, key=lambda k: k.encode("utf-8")):
            if self.dialect == "mysql":
                table = self._select([run.run_id], key)
                yield table.select(T.METRICS.schema.names).cast(T.METRIC_POINTS)
                continue
            q = self.quoted
            rest = (
                f"FROM {q('metrics')} WHERE {q('run_uuid')} = {self.marks(1)} "
                f"AND {q('key')} = {self.marks(1)} ORDER BY {q('step')}"
            )
            with self._connect() as raw:
                points = self._points(raw, rest, (run.run_id, key))
            self.rows_read += points.num_rows
            yield _labelled(run.run_id, [(key, points.num_rows)], points)

    def count(self, run_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Stored points per run and key (the table's key makes each stored point distinct)."""
        out: dict[str, dict[str, int]] = defaultdict(dict)
        for batch in _chunks(run_ids, READ_RUNS):
            sql = (
                f"SELECT {self.quoted('run_uuid', 'key')}, COUNT(*) FROM "
                f"{self.quoted('metrics')} WHERE {self.quoted('run_uuid')} IN "
                f"({self.marks(len(batch))}) GROUP BY {self.quoted('run_uuid', 'key')}"
            )
            with self._connect() as raw:
                cursor = raw.cursor()
                try:
                    cursor.execute(sql, tuple(batch))
                    for run_id, key, count in cursor.fetchall():
                        out[str(run_id)][str(key)] = int(count)
                finally:
                    cursor.close()
        return dict(out)

    def quoted(self, *names: str) -> str:
        """Identifiers, always quoted (lower-case names: the same meaning quoted or not)."""
        mark = "`" if self.dialect == "mysql" else '"'
        return ", ".join(f"{mark}{name}{mark}" for name in names)

    def marks(self, count: int) -> str:
        """DBAPI placeholders: qmark for sqlite3, format for the PostgreSQL and MySQL drivers."""
        return ", ".join(["?" if self.dialect == "sqlite" else "%s"] * count)

    def _select(self, run_ids: Sequence[str], key: str | None = None) -> pa.Table:
        """The rows of the runs (of one key, if given), fetched in partitions straight off the
        driver's cursor (SQLAlchemy rows would double the cost of a large read)."""
        where = f"{self.quoted('run_uuid')} IN ({self.marks(len(run_ids))})"
        params: tuple[str, ...] = tuple(run_ids)
        if key is not None:
            where += f" AND {self.quoted('key')} = {self.marks(1)}"
            params += (key,)
        sql = (
            f"SELECT {self.quoted(*_COLUMNS)} FROM {self.quoted('metrics')} WHERE {where} "
            f"ORDER BY {self.quoted('run_uuid', 'key', 'step')}"
        )
        parts: list[pa.Table] = []
        with self._connect() as raw:
            cursor = self._streaming_cursor(raw)
            try:
                cursor.execute(sql, params)
                while rows := cursor.fetchmany(READ_ROWS):
                    parts.append(_rows_table(rows))
            finally:
                cursor.close()
        table = pa.concat_tables(parts) if parts else _raw_empty()
        self.rows_read += table.num_rows
        return table

    def _streaming_cursor(self, raw: Any) -> Any:
        """A server-side cursor where the driver has one, so a large read is never all in
        memory twice; a plain cursor otherwise (sqlite3 steps through results as fetched)."""
        if self.driver == "psycopg":  # binary rows: a third less time than parsing text
            return raw.cursor(name=f"exim_metrics_{uuid.uuid4().hex[:12]}", binary=True)
        if self.driver == "psycopg2":
            return raw.cursor(name=f"exim_metrics_{uuid.uuid4().hex[:12]}")
        if self.driver in ("pymysql", "mysqldb"):
            package = "pymysql" if self.driver == "pymysql" else "MySQLdb"
            cursors = importlib.import_module(f"{package}.cursors")
            return raw.cursor(cursors.SSCursor)
        return raw.cursor()


class SqlMetrics:
    """Reads (:class:`PointReader`) and writes metric points of one database through the
    store's SQLAlchemy engine."""

    def __init__(self, engine: sa.Engine) -> None:
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlRun

        self.engine = engine
        self.dialect = engine.dialect.name
        self.metrics: sa.Table = SqlMetric.__table__
        self.latest: sa.Table = SqlLatestMetric.__table__
        self.runs: sa.Table = SqlRun.__table__
        self.reader = PointReader(self.dialect, engine.dialect.driver, self._raw_connection)
        self.read = self.reader.read
        self.count = self.reader.count

    @contextmanager
    def _raw_connection(self) -> Iterator[Any]:
        with self.engine.connect() as conn:
            yield conn.connection.dbapi_connection

    # -- write (unpack) --------------------------------------------------------------------------

    def write(self, run_id: str, points: pa.Table) -> None:
        """Insert the run's points (those already there are skipped), then raise
        ``latest_metrics`` to the newest point per key. Safe to repeat.

        Points become Python objects :data:`WRITE_ROWS` at a time (a whole slice at once cost
        ~12 MB per 50,000 points in every writer thread), all in one transaction: a commit per
        batch was a tenth of an unpack into SQLite (each one a sync to disk)."""
        if not points.num_rows:
            return
        _validate_keys(pc.unique(points.column("key")).to_pylist())
        self._check_run(run_id)
        newest = None
        if self.engine.dialect.driver == "psycopg":
            try:
                newest = self._write_copy(run_id, points)
            except _unique_violation():  # points already there (a resumed run): skip them
                newest = None
        if newest is None:
            put = self._insert_arrays if self.dialect == "postgresql" else self._insert_rows
            newest = self._write_batches(run_id, points, put)
        self._raise_latest(run_id, newest)

    def _write_copy(self, run_id: str, points: pa.Table) -> _Newest:
        """PostgreSQL through psycopg: the points by ``COPY ... FROM STDIN``, all or none (one
        transaction); a third less time than ``INSERT ... ON CONFLICT``, but a point already
        there fails it with a unique violation (the caller then inserts, skipping those)."""
        return self._write_batches(run_id, points, self._copy_batch)

    def _write_batches(self, run_id: str, points: pa.Table, put: Callable[..., None]) -> _Newest:
        """The points sanitised :data:`WRITE_ROWS` at a time, each batch handed to
        ``put(conn, run_id, keys, steps, stamps, values, nans)``, all in one transaction; returns
        the newest point per key (see :func:`_newest`)."""
        newest: _Newest = {}
        with self.engine.begin() as conn:
            for start in range(0, points.num_rows, WRITE_ROWS):
                batch = _sanitised(points.slice(start, WRITE_ROWS))
                put(conn, run_id, *batch)
                _newest(*batch, newest)
        return newest

    def _copy_batch(
        self,
        conn: sa.Connection,
        run_id: str,
        keys: list[str],
        steps: list[int],
        stamps: list[int],
        values: list[float],
        nans: list[bool],
    ) -> None:
        q = self.reader.quoted
        sql = f"COPY {q('metrics')} ({q(*_COLUMNS)}) FROM STDIN"
        raw: Any = conn.connection.dbapi_connection
        with raw.cursor() as cursor, cursor.copy(sql) as copy:
            for row in zip(itertools.repeat(run_id), keys, steps, stamps, values, nans):
                copy.write_row(row)

    def _insert_rows(
        self,
        conn: sa.Connection,
        run_id: str,
        keys: list[str],
        steps: list[int],
        stamps: list[int],
        values: list[float],
        nans: list[bool],
    ) -> None:
        """SQLite and MySQL/MariaDB: one batch through the driver's executemany."""
        ids = [run_id] * len(keys)
        rows = list(zip(ids, keys, steps, stamps, values, nans, strict=True))
        conn.exec_driver_sql(self._insert_skipping_existing(), rows)

    def _insert_arrays(
        self,
        conn: sa.Connection,
        run_id: str,
        keys: list[str],
        steps: list[int],
        stamps: list[int],
        values: list[float],
        nans: list[bool],
    ) -> None:
        """PostgreSQL: one batch as one ``INSERT ... SELECT FROM unnest(arrays)``, six array
        parameters instead of one statement per row (the driver's executemany sends every row
        as its own statement: ~4x slower)."""
        q = self.reader.quoted
        sql = (
            f"INSERT INTO {q('metrics')} ({q(*_COLUMNS)}) "
            "SELECT %s, k, s, t, v, n FROM unnest("
            "%s::text[], %s::bigint[], %s::bigint[], %s::float8[], %s::boolean[]"
            ") AS u(k, s, t, v, n) ON CONFLICT DO NOTHING"
        )
        conn.exec_driver_sql(sql, (run_id, keys, steps, stamps, values, nans))

    def _check_run(self, run_id: str) -> None:
        """Refuse, as MLflow does, points for a run that is missing or deleted."""
        import sqlalchemy as sa
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

        r = self.runs.c
        with self.engine.connect() as conn:
            stage = conn.execute(
                sa.select(r.lifecycle_stage).where(r.run_uuid == run_id)
            ).scalar_one_or_none()
        if stage is None:
            raise MlflowException(
                f"Run with id={run_id} not found", error_code=RESOURCE_DOES_NOT_EXIST
            )
        if stage != "active":
            raise MlflowException(
                f"The run {run_id} must be in the 'active' state. Current state is {stage}.",
                error_code=INVALID_PARAMETER_VALUE,
            )

    def _insert_skipping_existing(self) -> str:
        """INSERT of one point that leaves a row already there alone; executed many times by
        the driver (SQLAlchemy's per-row parameter processing would double the cost)."""
        sql = (
            f"INSERT INTO {self.reader.quoted('metrics')} ({self.reader.quoted(*_COLUMNS)}) "
            f"VALUES ({self.reader.marks(len(_COLUMNS))})"
        )
        if self.dialect == "mysql":
            # A no-op update: unlike INSERT IGNORE it keeps strict mode's errors.
            run = self.reader.quoted("run_uuid")
            return f"{sql} ON DUPLICATE KEY UPDATE {run} = {run}"
        return f"{sql} ON CONFLICT DO NOTHING"

    def _raise_latest(self, run_id: str, newest: dict[str, tuple[int, int, float, bool]]) -> None:
        """``latest_metrics`` per key: insert where missing, update where strictly older."""
        import sqlalchemy as sa

        lm = self.latest.c
        with self.engine.begin() as conn:
            found: dict[str, tuple[int, int, float]] = {}
            for chunk in _chunks(sorted(newest), _KEYS_PER_QUERY):
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


# -- Arrow helpers -------------------------------------------------------------------------------

_RAW = pa.schema(
    [
        ("run_id", T.RUN_ID_DICT),
        ("key", pa.string()),
        ("step", pa.int64()),
        ("timestamp", pa.int64()),
        ("value", pa.float64()),
        ("is_nan", pa.bool_()),
    ]
)


def size_hint(run: RunRecord) -> int:
    """Points the run's histories hold if steps count up from 0 (its latest step per key)."""
    return sum(max(1, step + 1) for step in run.metric_last_steps)


def _raw_empty() -> pa.Table:
    return _RAW.empty_table()


def _rows_table(rows: Sequence[Any]) -> pa.Table:
    """One partition of result rows as columns, with NaN put back where ``is_nan``."""
    run_ids, keys, steps, stamps, values, nans = zip(*rows, strict=True)
    is_nan = pa.array(nans).cast(pa.bool_())
    value = pa.array(values, pa.float64())
    if pc.any(is_nan).as_py():
        value = pc.if_else(is_nan, pa.scalar(math.nan, pa.float64()), value)
    return pa.table(
        [
            pa.array(run_ids, pa.string()).dictionary_encode(),
            pa.array(keys, pa.string()),
            pa.array(steps, pa.int64()),
            pa.array(stamps, pa.int64()),
            value,
            is_nan,
        ],
        schema=_RAW,
    )


@contextmanager
def _snapshot(raw: Any, dialect: str, driver: str) -> Iterator[None]:
    """One read snapshot for the statements inside, where the connection can start one now:
    a deferred transaction on SQLite, REPEATABLE READ on an idle PostgreSQL connection."""
    if dialect == "sqlite":
        began = not raw.in_transaction
        if began:
            raw.execute("BEGIN")
        try:
            yield
        finally:
            if began:
                raw.rollback()
        return
    idle = False
    if dialect == "postgresql" and not getattr(raw, "autocommit", False):
        if driver == "psycopg":
            idle = raw.info.transaction_status == 0  # pq.TransactionStatus.IDLE
        elif driver == "psycopg2":
            idle = raw.get_transaction_status() == 0  # extensions.TRANSACTION_STATUS_IDLE
    if idle:
        cursor = raw.cursor()
        try:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        finally:
            cursor.close()
    yield


def _assemble(
    counts: list[tuple[str, str, int]], points: pa.Table, runs: Sequence[RunRecord]
) -> dict[str, pa.Table]:
    """Per run: its rows of the listed keys, labelled by the counts (in the rows' order)."""
    segments: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    offset = 0
    for run_id, key, n in counts:
        segments[run_id].append((key, offset, n))
        offset += n
    out: dict[str, pa.Table] = {}
    for run in runs:
        listed = set(run.metric_keys)
        mine = [seg for seg in segments.get(run.run_id, []) if seg[0] in listed]
        if not mine:
            out[run.run_id] = _empty()
            continue
        ranges: list[list[int]] = []  # adjacent segments read as one slice
        for _key, start, n in mine:
            if ranges and ranges[-1][1] == start:
                ranges[-1][1] = start + n
            else:
                ranges.append([start, start + n])
        rows = pa.concat_tables([points.slice(a, b - a) for a, b in ranges])
        out[run.run_id] = _labelled(run.run_id, [(k, n) for k, _s, n in mine], rows)
    return out


def _labelled(run_id: str, keys: list[tuple[str, int]], points: pa.Table) -> pa.Table:
    """``points`` (step, timestamp, value) with run id and key columns: ``keys`` gives each
    key's number of rows, in the rows' order."""
    sizes = np.array([n for _k, n in keys], dtype=np.int64)
    which = np.repeat(np.arange(len(keys), dtype=np.int32), sizes)
    key = pc.take(pa.array([k for k, _n in keys], pa.string()), pa.array(which))
    run = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(len(which), dtype=np.int32)), pa.array([run_id], pa.string())
    )
    return pa.Table.from_arrays(
        [run, key, points.column("step"), points.column("timestamp"), points.column("value")],
        schema=T.METRIC_POINTS,
    )


def _split(table: pa.Table, runs: Sequence[RunRecord]) -> dict[str, pa.Table]:
    """Per run: its rows of the listed keys, as they came (runs without rows get none).

    Works chunk by chunk (one chunk per fetched partition), so a run's points are never copied
    together: each run gets zero-copy slices of the partitions that hold it.
    """
    table = table.select(T.METRICS.schema.names)
    pieces: dict[str, list[pa.Table]] = defaultdict(list)
    offset = 0
    for chunk_rows in [len(c) for c in table.column("run_id").chunks]:
        part = table.slice(offset, chunk_rows)
        offset += chunk_rows
        if not chunk_rows:
            continue
        ids = part.column("run_id").combine_chunks()
        change = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))
        starts = [0, *(i + 1 for i in pc.indices_nonzero(change).to_pylist()), len(ids)]
        for start, end in itertools.pairwise(starts):
            pieces[str(ids[start].as_py())].append(part.slice(start, end - start))
    out: dict[str, pa.Table] = {}
    for run in runs:
        if run.run_id not in pieces:
            out[run.run_id] = _empty()
            continue
        got = pa.concat_tables(pieces.pop(run.run_id))
        listed = set(run.metric_keys)
        if not set(pc.unique(got.column("key")).to_pylist()) <= listed:
            got = got.filter(pc.is_in(got.column("key"), pa.array(sorted(listed), pa.string())))
        out[run.run_id] = got.cast(T.METRIC_POINTS)
    return out


def _unique_violation() -> type[Exception]:
    """psycopg's unique-violation error, imported only where psycopg writes."""
    from psycopg.errors import UniqueViolation

    return UniqueViolation


def _sanitised(
    points: pa.Table,
) -> tuple[list[str], list[int], list[int], list[float], list[bool]]:
    """The points as MLflow stores them: NaN -> 0 with is_nan, +/-inf -> +/-DBL_MAX."""
    raw = points.column("value")
    is_nan = pc.fill_null(pc.is_nan(raw), False)
    value = pc.if_else(is_nan, pa.scalar(0.0, pa.float64()), raw)
    value = pc.if_else(pc.equal(value, math.inf), pa.scalar(DBL_MAX, pa.float64()), value)
    value = pc.if_else(pc.equal(value, -math.inf), pa.scalar(-DBL_MAX, pa.float64()), value)
    return (
        T.pylist(points.column("key")),
        points.column("step").to_pylist(),
        points.column("timestamp").to_pylist(),
        value.to_pylist(),
        is_nan.to_pylist(),
    )


def _validate_keys(keys: list[str]) -> None:
    """MLflow's own check of metric names, once per distinct key."""
    from mlflow.utils.validation import _validate_metric_name

    for key in sorted(set(keys)):
        _validate_metric_name(key)


def _newest(
    keys: list[str],
    steps: list[int],
    stamps: list[int],
    values: list[float],
    nans: list[bool],
    best: dict[str, tuple[int, int, float, bool]],
) -> None:
    """Per key in ``best``, the first point with the greatest (step, timestamp, stored value):
    what MLflow's strictly-greater replacement leaves after logging the points in this order.
    ``best`` carries on from earlier batches of the same run."""
    for key, step, stamp, value, is_nan in zip(keys, steps, stamps, values, nans, strict=True):
        old = best.get(key)
        if old is None or (step, stamp, value) > old[:3]:
            best[key] = (step, stamp, value, is_nan)
