"""Direct SQL for metric points (exim_archive.sql_metrics) against SQLite, PostgreSQL and MariaDB
for real: reads equal MLflow's API reads, writes leave what MLflow's API leaves (histories and
latest values), re-sending points adds nothing, and an untested schema revision falls back to
MLflow's API with a note."""

from __future__ import annotations

import math
import re
import shutil
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
from conftest import NewStore
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlRun, SqlTag
from workload import T0, seed_rich, snapshot

from exim_archive import pack, sql_columns, sql_metrics, sql_point_reader, sql_point_writer, unpack
from exim_archive import tables as T
from exim_archive.histories import HistoryReader
from exim_archive.sink import MlflowSink
from exim_archive.source import MlflowSource
from exim_archive.sql_run_writer import RunEnd

BACKENDS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.database),
    pytest.param("postgres-psycopg2", marks=pytest.mark.database),  # SQLAlchemy 2.0's default
    pytest.param("mariadb", marks=pytest.mark.database),
]
UNTESTED = "0123456789ab"
NOTE = f"schema revision {UNTESTED} not tested; using MLflow's API (slower)"


@pytest.fixture(params=BACKENDS)
def db_uri(request: pytest.FixtureRequest, new_sqlite: NewStore) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return new_sqlite("db")
    name = "mysql_uri" if request.param == "mariadb" else "postgres_uri"
    uri: str = request.getfixturevalue(name)
    if request.param == "postgres-psycopg2":
        uri = _psycopg2(uri)
    MlflowClient(uri).search_experiments()  # runs MLflow's migrations
    return uri


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny IN lists, partitions and insert batches, so every boundary is crossed."""
    monkeypatch.setattr(sql_point_reader, "READ_RUNS", 2)
    monkeypatch.setattr(sql_point_reader, "READ_ROWS", 5)
    monkeypatch.setattr(sql_columns, "PARTITION_ROWS", 5)
    monkeypatch.setattr(sql_point_writer, "WRITE_ROWS", 7)


@pytest.fixture
def sql_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The run ids direct SQL wrote points for (SqlMetrics.write, or SqlMetrics.finish or
    finish_many with new runs' last points)."""
    calls: list[str] = []
    real_write, real_finish = sql_metrics.SqlMetrics.write, sql_metrics.SqlMetrics.finish
    real_many = sql_metrics.SqlMetrics.finish_many

    def write(self: sql_metrics.SqlMetrics, run_id: str, points: pa.Table) -> None:
        calls.append(run_id)
        real_write(self, run_id, points)

    def finish(self: sql_metrics.SqlMetrics, run_id: str, *args: Any) -> None:
        points = args[-1]
        if points is not None and points.num_rows:
            calls.append(run_id)
        real_finish(self, run_id, *args)

    def finish_many(self: sql_metrics.SqlMetrics, ends: list[tuple[str, Any, Any]]) -> None:
        calls.extend(run_id for run_id, _, points in ends if points is not None and points.num_rows)
        real_many(self, ends)

    monkeypatch.setattr(sql_metrics.SqlMetrics, "write", write)
    monkeypatch.setattr(sql_metrics.SqlMetrics, "finish", finish)
    monkeypatch.setattr(sql_metrics.SqlMetrics, "finish_many", finish_many)
    return calls


def _edge_metrics() -> list[Metric]:
    """NaN, +/-inf, -0.0, ties, repeated steps, negative and huge steps, in logging order."""
    out = [Metric("edge", float(s % 7) - 3.0, T0 + s, s) for s in range(40)]
    out += [
        Metric("special", float("nan"), T0 + 1, 0),
        Metric("special", float("inf"), T0 + 2, 1),
        Metric("special", float("-inf"), T0 + 3, 2),
        Metric("special", 5e-324, T0 + 5, 4),
        Metric("special", 1e300, T0 + 6, 3),
        Metric("repeat", 3.0, T0 + 12, 7),
        Metric("repeat", 1.0, T0 + 10, 7),
        Metric("repeat", 2.0, T0 + 11, 7),
        Metric("repeat", 0.5, T0 + 12, 7),
        Metric("steps", 1.0, T0, -5),
        Metric("steps", 2.0, T0, -(2**40)),
        Metric("steps", 3.0, T0, 2**62),
        Metric("steps", 4.0, 2**50, 2**62),
        Metric("tie", 0.0, T0, 5),
        Metric("tie", float("nan"), T0, 5),
        Metric("tie", -1.0, T0, 4),
        Metric("nanlast", 1.0, T0, 0),
        Metric("nanlast", float("nan"), T0 + 1, 9),
        Metric("infmax", float("-inf"), T0, 3),
        Metric("infmax", float("inf"), T0, 3),
        Metric("infmax", 7.0, T0, 3),
        Metric("zeros", -0.0, T0, 1),  # the sign of a zero kept
        Metric("zeros", 0.0, T0, 0),
        Metric("naïve loss/ü 1:2", 0.1, T0, 0),  # non-ASCII, space, slash and colon in a name
        Metric("digits", 1 / 3, T0, 0),
        Metric("digits", 2.0**53 + 2, T0, 1),
        Metric("digits", 2.2250738585072014e-308, T0, 2),  # smallest normal
        Metric("digits", -1.7976931348623157e308, T0, 3),
        Metric("digits", 123456789.12345679, T0, 4),
    ]
    return out


def _points(metrics: list[Metric]) -> pa.Table:
    """The metrics as an archive holds them (sorted by the table's sort key)."""
    table = pa.table(
        {
            "run_id": ["r"] * len(metrics),
            "key": [m.key for m in metrics],
            "step": [m.step for m in metrics],
            "timestamp": [m.timestamp for m in metrics],
            "value": [m.value for m in metrics],
        },
        schema=T.METRICS.schema,
    )
    return table.sort_by([(c, "ascending") for c in T.METRICS.sort_key])


def _v(value: float) -> str:
    return "nan" if math.isnan(value) else repr(value)


def _rows(table: pa.Table) -> list[tuple[Any, ...]]:
    return [
        (r["run_id"], r["key"], r["step"], r["timestamp"], _v(r["value"]))
        for r in table.to_pylist()
    ]


def _history(uri: str, run_id: str) -> dict[str, list[tuple[int, int, str]]]:
    c = MlflowClient(uri)
    return {
        key: sorted((m.step, m.timestamp, _v(m.value)) for m in c.get_metric_history(run_id, key))
        for key in c.get_run(run_id).data.metrics
    }


def _latest(uri: str, run_id: str) -> list[tuple[str, int, int, str]]:
    run = MlflowClient(uri).get_run(run_id)
    return sorted((m.key, m.step, m.timestamp, _v(m.value)) for m in run.data._metric_objs)


def _assert_same_points(uri: str, sql_run: str, api_run: str) -> None:
    """The run written with direct SQL holds what the one written through MLflow's API holds
    (histories and latest values), but for one thing: MLflow through psycopg2 stores -0.0 as 0
    (psycopg2 inlines parameters as SQL literals, where ``-0.0`` is minus a numeric zero) while
    COPY keeps the sign, as MLflow through psycopg does."""
    got_history, got_latest = _history(uri, sql_run), _latest(uri, sql_run)
    if uri.startswith("postgresql"):
        assert got_history["zeros"] == [(0, T0, "0.0"), (1, T0, "-0.0")]
    if uri.startswith("postgresql+psycopg2"):
        got_history = {
            k: [(s, t, "0.0" if v == "-0.0" else v) for s, t, v in points]
            for k, points in got_history.items()
        }
        got_latest = [(k, s, t, "0.0" if v == "-0.0" else v) for k, s, t, v in got_latest]
    assert got_history == _history(uri, api_run)
    assert got_latest == _latest(uri, api_run)


def _count(uri: str, table: str, run_id: str) -> int:
    engine = sa.create_engine(uri)
    try:
        with engine.connect() as conn:
            query = sa.text(f"SELECT COUNT(*) FROM {table} WHERE run_uuid = :r")
            return int(conn.execute(query, {"r": run_id}).scalar_one())
    finally:
        engine.dispose()


def _set_revision(uri: str, revision: str) -> None:
    engine = sa.create_engine(uri)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
    finally:
        engine.dispose()


def _read(source: MlflowSource, runs: list[Any]) -> tuple[HistoryReader, dict[str, pa.Table]]:
    reader = HistoryReader(source, workers=2)
    tables = {}
    for run_id, points in reader.read(runs).items():
        # a run whose latest steps look long comes one key at a time: join them
        parts = [points] if isinstance(points, pa.Table) else list(points)
        tables[run_id] = pa.concat_tables(parts) if parts else T.METRIC_POINTS.empty_table()
    return reader, tables


def _sorted(tables: dict[str, pa.Table]) -> dict[str, list[tuple[Any, ...]]]:
    keys = [(c, "ascending") for c in T.METRICS.sort_key]
    return {rid: _rows(t.cast(T.METRICS.schema).sort_by(keys)) for rid, t in tables.items()}


# -- the revision pinned ---------------------------------------------------------------------------


def test_head_revision_of_this_mlflow_is_tested(new_sqlite: NewStore) -> None:
    uri = new_sqlite("db")
    path = uri.split("///", 1)[1]
    with sqlite3.connect(path) as conn:
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert revision in sql_metrics.TESTED_REVISIONS


def test_never_for_http_or_file_stores(tmp_path: Path) -> None:
    assert sql_metrics.open_fast_path(object(), "http://127.0.0.1:5000") == (None, None)
    assert sql_metrics.open_fast_path(object(), "https://mlflow.example") == (None, None)
    sink = MlflowSink(str(tmp_path / "mlruns"))
    assert sink._sql_metrics.get() is None and sink.notes == []


def test_env_var_turns_it_off(new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = new_sqlite("db")
    store = MlflowClient(uri)._tracking_client.store
    assert sql_metrics.open_fast_path(store, uri)[0] is not None
    monkeypatch.setenv(sql_metrics.DISABLE_ENV, "1")
    assert sql_metrics.open_fast_path(store, uri) == (None, None)


# -- read ------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("small_batches")
def test_sql_read_equals_api_read(
    db_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_rich(db_uri, "rd", tmp_path / "art")
    c = MlflowClient(db_uri)
    exp = c.create_experiment("edges", artifact_location=(tmp_path / "art2").as_uri())
    edge = c.create_run(exp, start_time=T0).info.run_id
    c.log_batch(edge, metrics=_edge_metrics())
    # A point whose key the run does not list (no latest_metrics row): the API never reads it.
    engine = sa.create_engine(db_uri)
    latest = SqlLatestMetric.__table__
    with engine.begin() as conn:
        conn.execute(sa.delete(latest).where(latest.c.run_uuid == edge, latest.c.key == "edge"))
    engine.dispose()

    source = MlflowSource(db_uri)
    runs = source.runs([e.experiment_id for e in source.experiments(None)])
    fast_reader, fast = _read(source, runs)
    assert fast_reader.sql_reads == 1 and fast_reader.bulk_calls == 0 and fast_reader.note is None
    monkeypatch.setenv(sql_metrics.DISABLE_ENV, "1")
    api_reader, api = _read(source, runs)
    assert api_reader.sql_reads == 0

    assert set(fast) == set(api) == {r.run_id for r in runs}
    assert _sorted(fast) == _sorted(api)
    for table in fast.values():  # run ids dictionary-encoded: the writer decodes them
        assert table.cast(T.METRICS.schema).schema.equals(T.METRICS.schema)
        assert table.schema.field("run_id").type == T.RUN_ID_DICT
    edge_rows = _sorted(fast)[edge]
    assert sum(r[1] == "edge" for r in edge_rows) == 0
    special = [r[4] for r in edge_rows if r[1] == "special"]
    dbl_max = "1.7976931348623157e+308"
    assert special == ["nan", dbl_max, "-" + dbl_max, "1e+300", "5e-324"]
    assert [r[2] for r in edge_rows if r[1] == "steps"] == [-(2**40), -5, 2**62, 2**62]
    assert sum(t.num_rows for t in fast.values()) == 300 + 11 + 3 + len(_edge_metrics()) - 40


@pytest.mark.parametrize("short_reads", [1, 2])
def test_counts_and_rows_that_disagree_are_read_again(
    db_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short_reads: int
) -> None:
    """The bulk read labels numeric rows by counts per run and key; when the totals differ (as
    if points arrived in between) the batch is read again, and after a second miss with its
    keys. MySQL reads rows with their keys always (its default collations fold case)."""
    seed_rich(db_uri, "rd", tmp_path / "art")
    source = MlflowSource(db_uri)
    runs = source.runs([e.experiment_id for e in source.experiments(None)])
    _reader, want = _read(source, runs)
    calls: dict[tuple[Any, ...], int] = defaultdict(int)  # per statement and parameters
    real = sql_point_reader.fetch_points

    def lossy(*args: Any) -> pa.Table:
        table = real(*args)
        if " IN (" not in args[4]:  # one key of a long run: no counts to compare with
            return table
        calls[args[3:]] += 1
        return table.slice(1) if calls[args[3:]] <= short_reads and table.num_rows else table

    monkeypatch.setattr(sql_point_reader, "fetch_points", lossy)
    _reader, got = _read(source, runs)
    assert _sorted(got) == _sorted(want)
    assert set(calls.values()) == (set() if db_uri.startswith("mysql") else {2})


def _psycopg2(uri: str) -> str:
    """The same PostgreSQL database through psycopg2 (what ``postgresql://`` meant before
    SQLAlchemy 2.1, and what many servers' URIs still name)."""
    return uri.replace("postgresql://", "postgresql+psycopg2://", 1)


@pytest.mark.database
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_postgres_counts_and_rows_share_one_snapshot(
    postgres_uri: str, monkeypatch: pytest.MonkeyPatch, driver: str
) -> None:
    """A point committed between the count and the rows is in neither (REPEATABLE READ): the
    first read is consistent and nothing is read twice."""
    if driver == "psycopg2":
        postgres_uri = _psycopg2(postgres_uri)
    c = MlflowClient(postgres_uri)
    exp = c.create_experiment("snapshot")
    run_id = c.create_run(exp, start_time=T0).info.run_id
    c.log_batch(run_id, metrics=[Metric("m", float(i), T0 + i, i) for i in range(100)])
    source = MlflowSource(postgres_uri)
    runs = source.runs([exp])
    assert source.client._tracking_client.store.engine.dialect.driver == driver
    calls: list[int] = []
    real = sql_point_reader.fetch_points

    def late_write(*args: Any) -> pa.Table:
        if not calls:  # another connection commits a point after the count was taken
            c.log_batch(run_id, metrics=[Metric("m", 1.0, T0 + 500, 500)])
        table = real(*args)
        calls.append(table.num_rows)
        return table

    monkeypatch.setattr(sql_point_reader, "fetch_points", late_write)
    _reader, got = _read(source, runs)
    assert calls == [100] and got[run_id].num_rows == 100
    assert len(c.get_metric_history(run_id, "m")) == 101


@pytest.mark.database
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_postgres_copy_that_cannot_be_parsed_falls_back_to_rows(
    postgres_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, driver: str
) -> None:
    """Binary COPY data of another shape than expected: the same rows fetched as tuples."""
    if driver == "psycopg2":
        postgres_uri = _psycopg2(postgres_uri)
    MlflowClient(postgres_uri).search_experiments()
    seed_rich(postgres_uri, "copy", tmp_path / "art")
    source = MlflowSource(postgres_uri)
    runs = source.runs([e.experiment_id for e in source.experiments(None)])
    _reader, want = _read(source, runs)
    refused: list[int] = []

    def refuse(data: bytes) -> pa.Table:
        refused.append(len(data))
        raise sql_columns.UnexpectedCopyData("test")

    monkeypatch.setattr(sql_columns, "_parse", refuse)
    _reader, got = _read(source, runs)
    assert refused and _sorted(got) == _sorted(want)


def test_untested_revision_reads_through_the_api(new_sqlite: NewStore, tmp_path: Path) -> None:
    uri = new_sqlite("src")
    seed_rich(uri, "fb", tmp_path / "art")
    source = MlflowSource(uri)
    runs = source.runs([e.experiment_id for e in source.experiments(None)])
    _, expected = _read(source, runs)

    path = Path(uri.split("///", 1)[1])
    shutil.copyfile(path, tmp_path / "copy.db")
    copy_uri = f"sqlite:///{tmp_path / 'copy.db'}"
    copy = MlflowSource(copy_uri)  # MLflow checks the revision when it opens the store
    _set_revision(copy_uri, UNTESTED)
    reader, got = _read(copy, runs)
    assert reader.note == NOTE and reader.sql_reads == 0 and reader.bulk_calls > 0
    assert _sorted(got) == _sorted(expected)


# -- write -----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("small_batches")
def test_sql_write_equals_api_write_and_is_idempotent(
    db_uri: str, sql_writes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    c = MlflowClient(db_uri)
    exp = c.create_experiment("w")
    api_run = c.create_run(exp, start_time=T0).info.run_id
    sql_run = c.create_run(exp, start_time=T0).info.run_id
    points = _points(_edge_metrics())

    monkeypatch.setenv(sql_metrics.DISABLE_ENV, "1")
    MlflowSink(db_uri).log_metrics(api_run, points)
    monkeypatch.delenv(sql_metrics.DISABLE_ENV)
    assert sql_writes == []

    copies: list[bool] = []  # PostgreSQL: whether each COPY went in (no point already there)
    real_copy = sql_point_writer.PointWriter._write_copy

    def copy_spy(self: sql_point_writer.PointWriter, *args: Any) -> Any:
        try:
            newest = real_copy(self, *args)
        except Exception:
            copies.append(False)
            raise
        copies.append(True)
        return newest

    monkeypatch.setattr(sql_point_writer.PointWriter, "_write_copy", copy_spy)
    sink = MlflowSink(db_uri)
    half = points.num_rows // 2
    sink.log_metrics(sql_run, points.slice(0, half))  # an unpack killed half way...
    sink.log_metrics(sql_run, points)  # ...and resumed: everything is sent again
    assert sql_writes == [sql_run, sql_run] and sink.notes == []
    _assert_same_points(db_uri, sql_run, api_run)
    latest = dict((k, (s, t, v)) for k, s, t, v in _latest(db_uri, sql_run))
    assert latest["tie"] == (5, T0, "0.0") and latest["nanlast"] == (9, T0 + 1, "nan")
    assert latest["infmax"] == (3, T0, "1.7976931348623157e+308")
    assert latest["naïve loss/ü 1:2"] == (0, T0, "0.1")

    rows = _count(db_uri, "metrics", sql_run)
    assert rows == _count(db_uri, "metrics", api_run)
    sink.log_metrics(sql_run, points)
    sink.log_metrics(sql_run, points.slice(3, 10))
    assert _count(db_uri, "metrics", sql_run) == rows
    assert _count(db_uri, "latest_metrics", sql_run) == len(latest)
    _assert_same_points(db_uri, sql_run, api_run)
    # COPY for new points; a unique violation, then a merge, for points already there
    assert copies == ([True, False, False, False] if db_uri.startswith("postgresql") else [])


@pytest.mark.database
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_postgres_copy_in_a_client_encoding_other_than_utf8(
    postgres_uri: str, driver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Arrow writes UTF-8; COPY data must be in the connection's encoding (here LATIN1)."""
    base = postgres_uri if driver == "psycopg" else _psycopg2(postgres_uri)
    uri = f"{base}?client_encoding=LATIN1"
    c = MlflowClient(uri)
    exp = c.create_experiment("latin")
    api_run = c.create_run(exp, start_time=T0).info.run_id
    sql_run = c.create_run(exp, start_time=T0).info.run_id
    points = _points(_edge_metrics())
    monkeypatch.setenv(sql_metrics.DISABLE_ENV, "1")
    MlflowSink(uri).log_metrics(api_run, points)
    monkeypatch.delenv(sql_metrics.DISABLE_ENV)

    encodings: list[str] = []
    real = sql_point_writer.PointWriter._copy_batch

    def spy(self: sql_point_writer.PointWriter, conn: sa.Connection, *args: Any) -> None:
        encodings.append(
            sql_point_writer._client_encoding(self.driver, conn.connection.dbapi_connection)
        )
        real(self, conn, *args)

    monkeypatch.setattr(sql_point_writer.PointWriter, "_copy_batch", spy)
    MlflowSink(uri).log_metrics(sql_run, points)
    assert encodings == ["iso8859-1"]
    _assert_same_points(uri, sql_run, api_run)
    assert "naïve loss/ü 1:2" in _history(uri, sql_run)


def test_sql_write_refuses_a_deleted_run(db_uri: str) -> None:
    from exim_archive.errors import TargetError

    c = MlflowClient(db_uri)
    run = c.create_run(c.create_experiment("gone"), start_time=T0).info.run_id
    c.delete_run(run)
    with pytest.raises(TargetError, match=f"logging metrics of run {run} failed"):
        MlflowSink(db_uri).log_metrics(run, _points(_edge_metrics()[:3]))
    assert _count(db_uri, "metrics", run) == 0


def test_a_new_run_ends_in_one_transaction(db_uri: str) -> None:
    """sql_run_writer: params, tags, status, end time and the marker's removal, all or none."""
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    from exim_archive.lineage import INCOMPLETE_TAG

    c = MlflowClient(db_uri)
    exp = c.create_experiment("end")
    fast, note = sql_metrics.open_fast_path(c._tracking_client.store, db_uri)
    assert fast is not None and note is None
    run = c.create_run(exp, start_time=T0, tags={INCOMPLETE_TAG: "true"}).info.run_id
    c.log_batch(run, params=[Param("clash", "before")])

    def end(params: list[tuple[str, str]], tags: dict[str, str], marker: str) -> None:
        fast.runs.finish(run, RunEnd(params, tags, "FINISHED", T0 + 9, marker))

    with pytest.raises(sa.exc.IntegrityError):  # a param already there: nothing lands
        end([("a", "1"), ("clash", "after")], {"t": "v"}, marker=INCOMPLETE_TAG)
    got = c.get_run(run)
    assert got.data.params == {"clash": "before"} and INCOMPLETE_TAG in got.data.tags
    assert got.info.status == "RUNNING" and got.info.end_time is None and "t" not in got.data.tags

    tags = {"t": "v", "mlflow.parentRunId": "x"}
    end([("a", "1"), ("b", "ü" * 6000)], tags, marker=INCOMPLETE_TAG)
    got = c.get_run(run)
    assert got.data.params == {"clash": "before", "a": "1", "b": "ü" * 6000}
    assert got.data.tags["t"] == "v" and got.data.tags["mlflow.parentRunId"] == "x"
    assert INCOMPLETE_TAG not in got.data.tags
    assert (got.info.status, got.info.end_time) == ("FINISHED", T0 + 9)

    with pytest.raises(MlflowException, match="not an active run with the tag"):
        end([("c", "3")], {}, marker=INCOMPLETE_TAG)  # finished already: refused, nothing added
    assert "c" not in c.get_run(run).data.params

    running = c.create_run(exp, start_time=T0, tags={INCOMPLETE_TAG: "true"}).info.run_id
    fast.runs.finish(running, RunEnd([], {}, None, None, INCOMPLETE_TAG))  # RUNNING: as is
    got = c.get_run(running)
    assert (got.info.status, got.info.end_time) == ("RUNNING", None)
    assert INCOMPLETE_TAG not in got.data.tags

    gone = c.create_run(exp, start_time=T0, tags={INCOMPLETE_TAG: "true"}).info.run_id
    c.delete_run(gone)
    with pytest.raises(MlflowException, match="not an active run"):
        fast.runs.finish(gone, RunEnd([("a", "1")], {}, "FINISHED", T0, INCOMPLETE_TAG))


def test_a_new_runs_last_points_land_with_its_end(
    db_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SqlMetrics.finish: a new run's last points and its end in one transaction, all or none;
    points the archive repeats are skipped (on PostgreSQL by a second try, points first)."""
    from mlflow.entities import Param

    from exim_archive.lineage import INCOMPLETE_TAG

    c = MlflowClient(db_uri)
    exp = c.create_experiment("last")
    fast, _note = sql_metrics.open_fast_path(c._tracking_client.store, db_uri)
    assert fast is not None
    points = _points(_edge_metrics())

    def finished(params: list[tuple[str, str]], tags: dict[str, str]) -> RunEnd:
        return RunEnd(params, tags, "FINISHED", T0 + 9, INCOMPLETE_TAG)

    run = c.create_run(exp, start_time=T0, tags={INCOMPLETE_TAG: "true"}).info.run_id
    c.log_batch(run, params=[Param("clash", "before")])
    with pytest.raises(sa.exc.IntegrityError):  # a param already there: no point lands either
        fast.finish(run, finished([("clash", "after")], {}), points)
    assert _count(db_uri, "metrics", run) == _count(db_uri, "latest_metrics", run) == 0
    assert INCOMPLETE_TAG in c.get_run(run).data.tags

    fast.finish(run, finished([("a", "1")], {"t": "v"}), points)
    got = c.get_run(run)
    assert got.data.params == {"clash": "before", "a": "1"} and got.data.tags["t"] == "v"
    assert INCOMPLETE_TAG not in got.data.tags
    assert (got.info.status, got.info.end_time) == ("FINISHED", T0 + 9)
    api_run = c.create_run(exp, start_time=T0).info.run_id
    monkeypatch.setenv(sql_metrics.DISABLE_ENV, "1")
    MlflowSink(db_uri).log_metrics(api_run, points)
    monkeypatch.delenv(sql_metrics.DISABLE_ENV)
    _assert_same_points(db_uri, run, api_run)

    second_tries: list[str] = []
    real = sql_point_writer.PointWriter.write

    def spy(self: sql_point_writer.PointWriter, run_id: str, table: pa.Table) -> None:
        second_tries.append(run_id)
        real(self, run_id, table)

    monkeypatch.setattr(sql_point_writer.PointWriter, "write", spy)
    twice = c.create_run(exp, start_time=T0, tags={INCOMPLETE_TAG: "true"}).info.run_id
    repeated = pa.concat_tables([points.slice(0, 3), points.slice(0, 3)])
    fast.finish(twice, finished([("a", "1")], {}), repeated)
    assert _count(db_uri, "metrics", twice) == 3
    got = c.get_run(twice)
    assert got.data.params == {"a": "1"} and INCOMPLETE_TAG not in got.data.tags
    assert second_tries == ([twice] if db_uri.startswith("postgresql") else [])


def _run_rows(uri: str, run_id: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The run's ``runs`` row (its id and artifact URI generalised) and its tags, as stored."""
    engine = sa.create_engine(uri)
    try:
        runs, t = SqlRun.__table__, SqlTag.__table__
        with engine.connect() as conn:
            row = dict(
                conn.execute(sa.select(runs).where(runs.c.run_uuid == run_id)).one()._mapping
            )
            tags = conn.execute(sa.select(t.c.key, t.c.value).where(t.c.run_uuid == run_id)).all()
    finally:
        engine.dispose()
    row["artifact_uri"] = row["artifact_uri"].replace(run_id, "<id>")
    row["run_uuid"] = len(row["run_uuid"])
    return row, {str(k): str(v) for k, v in tags}


def test_a_new_run_starts_as_mlflows_create_run_makes_it(db_uri: str) -> None:
    """sql_run_writer.create: the same runs row and tags as MLflow's store, the same refusals."""
    from mlflow.exceptions import MlflowException

    c = MlflowClient(db_uri)
    store = c._tracking_client.store
    exp = c.create_experiment("start", artifact_location="s3://bucket/some/where")
    fast, _ = sql_metrics.open_fast_path(store, db_uri)
    assert fast is not None
    tags = {"a": "1", "mlflow.user": "ann", "x" * 250: "ü" * 8000}
    cases: list[tuple[dict[str, str], str | None]] = [
        (tags, "named"),  # name given, tag added
        ({**tags, "mlflow.runName": "named"}, "named"),  # both, agreeing
        ({**tags, "mlflow.runName": "by-tag"}, None),  # the tag names it
    ]
    for run_tags, name in cases:
        theirs = store.create_run(exp, "ann", T0, [RunTag(k, v) for k, v in run_tags.items()], name)
        ours, uri = fast.runs.create(exp, "ann", T0, run_tags, name)
        assert (
            uri == c.get_run(ours).info.artifact_uri == f"s3://bucket/some/where/{ours}/artifacts"
        )
        assert _run_rows(db_uri, ours) == _run_rows(db_uri, theirs.info.run_id)

    ours, _ = fast.runs.create(exp, "ann", T0, {}, None)  # no name: one generated, as MLflow does
    got = c.get_run(ours)
    assert re.fullmatch(r"[a-z]+-[a-z]+-\d+", got.info.run_name)  # MLflow: 0 to 1000
    assert got.data.tags == {"mlflow.runName": got.info.run_name}

    before = len(c.search_runs([exp]))
    with pytest.raises(MlflowException, match=r"'run_name' argument and 'mlflow\.runName' tag"):
        fast.runs.create(exp, "ann", T0, {"mlflow.runName": "one"}, "other")
    with pytest.raises(MlflowException, match="No Experiment with id=987654 exists"):
        fast.runs.create("987654", "ann", T0, {}, "r")
    c.delete_experiment(exp)
    with pytest.raises(MlflowException, match=f"The experiment {exp} must be in the 'active'"):
        fast.runs.create(exp, "ann", T0, {}, "r")
    c.restore_experiment(exp)
    assert len(c.search_runs([exp])) == before  # refusals left nothing behind


def test_untested_revision_writes_through_the_api(
    db_uri: str, sql_writes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    c = MlflowClient(db_uri)
    exp = c.create_experiment("w")
    api_run = c.create_run(exp, start_time=T0).info.run_id
    points = _points(_edge_metrics())
    sink = MlflowSink(db_uri)  # MLflow checks the revision when it opens the store
    _set_revision(db_uri, UNTESTED)
    sink.log_metrics(api_run, points)
    sink.log_metrics(api_run, points)
    assert sql_writes == [] and sink.notes == [NOTE]
    assert len(_history(db_uri, api_run)) == len({m.key for m in _edge_metrics()})


@pytest.mark.database
def test_postgres_driver_not_tested_writes_through_the_api(
    postgres_uri: str, sql_writes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Direct SQL on PostgreSQL only through the drivers whose COPY it was tested with."""
    monkeypatch.setattr(sql_metrics, "POSTGRES_DRIVERS", frozenset({"psycopg2"}))
    c = MlflowClient(postgres_uri)
    run = c.create_run(c.create_experiment("w"), start_time=T0).info.run_id
    sink = MlflowSink(postgres_uri)
    sink.log_metrics(run, _points(_edge_metrics()))
    assert sql_writes == []
    assert sink.notes == [
        "PostgreSQL driver psycopg not tested for direct SQL; using MLflow's API (slower; "
        "psycopg and psycopg2 are)"
    ]
    assert len(_history(postgres_uri, run)) == len({m.key for m in _edge_metrics()})


# -- through pack and unpack -----------------------------------------------------------------------


def test_unpack_into_db_matches_the_api_path(
    db_uri: str,
    new_sqlite: NewStore,
    tmp_path: Path,
    sql_writes: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = new_sqlite("src")
    names = seed_rich(src, "un", tmp_path / "art")
    c = MlflowClient(src)
    exp = c.get_experiment_by_name(names[0])
    assert exp is not None
    edge = c.create_run(exp.experiment_id, start_time=T0, run_name="edges").info.run_id
    c.log_batch(edge, metrics=_edge_metrics())
    c.set_terminated(edge, "FINISHED", end_time=T0 + 1)
    archive = tmp_path / "a.exim"
    pack(archive, tracking_uri=src)

    report = unpack(archive, tracking_uri=db_uri, workers=2)
    # every run with points: parent, child, edges, killed, old (a retried write counts once)
    assert len(set(sql_writes)) == 5
    assert snapshot(db_uri, names) == snapshot(src, names)

    reference = new_sqlite("reference")
    monkeypatch.setenv(sql_metrics.DISABLE_ENV, "1")
    ref_report = unpack(archive, tracking_uri=reference, workers=2)
    assert len(set(sql_writes)) == 5
    for source_id, target_id in report.id_map["runs"].items():
        ref_id = ref_report.id_map["runs"][source_id]
        assert _latest(db_uri, target_id) == _latest(reference, ref_id)
        assert _history(db_uri, target_id) == _history(reference, ref_id)


def test_pylist_decodes_dictionary_columns_as_arrow_does() -> None:
    """The writers' fast decoding of dictionary-encoded keys gives Arrow's own values."""
    words = pa.array(["loss", "acc", "ü", "loss", "acc"]).dictionary_encode()
    with_null = pa.array(["a", None, "b"]).dictionary_encode()
    chunked = pa.chunked_array([words, words.slice(2)])
    for column in (words, words.slice(1, 3), with_null, chunked, pa.array([1, 2, 3])):
        assert T.pylist(column) == column.to_pylist()
