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


def test_takeover_race_through_the_client_leaves_one_holder(
    new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through MLflow's client, taking over a stale lock is a read then a delete. Two unpacks
    waiting on the same dead holder: A removes it and makes its own; B, which read the stale
    lock before, removes A's in the moment between its read and its delete and makes its own.
    A looks again after SETTLE, finds B's lock and waits for it instead of going on beside
    B. MLflow's own store code, with B's steps put into A's settle time."""
    import threading
    import time

    from exim_archive import target_lock

    uri = new_sqlite("target")
    client = MlflowClient(uri)
    client.create_registered_model(LOCK_NAME, tags={"owner": "dead", "heartbeat": "0"})
    said: list[str] = []
    a = TargetLock(MlflowSink(uri), say=said.append)
    assert not a.models.atomic_delete
    b = TargetLock(MlflowSink(uri), say=lambda _: None)
    b_done = threading.Event()
    settle = target_lock.time.sleep

    def a_settles(seconds: float) -> None:
        if seconds == target_lock.SETTLE and not b_done.is_set():
            # B read the dead holder's lock before A removed it; its delete lands now
            client.delete_registered_model(LOCK_NAME)
            assert b._try_create()
            b.held = True
            b_done.set()
        settle(seconds)

    monkeypatch.setattr(target_lock.time, "sleep", a_settles)
    waiter = threading.Thread(target=a.acquire)
    waiter.start()
    try:
        assert b_done.wait(30)
        time.sleep(3)  # A has looked again by now
        assert not a.held and waiter.is_alive()
        assert said == [f"waiting for another unpack into this target ({b.owner})"]
        assert client.get_registered_model(LOCK_NAME).tags["owner"] == b.owner
    finally:
        b.release()
        waiter.join(30)
    assert a.held
    assert client.get_registered_model(LOCK_NAME).tags["owner"] == a.owner
    a.release()
    assert not [m for m in client.search_registered_models() if m.name == LOCK_NAME]
