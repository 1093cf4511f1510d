"""Metric points read with plain SQL (pack), below MLflow's store layer; see
:mod:`.sql_metrics` for when this path is taken.

``SELECT run_uuid, key, COUNT(*) ... GROUP BY run_uuid, key ORDER BY run_uuid, key`` and, in the
same read snapshot, ``SELECT step, timestamp, value, is_nan FROM metrics WHERE run_uuid IN (...)
ORDER BY run_uuid, key, step`` (the order of an index MLflow keeps): the counts label the numeric
rows, so no string is fetched per point (:mod:`.sql_columns`: PostgreSQL's binary COPY through
psycopg, numpy record arrays otherwise). Totals that disagree (points written meanwhile) read the
batch again, then with keys and run ids per row (``ORDER BY run_uuid, key, step``), as
MySQL/MariaDB always do (their default collations group keys that differ in case). NaN where
``is_nan``, every other value exactly as stored (SQL stores already hold +/-inf as +/-DBL_MAX);
only the keys the run lists, as the API path reads; a run that looks longer than
:data:`LONG_RUN_POINTS` one key at a time.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import math
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import tables as T
from .sql_columns import NUMERIC_COLUMNS, UnexpectedCopyData, fetch_points, from_numpy
from .sql_text import METRICS_COLUMNS, marks, quoted

if TYPE_CHECKING:
    from .records import RunRecord

__all__ = ["LONG_RUN_POINTS", "READ_ROWS", "READ_RUNS", "PointReader"]

READ_RUNS = 500
"""Run ids per ``IN (...)`` list."""
READ_ROWS = 50_000
"""Rows per partition fetched with keys (:meth:`PointReader._select`)."""
LONG_RUN_POINTS = 1_000_000
"""A run that looks longer than this (by its latest steps) is read one key at a time."""

_log = logging.getLogger(__name__)


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
        short = [r for r in runs if r.size_hint <= LONG_RUN_POINTS]
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
        return quoted(self.dialect, *names)

    def marks(self, count: int) -> str:
        return marks(self.dialect, count)

    def _select(self, run_ids: Sequence[str], key: str | None = None) -> pa.Table:
        """The rows of the runs (of one key, if given), fetched in partitions straight off the
        driver's cursor (SQLAlchemy rows would double the cost of a large read)."""
        where = f"{self.quoted('run_uuid')} IN ({self.marks(len(run_ids))})"
        params: tuple[str, ...] = tuple(run_ids)
        if key is not None:
            where += f" AND {self.quoted('key')} = {self.marks(1)}"
            params += (key,)
        sql = (
            f"SELECT {self.quoted(*METRICS_COLUMNS)} FROM {self.quoted('metrics')} WHERE {where} "
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
    key = pc.take(pa.array([k for k, _n in keys], pa.string()), from_numpy(which, pa.int32()))
    run = pa.DictionaryArray.from_arrays(
        from_numpy(np.zeros(len(which), dtype=np.int32), pa.int32()),
        pa.array([run_id], pa.string()),
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
