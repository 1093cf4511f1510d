"""pack from a database URI reads with plain SQL (exim_archive.sql_source) and gives the same
archive, byte for byte, as MLflow's store gives (EXIM_NO_SQL_FAST_PATH=1), on SQLite,
PostgreSQL and MariaDB."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NewStore
from families_workload import seed_families
from workload import seed_bulk, seed_rich

from exim_archive import pack
from exim_archive.artifact_roots import ArtifactRoots
from exim_archive.sql_source import SqlSource, open_sql_source

EPOCH = "1767225600"


def _both_ways(uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kw: object) -> bytes:
    """Pack ``uri`` through MLflow and through SQL; assert the archives are the same bytes."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    source = open_sql_source(uri, ArtifactRoots())
    assert isinstance(source, SqlSource), "the SQL path should apply to this store"
    source.close()
    fast = pack(tmp_path / "sql.exim", tracking_uri=uri, **kw)  # type: ignore[arg-type]
    monkeypatch.setenv("EXIM_NO_SQL_FAST_PATH", "1")
    slow = pack(tmp_path / "mlflow.exim", tracking_uri=uri, **kw)  # type: ignore[arg-type]
    monkeypatch.delenv("EXIM_NO_SQL_FAST_PATH")
    assert fast.counts == slow.counts
    assert fast.digest == slow.digest
    data = (tmp_path / "sql.exim").read_bytes()
    assert data == (tmp_path / "mlflow.exim").read_bytes()
    return data


def test_sqlite_same_bytes_as_mlflow(
    tmp_path: Path, new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = new_sqlite("src")
    seed_rich(src, "sq", tmp_path / "art")
    seed_bulk(src, "bulk", 3, 50, tmp_path / "art")
    _both_ways(src, tmp_path, monkeypatch)
    # a selection by name, and one by id, read the same way too
    _both_ways(src, tmp_path, monkeypatch, experiments=["bulk", "1"], overwrite=True)


def test_sqlite_with_families_same_bytes(
    tmp_path: Path, new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry, logged models, traces and datasets still go through MLflow's readers."""
    src = new_sqlite("src")
    seed_families(src, "fam", tmp_path / "art")
    _both_ways(src, tmp_path, monkeypatch)


@pytest.mark.database
@pytest.mark.parametrize("driver", ["", "+psycopg", "+psycopg2"])
def test_postgres_same_bytes_as_mlflow(
    tmp_path: Path, postgres_uri: str, monkeypatch: pytest.MonkeyPatch, driver: str
) -> None:
    """Both drivers MLflow's users connect with, named or not: psycopg (3), SQLAlchemy 2.1's
    default (MLflow's path for ``postgresql://``), and psycopg2 (SQLAlchemy 2.0's default,
    still widely installed; this module's first choice when the URI names none)."""
    uri = postgres_uri.replace("postgresql:", f"postgresql{driver}:")
    seed_rich(uri, "pg", tmp_path / "art")
    _both_ways(uri, tmp_path, monkeypatch)


@pytest.mark.database
def test_mariadb_same_bytes_as_mlflow(
    tmp_path: Path, mysql_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = mysql_uri if "+pymysql" in mysql_uri else mysql_uri.replace("mysql:", "mysql+pymysql:")
    seed_rich(uri, "my", tmp_path / "art")
    _both_ways(uri, tmp_path, monkeypatch)


SLOW_IMPORTS = (
    "mlflow",  # ~1.5-2.5 s: the point of the SQL path
    "sqlalchemy",
    "pandas",  # pyarrow's first conversion would import it (cli._arrow_without_pandas)
    "pydantic",  # typer 0.29 coerces options through pydantic (pyproject pins 0.28)
    "google.protobuf",  # MLflow entities' JSON: only MLflow's path needs it
    "urllib.request",  # http.client, ssl, email (artifact_roots reads file: URIs without it)
    "importlib.metadata",  # versions.installed_version reads dist-info folder names
    "numpy.ma",  # pa.array(ndarray) imports it; sql_columns.from_numpy does not
)


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.database)])
def test_plain_store_packs_without_the_slow_imports(
    tmp_path: Path, request: pytest.FixtureRequest, store: str
) -> None:
    """A pack from a database with nothing that needs MLflow imports none of these: each costs
    15 ms to seconds on every run, and a small pack is mostly start-up. Run as the command
    runs (``cli.main``), in a fresh process whose loaded modules then say which came in.
    PostgreSQL: ``postgresql://`` as a user writes it (read with psycopg2, :data:`DRIVERS`)."""
    if store == "sqlite":
        src = request.getfixturevalue("new_sqlite")("src")
    else:
        src = request.getfixturevalue("postgres_uri")
    seed_bulk(src, "bulk", 2, 20, tmp_path / "art")
    argv = ["pack", str(tmp_path / "a.exim"), "--tracking-uri", src, "--json"]
    code = (
        "import json, sys; from exim_archive.cli import main\n"
        f"assert main({argv!r}) == 0\n"
        f"print(json.dumps(sorted(m for m in {SLOW_IMPORTS!r} if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout[: done.stdout.rindex("\n[")])
    assert report["counts"]["runs"] == 2 and report["counts"]["artifacts"] == 2, report
    assert done.stdout.splitlines()[-1] == "[]"


@pytest.mark.database
def test_a_uri_without_a_driver_reads_with_the_first_that_imports(
    postgres_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    MlflowClient(postgres_uri).search_experiments()  # MLflow's schema, as a server makes it
    source = open_sql_source(postgres_uri, ArtifactRoots())
    assert isinstance(source, SqlSource) and source.db.driver == "psycopg2"
    source.close()
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # import psycopg2 raises ImportError
    source = open_sql_source(postgres_uri, ArtifactRoots())
    assert isinstance(source, SqlSource) and source.db.driver == "psycopg"
    source.close()
    named = postgres_uri.replace("postgresql:", "postgresql+psycopg2:")
    assert open_sql_source(named, ArtifactRoots()) is None  # named and missing: MLflow's path


def test_other_revision_or_driver_goes_through_mlflow(tmp_path: Path, new_sqlite: NewStore) -> None:
    import sqlite3

    src = new_sqlite("src")
    assert open_sql_source(src.replace("sqlite:", "sqlite+pysqlcipher:"), ArtifactRoots()) is None
    with sqlite3.connect(src.split("///", 1)[1]) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    assert open_sql_source(src, ArtifactRoots()) is None
