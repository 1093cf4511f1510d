"""Database URIs against the machine's real PostgreSQL and MariaDB: pack from one, unpack into
the other, and compare everything the fidelity table promises. Mandatory in CI
(EXIM_REQUIRE_DATABASES=1); a plain local run skips them, saying why, if a database is down."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import NewStore
from families_workload import seed_families, snapshot_families
from workload import as_sql_keeps, count_runs, seed_rich, snapshot

from exim_archive import pack, unpack, verify

pytestmark = pytest.mark.database


def test_postgres_to_mariadb(tmp_path: Path, postgres_uri: str, mysql_uri: str) -> None:
    names = seed_rich(postgres_uri, "pg", tmp_path / "pg-art")
    archive = tmp_path / "pg.exim"
    pack(archive, tracking_uri=postgres_uri)
    assert verify(archive).ok
    report = unpack(archive, tracking_uri=mysql_uri, import_source_tags=True)
    assert report.runs_created == 5
    assert snapshot(mysql_uri, names) == as_sql_keeps(snapshot(postgres_uri, names))
    again = unpack(archive, tracking_uri=mysql_uri, import_source_tags=True)
    assert again.runs_created == 0 and count_runs(mysql_uri) == count_runs(postgres_uri)


def test_mariadb_to_postgres(tmp_path: Path, postgres_uri: str, mysql_uri: str) -> None:
    names = seed_rich(mysql_uri, "my", tmp_path / "my-art")
    archive = tmp_path / "my.exim"
    pack(archive, tracking_uri=mysql_uri)
    unpack(archive, tracking_uri=postgres_uri)
    assert snapshot(postgres_uri, names) == as_sql_keeps(snapshot(mysql_uri, names))


def test_sqlite_to_postgres_keeps_unicode_and_long_values(
    tmp_path: Path, new_sqlite: NewStore, postgres_uri: str
) -> None:
    src = new_sqlite("src")
    names = seed_rich(src, "sq", tmp_path / "art")
    pack(tmp_path / "a.exim", tracking_uri=src)
    unpack(tmp_path / "a.exim", tracking_uri=postgres_uri, import_source_tags=True)
    assert snapshot(postgres_uri, names) == snapshot(src, names)


def test_postgres_through_psycopg2_both_ways(
    tmp_path: Path, new_sqlite: NewStore, postgres_uri: str
) -> None:
    """``postgresql+psycopg2://`` (SQLAlchemy 2.0's default driver): MLflow's store for runs,
    direct SQL for metric points, on unpack and on pack."""
    pg2 = postgres_uri.replace("postgresql://", "postgresql+psycopg2://", 1)
    src = new_sqlite("src")
    names = seed_rich(src, "p2", tmp_path / "art")
    pack(tmp_path / "a.exim", tracking_uri=src)
    report = unpack(tmp_path / "a.exim", tracking_uri=pg2)
    assert report.notes == [] and snapshot(pg2, names) == snapshot(src, names)
    pack(tmp_path / "b.exim", tracking_uri=pg2)
    back = new_sqlite("back")
    unpack(tmp_path / "b.exim", tracking_uri=back)
    assert snapshot(back, names) == snapshot(src, names)


def test_families_postgres_to_mariadb_and_back(
    tmp_path: Path, postgres_uri: str, mysql_uri: str
) -> None:
    """Registry, prompts, logged models, traces and evaluation datasets read from and written
    into both databases (MLflow's SQL stores, and the registry in the same database)."""
    seed_families(postgres_uri, "pgf", tmp_path / "art")
    want = snapshot_families(postgres_uri, "pgf")
    assert want["versions"].keys() == {1, 3} and len(want["traces"]) == 1
    archive = tmp_path / "f.exim"
    report = pack(archive, tracking_uri=postgres_uri)
    assert report.counts["model_versions"] == 4 and report.counts["traces"] == 1
    unpack(archive, tracking_uri=mysql_uri, import_source_tags=True)
    assert snapshot_families(mysql_uri, "pgf") == want
    again = unpack(archive, tracking_uri=mysql_uri)
    assert not [k for k, v in again.families.items() if k.endswith("_created") and v]
    back = tmp_path / "back.exim"
    pack(back, tracking_uri=mysql_uri)  # and read back out of MariaDB
    assert verify(back).ok
