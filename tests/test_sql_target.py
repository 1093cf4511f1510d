"""unpack into a database with plain SQL (exim_archive.sql_target) leaves the same rows as
unpack through MLflow's store (EXIM_NO_SQL_FAST_PATH=1), on SQLite, PostgreSQL and MariaDB, and
imports no MLflow where nothing needs it."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewStore
from mlflow import MlflowClient
from workload import seed_bulk, seed_rich, snapshot

from exim_archive import pack, unpack
from exim_archive.lineage import SOURCE_RUN_TAG
from exim_archive.sql_point_writer import valid_metric_name
from exim_archive.sql_run_writer import append_path
from exim_archive.sql_tables import REGISTERED_MODEL_TAGS, REGISTERED_MODELS
from exim_archive.sql_target import SqlTarget, open_sql_target

_TABLES = {
    # table: columns compared (ids and times that differ by nature are mapped or left out)
    "experiments": ("name", "artifact_location", "lifecycle_stage", "workspace"),
    "experiment_tags": ("experiment_id", "key", "value"),
    "runs": (
        "run_uuid",
        "name",
        "source_type",
        "source_name",
        "entry_point_name",
        "user_id",
        "status",
        "start_time",
        "end_time",
        "source_version",
        "lifecycle_stage",
        "artifact_uri",
        "experiment_id",
    ),
    "tags": ("run_uuid", "key", "value"),
    "params": ("run_uuid", "key", "value"),
    "metrics": ("run_uuid", "key", "step", "timestamp", "value", "is_nan"),
    "latest_metrics": ("run_uuid", "key", "step", "timestamp", "value", "is_nan"),
    "datasets": (
        "experiment_id",
        "name",
        "digest",
        "dataset_source_type",
        "dataset_source",
        "dataset_schema",
        "dataset_profile",
    ),
    "registered_models": ("name", "description", "workspace"),
    "registered_model_tags": ("name", "key", "value"),
}


def _dump(uri: str) -> dict[str, list[tuple[Any, ...]]]:
    """The rows unpack writes, with each target run id replaced by its source run's id and
    each dataset and input uuid by what it links, so two unpacks compare equal."""
    engine = sa.create_engine(uri)
    try:
        with engine.connect() as conn:
            source_of = dict(
                conn.execute(
                    sa.text("SELECT run_uuid, value FROM tags WHERE " + _key_is(engine, "k")),
                    {"k": SOURCE_RUN_TAG},
                ).all()
            )

            def plain(value: Any) -> Any:
                if isinstance(value, str):
                    for target, source in source_of.items():
                        value = value.replace(target, f"<{source}>")
                if isinstance(value, float) and value == 0:
                    value = 0.0  # psycopg2 through MLflow writes -0.0 as 0 (see test_sql_metrics)
                return value

            out: dict[str, list[tuple[Any, ...]]] = {}
            for table, columns in _TABLES.items():
                rows = conn.execute(
                    sa.select(*(sa.column(c) for c in columns)).select_from(sa.table(table))
                )
                out[table] = sorted((tuple(plain(v) for v in row) for row in rows), key=repr)
            datasets = dict(conn.execute(sa.text("SELECT dataset_uuid, name FROM datasets")).all())
            out["inputs"] = sorted(
                (plain(dest), datasets[src], s_type, d_type, step)
                for src, dest, s_type, d_type, step in conn.execute(
                    sa.text(
                        "SELECT source_id, destination_id, source_type, destination_type, step "
                        "FROM inputs"
                    )
                )
            )
            out["input_tags"] = sorted(
                (plain(dest), datasets[src], name, value)
                for src, dest, name, value in conn.execute(
                    sa.text(
                        "SELECT i.source_id, i.destination_id, t.name, t.value FROM input_tags t "
                        "JOIN inputs i ON i.input_uuid = t.input_uuid"
                    )
                )
            )
    finally:
        engine.dispose()
    return out


def _key_is(engine: sa.Engine, mark: str) -> str:
    return ("`key`" if engine.dialect.name == "mysql" else '"key"') + f" = :{mark}"


def _migrate(uri: str) -> None:
    MlflowClient(tracking_uri=uri).search_experiments()


def _both_ways(
    archive: Path, first: str, second: str, monkeypatch: pytest.MonkeyPatch, **kw: Any
) -> None:
    """Unpack ``archive`` into ``first`` through MLflow, into ``second`` with plain SQL (both
    migrated first, as a server leaves a database); the rows must agree."""
    for uri in (first, second):
        _migrate(uri)
    probe = open_sql_target(second, proxied=bool(kw.get("artifacts_destination")))
    assert isinstance(probe, SqlTarget), "the SQL target should apply to this database"
    probe.close()
    monkeypatch.setenv("EXIM_NO_SQL_FAST_PATH", "1")
    slow = unpack(archive, tracking_uri=first, **kw)
    monkeypatch.delenv("EXIM_NO_SQL_FAST_PATH")
    fast = unpack(archive, tracking_uri=second, **kw)
    assert (fast.runs_created, fast.metric_points, fast.artifacts) == (
        slow.runs_created,
        slow.metric_points,
        slow.artifacts,
    )
    assert fast.runs_created > 0
    expected, got = _dump(first), _dump(second)
    for table in expected:
        assert got[table] == expected[table], table
    assert got["inputs"] and got["input_tags"], "the workload should have dataset inputs"
    if kw.get("import_source_tags"):
        assert any(row[0] == 0 for row in got["experiment_tags"]), "Default should get tags"


@pytest.fixture
def archive(tmp_path: Path, new_sqlite: NewStore) -> Path:
    src = new_sqlite("src")
    seed_rich(src, "sq", tmp_path / "art")
    seed_bulk(src, "bulk", 3, 50, tmp_path / "art")
    out = tmp_path / "a.exim"
    pack(out, tracking_uri=src)
    return out


def test_sqlite_same_rows_as_mlflow(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _both_ways(archive, f"sqlite:///{tmp_path}/one.db", f"sqlite:///{tmp_path}/two.db", monkeypatch)


def test_sqlite_served_artifacts_same_rows(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --artifacts-destination (mlflow-artifacts:/ locations, files under the folder) and
    lineage tags (the Default experiment, already there, gets tags set)."""
    dest = tmp_path / "served"
    _both_ways(
        archive,
        f"sqlite:///{tmp_path}/one.db",
        f"sqlite:///{tmp_path}/two.db",
        monkeypatch,
        artifacts_destination=str(dest),
        import_source_tags=True,
    )
    assert any(f.is_file() for f in dest.rglob("*")), "no file was written under the folder"


@contextmanager
def _sibling(uri: str) -> Iterator[str]:
    """Another fresh database on the same server as ``uri`` (dropped afterwards)."""
    engine = sa.create_engine(uri.rsplit("/", 1)[0] + ("/test" if "postgresql" in uri else "/"))
    name = f"exim_{uuid.uuid4().hex[:10]}"
    extra = " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin" if "mysql" in uri else ""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}{extra}")
    try:
        yield uri.rsplit("/", 1)[0] + f"/{name}"
    finally:
        force = " WITH (FORCE)" if "postgresql" in uri else ""
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
        engine.dispose()


@pytest.mark.database
@pytest.mark.parametrize("driver", ["", "+psycopg2"])
def test_postgres_same_rows_as_mlflow(
    archive: Path, postgres_uri: str, monkeypatch: pytest.MonkeyPatch, driver: str
) -> None:
    first = postgres_uri.replace("postgresql:", f"postgresql{driver}:")
    with _sibling(first) as second:
        _both_ways(archive, first, second, monkeypatch)


@pytest.mark.database
def test_mariadb_same_rows_as_mlflow(
    archive: Path, mysql_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _sibling(mysql_uri) as second:
        _both_ways(archive, mysql_uri, second, monkeypatch)


def test_unpack_into_a_migrated_store_imports_no_mlflow(
    archive: Path, tmp_path: Path, new_sqlite: NewStore
) -> None:
    """The point of the SQL target: no MLflow import (seconds) for a plain unpack. The rich
    workload deletes a run and an experiment, which go through MLflow: a bulk one does not."""
    src = new_sqlite("plain")
    seed_bulk(src, "bulk", 2, 20, tmp_path / "art2")
    plain = tmp_path / "plain.exim"
    pack(plain, tracking_uri=src)
    target = new_sqlite("target")
    code = (
        "import sys; from exim_archive import unpack; "
        f"r = unpack({str(plain)!r}, tracking_uri={target!r}); "
        "assert r.runs_created == 2 and r.runs_checked == 2, r; "
        "assert 'mlflow' not in sys.modules, 'mlflow was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    # and a second unpack of the same archive finds everything there, still without MLflow
    code = code.replace("r.runs_created == 2", "r.runs_already_complete == 2")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_where_the_sql_target_does_not_apply(
    tmp_path: Path, new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    assert open_sql_target(f"sqlite:///{tmp_path}/empty.db", proxied=False) is None  # no schema
    assert open_sql_target("http://127.0.0.1:1", proxied=False) is None
    assert open_sql_target("oracle://x@y/z", proxied=False) is None
    uri = new_sqlite("t")
    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", "true")
    assert open_sql_target(uri, proxied=False) is None
    monkeypatch.delenv("MLFLOW_ENABLE_WORKSPACES")
    monkeypatch.setenv("EXIM_NO_SQL_FAST_PATH", "1")
    assert open_sql_target(uri, proxied=False) is None
    monkeypatch.delenv("EXIM_NO_SQL_FAST_PATH")
    found = open_sql_target(uri, proxied=False)
    assert found is not None
    found.close()
    path = uri.split("///", 1)[1]
    with sqlite3.connect(path) as conn:  # MLflow never finished setting it up
        conn.execute("DELETE FROM experiments WHERE experiment_id = 0")
    assert open_sql_target(uri, proxied=False) is None
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO experiments (experiment_id, name, lifecycle_stage, workspace) "
            "VALUES (0, 'Default', 'active', 'default')"
        )
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    assert open_sql_target(uri, proxied=False) is None


def test_experiment_name_taken_is_refused_as_mlflow_does(new_sqlite: NewStore) -> None:
    from mlflow.exceptions import MlflowException

    target = open_sql_target(new_sqlite("t"), proxied=False)
    assert target is not None
    try:
        first = target.create_experiment("x", {"a": "1"})
        assert target.experiment_by_name("x") == (first, "active")
        with pytest.raises(MlflowException, match="already exists") as caught:
            target.create_experiment("x", {})
        assert caught.value.error_code == "RESOURCE_ALREADY_EXISTS"
        assert target.experiment_by_name("y") is None
    finally:
        target.close()


def _lock_model_rows(uri: str) -> None:
    """The lock's registered-model rows; removal only while the tags hold what was judged, a
    heartbeat only while the owner is the one beating."""
    target = open_sql_target(uri, proxied=False)
    assert target is not None
    try:
        assert target.model_tags("lock") is None
        assert not target.beat_if_owner("lock", "me", "0")  # nothing there
        assert target.create_model("lock", {"owner": "me", "heartbeat": "1"}, "held")
        assert not target.create_model("lock", {"owner": "you"}, "held")
        assert not target.beat_if_owner("lock", "you", "9")  # not yours: left, untouched
        assert target.model_tags("lock") == {"owner": "me", "heartbeat": "1"}
        assert target.beat_if_owner("lock", "me", "2")
        assert target.model_tags("lock") == {"owner": "me", "heartbeat": "2"}
        # judged stale at heartbeat 1, beat since; or another owner's: left, untouched
        assert not target.delete_model_if("lock", {"owner": "me", "heartbeat": "1"})
        assert not target.delete_model_if("lock", {"owner": "you"})
        assert target.model_tags("lock") == {"owner": "me", "heartbeat": "2"}
        assert target.delete_model_if("lock", {"owner": "me", "heartbeat": "2"})
        assert target.model_tags("lock") is None
        assert not target.delete_model_if("lock", {"owner": "me"})  # nothing there
        assert target.create_model("lock", {"owner": "you"}, "held")  # the name is free
        _beat_behind_a_takeover(target)
    finally:
        target.close()


def _beat_behind_a_takeover(target: SqlTarget) -> None:
    """A beat that comes while a takeover is removing the lock waits for it (the takeover holds
    the heartbeat row, which the beat changes first) and then finds the lock gone: it writes
    nothing. Had the beat come first, the takeover would find the heartbeat changed and leave
    the lock (delete_model_if, above)."""
    t = REGISTERED_MODEL_TAGS.c
    mine = sa.and_(t.name == "lock2", t.workspace == "default")
    assert target.create_model("lock2", {"owner": "me", "heartbeat": "1"}, "held")
    beats: list[bool] = []
    beat = threading.Thread(target=lambda: beats.append(target.beat_if_owner("lock2", "me", "2")))
    with target.engine.connect() as conn, conn.begin():
        # the first step of delete_model_if("lock2", {"owner": "me", "heartbeat": "1"})
        claimed = conn.execute(
            sa.update(REGISTERED_MODEL_TAGS)
            .where(mine, t.key == "heartbeat", t.value == "1")
            .values(value="1 (being removed)")
        ).rowcount
        assert claimed == 1
        beat.start()
        beat.join(1.0)
        assert beat.is_alive(), "the beat did not wait for the takeover"
        conn.execute(sa.delete(REGISTERED_MODEL_TAGS).where(mine))
        conn.execute(sa.delete(REGISTERED_MODELS).where(REGISTERED_MODELS.c.name == "lock2"))
    beat.join(30)
    assert beats == [False]
    assert target.model_tags("lock2") is None


def test_lock_model_rows(new_sqlite: NewStore) -> None:
    _lock_model_rows(new_sqlite("t"))


@pytest.mark.database
def test_lock_model_rows_postgres(postgres_uri: str) -> None:
    MlflowClient(postgres_uri).search_experiments()  # set up, as a server leaves it
    _lock_model_rows(postgres_uri)


@pytest.mark.database
def test_lock_model_rows_mariadb(mysql_uri: str) -> None:
    MlflowClient(mysql_uri).search_experiments()
    _lock_model_rows(mysql_uri)


_NAMES = [
    "loss",
    "a/b c-d_e.f:g",
    "",
    ".",
    "..",
    "../x",
    "/abs",
    "a//b",
    "a/./b",
    "a/",
    "ünïcødé",
    "naïve loss/ü 1:2",
    "a\n",
    "tab\there",
    "x$",
    "日本",
    "a..b",
    "..a",
]


@pytest.mark.parametrize("name", _NAMES)
def test_metric_name_rule_is_mlflows(name: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_metric_name

    try:
        _validate_metric_name(name)
        accepted = True
    except MlflowException:
        accepted = False
    assert valid_metric_name(name) == accepted


@pytest.mark.parametrize(
    "location",
    [
        "/tmp/mlruns/3",
        "/tmp/x/",
        "file:///a/b",
        "file:///a/b/",
        "mlflow-artifacts:/3",
        "mlflow-artifacts:/",
        "s3://b/p",
        "s3://b/p/?x=1",
        "file:/a/b",
        "dbfs:/x",
        "file://host/a",
        "/a b/c%20d",
        "/a;b",
    ],
)
def test_artifact_path_join_is_mlflows(location: str) -> None:
    from mlflow.utils.uri import append_to_uri_path

    assert append_path(location, "r1", "artifacts") == append_to_uri_path(
        location, "r1", "artifacts"
    )
    assert append_path(location, "7") == append_to_uri_path(location, "7")


def test_metric_name_rule_has_mlflows_pattern() -> None:
    """The pattern is MLflow 3.17's (POSIX); a change there should fail here, not in a user's
    unpack."""
    import inspect

    from mlflow.utils import validation

    source = inspect.getsource(validation.validate_param_and_metric_name)
    assert re.search(r'r"\^\[/\\w\.\\- :\]\*\$"', source), source


def test_runs_created_together_are_not_made_twice_after_a_lost_reply(
    tmp_path: Path, new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New runs of an experiment go in one transaction; when it commits but its reply is lost,
    the retry finds them all (and would refuse a partial set) instead of creating them again."""
    from exim_archive.sql_run_writer import NewRuns

    src = new_sqlite("src")
    seed_bulk(src, "bulk", 5, 10, tmp_path / "art")
    archive = tmp_path / "a.exim"
    pack(archive, tracking_uri=src)
    real = NewRuns.create_many
    calls: list[int] = []

    def committed_then_lost(self: NewRuns, experiment_id: str, starts: Any) -> Any:
        made = real(self, experiment_id, starts)
        calls.append(len(starts))
        if len(calls) == 1:
            raise sa.exc.OperationalError("INSERT", {}, Exception("database is locked"))
        return made

    monkeypatch.setattr(NewRuns, "create_many", committed_then_lost)
    monkeypatch.setenv("EXIM_RETRY_BACKOFF", "0")
    target = new_sqlite("target")
    report = unpack(archive, tracking_uri=target)
    assert calls[0] == 5, "the five runs of the experiment should be created together"
    assert report.runs_created == 5 and report.retries == 1 and report.runs_checked == 5
    engine = sa.create_engine(target)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM runs")).scalar_one() == 5
    engine.dispose()


def test_runs_are_created_together_only_with_direct_sql(
    new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Elsewhere each run is a call of its own, and several go at once on the unpack's writers
    (a batch there would create them one after another)."""
    from exim_archive.artifact_roots import ArtifactRoots
    from exim_archive.sink import CREATE_BATCH, open_sink

    uri = new_sqlite("t")
    direct = open_sink(uri, ArtifactRoots())
    assert direct.runs_created_together == CREATE_BATCH > 1
    direct.close()
    monkeypatch.setenv("EXIM_NO_SQL_FAST_PATH", "1")
    through_mlflow = open_sink(uri, ArtifactRoots())
    assert through_mlflow.direct is None and through_mlflow.runs_created_together == 1


def test_new_runs_are_batched_by_experiment_whatever_their_order() -> None:
    """Runs come in run id order, which interleaves experiments: a batch still holds up to its
    size of one experiment's runs (cutting where the experiment changed made batches of 1-2),
    within each chunk of runs (unpack holds a chunk, not every run)."""
    from exim_archive.records import RunRecord
    from exim_archive.unpack import _batches

    runs = [
        (RunRecord(f"r{i:02d}", "ab"[i % 2], None, None, "FINISHED", 1, 2, "active", None), [])
        for i in range(9)
    ]

    def ids(batches: Any) -> list[list[str]]:
        return [[r.run_id for r, _ in b] for b in batches]

    batches = list(_batches(iter(runs), 3))
    assert ids(batches) == [
        ["r00", "r02", "r04"], ["r06", "r08"], ["r01", "r03", "r05"], ["r07"]
    ]  # fmt: skip
    assert all(len({r.experiment_id for r, _ in b}) == 1 for b in batches)
    assert list(_batches(iter(runs), 1)) == [[r] for r in runs[0::2] + runs[1::2]]
    assert ids(_batches(iter(runs), 3, chunk=4)) == [
        ["r00", "r02"], ["r01", "r03"], ["r04", "r06"], ["r05", "r07"], ["r08"]
    ]  # fmt: skip


def test_new_runs_end_in_groups_all_or_none(
    tmp_path: Path, new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New runs' ends (params, tags, last points, status, the marker's removal) go into a
    database in groups of END_GROUP_RUNS, one transaction each. A group whose transaction
    fails ends none of its runs; the groups before it stay ended; the rerun finishes."""
    import errno

    from exim_archive import sql_metrics
    from exim_archive.errors import TargetError
    from exim_archive.lineage import INCOMPLETE_TAG
    from exim_archive.sink import END_GROUP_RUNS

    runs = 2 * END_GROUP_RUNS + 8
    src, dst = new_sqlite("src"), new_sqlite("dst")
    seed_bulk(src, "bulk", runs=runs, points=10, artifact_root=tmp_path / "art")
    archive = tmp_path / "a.exim"
    pack(archive, tracking_uri=src)
    real = sql_metrics.SqlMetrics.finish_many
    groups: list[int] = []

    def second_group_fails(self: sql_metrics.SqlMetrics, ends: list[Any]) -> None:
        groups.append(len(ends))
        if len(groups) == 2:
            raise OSError(errno.EIO, "the disk went away")
        real(self, ends)

    monkeypatch.setattr(sql_metrics.SqlMetrics, "finish_many", second_group_fails)
    with pytest.raises(TargetError, match="the disk went away"):
        unpack(archive, tracking_uri=dst)
    db = sa.create_engine(dst)
    with db.connect() as conn:
        marked = conn.execute(
            sa.text("SELECT count(*) FROM tags WHERE key = :k"), {"k": INCOMPLETE_TAG}
        ).scalar_one()
    assert groups == [END_GROUP_RUNS, END_GROUP_RUNS]
    assert marked == runs - END_GROUP_RUNS  # the first group ended, nothing of the second

    groups.clear()
    monkeypatch.setattr(sql_metrics.SqlMetrics, "finish_many", real)
    report = unpack(archive, tracking_uri=dst)
    assert report.runs_resumed == runs - END_GROUP_RUNS
    assert snapshot(dst, ["bulk"]) == snapshot(src, ["bulk"])
    db.dispose()

    def recorded(self: sql_metrics.SqlMetrics, ends: list[Any]) -> None:
        groups.append(len(ends))
        real(self, ends)

    monkeypatch.setattr(sql_metrics.SqlMetrics, "finish_many", recorded)
    groups.clear()  # a clean unpack of new runs: groups of END_GROUP_RUNS, then the rest
    fresh = new_sqlite("fresh")
    unpack(archive, tracking_uri=fresh)
    assert groups == [END_GROUP_RUNS, END_GROUP_RUNS, 8]
    assert snapshot(fresh, ["bulk"]) == snapshot(src, ["bulk"])
