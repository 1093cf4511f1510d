"""Two unpacks of the same archive into the same server at the same time duplicate nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MlflowServer, NewStore
from workload import seed_rich, snapshot

from exim_archive import pack
from exim_archive.target_lock import LOCK_NAME


@pytest.mark.server
def test_two_unpacks_at_once(
    tmp_path: Path, new_sqlite: NewStore, target_server: MlflowServer, unique: str
) -> None:
    src = new_sqlite("src")
    names = seed_rich(src, unique, tmp_path / "art")
    pack(tmp_path / "a.exim", tracking_uri=src)
    _two_at_once(tmp_path / "a.exim", target_server.url, tmp_path)
    assert snapshot(target_server.url, names) == snapshot(src, names)
    from mlflow import MlflowClient

    client = MlflowClient(target_server.url)
    assert not [m for m in client.search_registered_models() if m.name == LOCK_NAME]


def _two_at_once(archive: Path, uri: str, cwd: Path) -> None:
    cmd = [sys.executable, "-m", "exim_archive", "unpack", str(archive), "--tracking-uri", uri]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=cwd) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read() if p.stderr else "") for p in procs]
    for code, err in results:
        assert code == 0, err
    assert any("already there" in err and "0 created" in err.split("runs")[1] for _, err in results)


def test_two_unpacks_at_once_into_a_database(tmp_path: Path, new_sqlite: NewStore) -> None:
    """The lock and every write through plain SQL (exim_archive.sql_target): the target is a
    migrated store, as a server leaves it."""
    from mlflow import MlflowClient

    src = new_sqlite("src")
    names = seed_rich(src, "c", tmp_path / "art")
    pack(tmp_path / "a.exim", tracking_uri=src)
    target = new_sqlite("target")
    _two_at_once(tmp_path / "a.exim", target, tmp_path)
    assert snapshot(target, names) == snapshot(src, names)
    assert not [m for m in MlflowClient(target).search_registered_models() if m.name == LOCK_NAME]


@pytest.mark.database
def test_two_unpacks_at_once_into_postgres(
    tmp_path: Path, new_sqlite: NewStore, postgres_uri: str
) -> None:
    from mlflow import MlflowClient

    src = new_sqlite("src")
    names = seed_rich(src, "c", tmp_path / "art")
    pack(tmp_path / "a.exim", tracking_uri=src)
    MlflowClient(postgres_uri).search_experiments()  # set up, as a server leaves it
    _two_at_once(tmp_path / "a.exim", postgres_uri, tmp_path)
    assert snapshot(postgres_uri, names) == snapshot(src, names)
    client = MlflowClient(postgres_uri)
    assert not [m for m in client.search_registered_models() if m.name == LOCK_NAME]
