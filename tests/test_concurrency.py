"""Two unpacks of the same archive into the same target at the same time duplicate nothing."""

from __future__ import annotations

import importlib
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import MlflowServer, NewStore
from faultproxy import Fault, FaultProxy, Request
from mlflow import MlflowClient
from workload import seed_bulk, seed_rich, snapshot

from exim_archive import pack, target_lock, unpack
from exim_archive.artifact_roots import ArtifactRoots
from exim_archive.errors import TargetError
from exim_archive.lineage import INCOMPLETE_TAG
from exim_archive.sink import MlflowSink, open_sink
from exim_archive.target_lock import BEAT_THREAD, LOCK_NAME, TargetLock


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


# -- a holder that loses its lock while it runs ------------------------------------------------

THIEF = "elsewhere:4242:0badf00d"
"""The owner of the lock another unpack takes over from a holder it judged stale."""


def _sink(uri: str, path: str) -> MlflowSink:
    """A sink on ``uri`` whose lock goes through plain SQL (``sql``) or MLflow's client."""
    sink = open_sink(uri, ArtifactRoots()) if path == "sql" else MlflowSink(uri)
    assert (sink.direct is not None) == (path == "sql")
    return sink


def _lock_tags(uri: str) -> dict[str, str] | None:
    """The lock's tags as the sqlite file holds them; None if there is no lock."""
    with closing(sqlite3.connect(uri.removeprefix("sqlite:///"), timeout=30)) as con:
        found = con.execute("select 1 from registered_models where name = ?", (LOCK_NAME,))
        if found.fetchone() is None:
            return None
        rows = con.execute(
            "select key, value from registered_model_tags where name = ?", (LOCK_NAME,)
        )
        return {str(k): str(v) for k, v in rows}


def _beat(uri: str) -> str:
    tags = _lock_tags(uri)
    assert tags is not None, "the lock is gone"
    return tags["heartbeat"]


def _beats(uri: str, count: int) -> None:
    """Return as soon as the holder's heartbeat has landed ``count`` more times."""
    seen = [_beat(uri)]
    deadline = time.monotonic() + 30
    while len(seen) <= count:
        assert time.monotonic() < deadline, f"{len(seen) - 1} beats in 30 s"
        now = _beat(uri)
        if now != seen[-1]:
            seen.append(now)
        time.sleep(0.002)


def _take_over(uri: str, heartbeat: str | None) -> None:
    """Another unpack takes the lock over: it removes the lock and makes its own (owner
    :data:`THIEF`). Done in one transaction, so the holder sees its lock or the new one and
    never the moment between (which it would rightly call "removed"). ``heartbeat`` None: the
    lock is removed only."""
    with closing(sqlite3.connect(uri.removeprefix("sqlite:///"), timeout=30)) as con, con:
        con.execute("delete from registered_model_tags where name = ?", (LOCK_NAME,))
        con.execute("delete from registered_models where name = ?", (LOCK_NAME,))
        if heartbeat is None:
            return
        con.execute(
            "insert into registered_models (name, creation_time, last_updated_time, description)"
            " values (?, 0, 0, 'held')",
            (LOCK_NAME,),
        )
        con.executemany(
            "insert into registered_model_tags (key, value, name) values (?, ?, ?)",
            [("owner", THIEF, LOCK_NAME), ("heartbeat", heartbeat, LOCK_NAME)],
        )


@pytest.mark.parametrize("path", ["sql", "client"])
def test_a_holder_keeps_its_lock_beat_after_beat(
    new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.setattr(target_lock, "HEARTBEAT", 0.05)
    uri = new_sqlite("target")
    sink = _sink(uri, path)
    holder = TargetLock(sink, say=lambda _: None)
    holder.acquire()
    try:
        _beats(uri, 4)
        holder.check()
        assert holder.lost is None
        assert holder._beat is not None and holder._beat.is_alive()
        tags = _lock_tags(uri)
        assert tags is not None and tags["owner"] == holder.owner
    finally:
        holder.release()
        sink.close()
    assert _lock_tags(uri) is None


@pytest.mark.parametrize("path", ["sql", "client"])
def test_a_holder_whose_lock_was_taken_over_stops(
    new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """The holder stood still for over STALE_AFTER (here: only as far as the lock can tell)
    and another unpack took its lock over. Its next beat finds that lock, writes nothing into
    it and stops; check() then names the new holder; release leaves the new lock alone.

    The takeover lands just after one of the holder's beats: through MLflow's client a beat is
    a read then a write, and a takeover between the two would get that one (harmless) write
    (see _ClientModels.beat_if_owner). With plain SQL the beat is one transaction."""
    monkeypatch.setattr(target_lock, "HEARTBEAT", 0.2)
    uri = new_sqlite("target")
    sink = _sink(uri, path)
    holder = TargetLock(sink, say=lambda _: None)
    holder.acquire()
    theirs = {"owner": THIEF, "heartbeat": str(time.time())}
    try:
        _beats(uri, 1)
        _take_over(uri, theirs["heartbeat"])
        assert holder._beat is not None
        holder._beat.join(30)  # the heartbeat ends when it finds the lock lost
        assert not holder._beat.is_alive()
        with pytest.raises(TargetError) as caught:
            holder.check()
        text = str(caught.value)
        assert text.startswith(f"{sink.safe_uri}: the unpack lock was taken over by {THIEF} ")
        assert "suspended" in text and "'exim-archive verify ARCHIVE --against URI'" in text
        assert caught.value.exit_code == 6
        assert _lock_tags(uri) == theirs  # no heartbeat of the old holder's in it
    finally:
        holder.release()
        sink.close()
    assert _lock_tags(uri) == theirs


@pytest.mark.parametrize("path", ["sql", "client"])
def test_a_holder_whose_lock_was_removed_stops(
    new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Taken over and released again before the holder's next beat (or removed by hand):
    gone is lost too, and the holder makes no new lock of it."""
    monkeypatch.setattr(target_lock, "HEARTBEAT", 0.05)
    uri = new_sqlite("target")
    sink = _sink(uri, path)
    holder = TargetLock(sink, say=lambda _: None)
    holder.acquire()
    try:
        _take_over(uri, None)
        assert holder._beat is not None
        holder._beat.join(30)
        assert not holder._beat.is_alive()
        with pytest.raises(TargetError, match="the unpack lock was removed while this unpack"):
            holder.check()
    finally:
        holder.release()
        sink.close()
    assert _lock_tags(uri) is None


@pytest.mark.server
def test_a_heartbeat_that_fails_for_a_while_keeps_the_lock(
    target_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A beat the target does not answer (here: three 503s on reading the lock) is no loss:
    the heartbeat tries again and the lock stays the holder's."""
    monkeypatch.setattr(target_lock, "HEARTBEAT", 0.05)
    armed = threading.Event()
    failed: list[str] = []

    def rule(req: Request) -> Fault | None:
        if armed.is_set() and req.route.endswith("/registered-models/get") and len(failed) < 3:
            failed.append(req.route)
            return Fault.of(503)
        return None

    client = MlflowClient(target_server.url)
    with FaultProxy(target_server.url, rule) as proxy:
        sink = MlflowSink(proxy.url)
        holder = TargetLock(sink, say=lambda _: None)
        holder.acquire()
        try:
            armed.set()
            deadline = time.monotonic() + 30
            while len(failed) < 3:
                assert time.monotonic() < deadline, "the heartbeat stopped trying"
                time.sleep(0.01)
            before = client.get_registered_model(LOCK_NAME).tags["heartbeat"]
            while client.get_registered_model(LOCK_NAME).tags["heartbeat"] == before:
                assert time.monotonic() < deadline, "no beat landed after the failures"
                time.sleep(0.01)
            holder.check()
            assert holder.lost is None
            assert client.get_registered_model(LOCK_NAME).tags["owner"] == holder.owner
        finally:
            holder.release()
            sink.close()
    assert not [m for m in client.search_registered_models() if m.name == LOCK_NAME]


@pytest.mark.parametrize("path", ["sql", "client"])
def test_unpack_whose_lock_is_taken_over_mid_write_stops(
    tmp_path: Path, new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """After the first run is filled another unpack takes the lock over; once the holder's
    heartbeat has found that out, the next run is not written and unpack fails with the lock
    error. What landed is resumed by the next unpack, once the other one has finished."""
    monkeypatch.setattr(target_lock, "HEARTBEAT", 0.05)
    if path == "client":
        monkeypatch.setenv("EXIM_NO_SQL_FAST_PATH", "1")
    src = new_sqlite("src")
    seed_bulk(src, "bulk", runs=4, points=20, artifact_root=tmp_path / "art")
    archive = tmp_path / "a.exim"
    pack(archive, tracking_uri=src)
    target = new_sqlite("target")

    unpack_module = importlib.import_module("exim_archive.unpack")  # the attribute is the function
    fill = unpack_module._Unpacker.fill
    stolen = threading.Event()

    def fill_then_lose_the_lock(self: Any, item: Any) -> int:
        points = int(fill(self, item))
        if not stolen.is_set():
            beat = next(t for t in threading.enumerate() if t.name == BEAT_THREAD)
            _take_over(target, str(time.time()))
            stolen.set()
            beat.join(30)  # the holder's heartbeat has found the lock lost
        return points

    monkeypatch.setattr(unpack_module._Unpacker, "fill", fill_then_lose_the_lock)
    with pytest.raises(TargetError, match=f"the unpack lock was taken over by {THIEF} ") as caught:
        unpack(archive, tracking_uri=target)
    assert stolen.is_set() and caught.value.exit_code == 6
    tags = _lock_tags(target)
    assert tags is not None and tags["owner"] == THIEF  # left to its holder
    with closing(sqlite3.connect(target.removeprefix("sqlite:///"))) as con:
        (incomplete,) = con.execute(
            "select count(*) from tags where key = ?", (INCOMPLETE_TAG,)
        ).fetchone()
    assert incomplete >= 3, "runs after the first were written beside the new holder"

    _take_over(target, None)  # the other unpack has finished
    report = unpack(archive, tracking_uri=target)
    assert report.runs_resumed >= 3 and report.runs_created == 0
    assert snapshot(target, ["bulk"]) == snapshot(src, ["bulk"])
    assert _lock_tags(target) is None
