"""Two unpacks of the same archive into the same target at the same time duplicate nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MlflowServer, NewStore
from mlflow import MlflowClient
from workload import seed_rich, snapshot

from exim_archive import pack
from exim_archive.sink import MlflowSink
from exim_archive.target_lock import LOCK_NAME, TargetLock


def _two_at_once(tmp_path: Path, new_sqlite: NewStore, target: str, prefix: str) -> None:
    """Pack the rich workload, unpack it twice at once into ``target``: both succeed, one
    finds every run there, the target holds the source's contents and the lock is gone."""
    src = new_sqlite("src")
    names = seed_rich(src, prefix, tmp_path / "art")
    archive = tmp_path / "a.exim"
    pack(archive, tracking_uri=src)
    cmd = [sys.executable, "-m", "exim_archive", "unpack", str(archive), "--tracking-uri", target]
    procs = [
        subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=tmp_path) for _ in range(2)
    ]
    results = [(p.wait(timeout=600), p.stderr.read() if p.stderr else "") for p in procs]
    for code, err in results:
        assert code == 0, err
    assert any("already there" in err and "0 created" in err.split("runs")[1] for _, err in results)
    assert snapshot(target, names) == snapshot(src, names)
    client = MlflowClient(target)
    assert not [m for m in client.search_registered_models() if m.name == LOCK_NAME]


@pytest.mark.server
def test_two_unpacks_at_once(
    tmp_path: Path, new_sqlite: NewStore, target_server: MlflowServer, unique: str
) -> None:
    _two_at_once(tmp_path, new_sqlite, target_server.url, unique)


def test_two_unpacks_at_once_into_a_database(tmp_path: Path, new_sqlite: NewStore) -> None:
    """The lock and every write through plain SQL (exim_archive.sql_target): the target is a
    migrated store, as a server leaves it."""
    _two_at_once(tmp_path, new_sqlite, new_sqlite("target"), "c")


@pytest.mark.database
def test_two_unpacks_at_once_into_postgres(
    tmp_path: Path, new_sqlite: NewStore, postgres_uri: str
) -> None:
    MlflowClient(postgres_uri).search_experiments()  # set up, as a server leaves it
    _two_at_once(tmp_path, new_sqlite, postgres_uri, "c")


def test_lock_is_taken_when_its_holder_lets_go_during_the_create(
    new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's store answers a taken name by reading the model it collided with; the holder
    removing it in between makes that read fail with RESOURCE_DOES_NOT_EXIST (seen over HTTP in
    CI). The waiting unpack looks again and takes the lock: no failure. MLflow's own store code,
    with the holder's release put into that window."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    uri = new_sqlite("target")
    holder = TargetLock(MlflowSink(uri), say=lambda _: None)
    holder.acquire()
    read = SqlAlchemyStore.get_registered_model
    released: list[str] = []

    def holder_releases_first(store: SqlAlchemyStore, name: str) -> object:
        if not released:
            released.append(name)
            holder.release()
        return read(store, name)

    monkeypatch.setattr(SqlAlchemyStore, "get_registered_model", holder_releases_first)
    said: list[str] = []
    waiter = TargetLock(MlflowSink(uri), say=said.append)
    waiter.acquire()
    try:
        assert released == [LOCK_NAME]  # the window was hit
        assert waiter.held and not said
        assert MlflowClient(uri).get_registered_model(LOCK_NAME).tags["owner"] == waiter.owner
    finally:
        waiter.release()
    assert not [m for m in MlflowClient(uri).search_registered_models() if m.name == LOCK_NAME]
