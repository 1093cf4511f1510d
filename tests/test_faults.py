"""Faults in the servers around pack and unpack: a server killed mid-job and restarted, transient
errors (429, 5xx, dropped connections, lost replies) retried and counted, permanent errors
(403, 404) failing fast in one line.

Fault matrix (operation x fault -> test):

==============================  ==============================  ==============================
fault                           pack (source side)              unpack (target side)
==============================  ==============================  ==============================
server killed, restarted        test_source_killed_mid_pack     test_target_killed_mid_unpack_*
server gone mid-job: exit code  test_source_killed_mid_pack     test_dead_target_*
503 / 502 / 504 / 500 / 429     test_transient_faults_*         test_transient_faults_*
connection reset / closed       test_transient_faults_*         test_transient_faults_*
503 on /health                  test_transient_faults_*         test_transient_faults_*
reply lost after the write      (pack only reads)               test_transient_faults_* (every
                                                                write but experiments/delete),
                                                                test_lost_reply_of_*
503 on the unpack lock          -                               test_transient_error_on_the_
                                                                lock_*
403 on everything / on the API  test_refused_access_fails_fast  test_refused_writes_fail_fast
404 unknown experiment / route  test_unknown_experiment_*,      -
                                test_404_on_an_endpoint_*
lost reply, check fails first   test_a_lost_reply_is_checked_* (Caller, no server)
==============================  ==============================  ==============================
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import MlflowServer, NewStore
from faultproxy import CLOSE, LOSE_REPLY, RESET, Fault, FaultProxy, Request
from mlflow import MlflowClient
from mlflow.entities import ViewType
from paced import command as paced_command
from workload import count_runs, seed_bulk, seed_rich, snapshot

from exim_archive import pack, target_lock, unpack
from exim_archive.lineage import INCOMPLETE_TAG, SOURCE_RUN_TAG
from exim_archive.verify import verify

QUICK_RETRIES = {"EXIM_RETRY_ATTEMPTS": "2", "EXIM_RETRY_BACKOFF": "0.2"}


def _cli(
    *args: str, env: dict[str, str] | None = None, pace: float | None = None
) -> subprocess.Popen[str]:
    """The command in a process; ``pace``: seconds the unpack pauses after each run (paced.py)."""
    command = [sys.executable, "-m", "exim_archive"] if pace is None else paced_command(pace)
    return subprocess.Popen(
        [*command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **QUICK_RETRIES, **(env or {})},
    )


def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str, float]:
    started = time.monotonic()
    proc = _cli(*args, env=env)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err, time.monotonic() - started


def _one_error_line(code: int, err: str) -> str:
    assert code != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _tagged(db: Path, key: str) -> int:
    """How many tags named ``key`` the server's sqlite file holds (read-only, never blocking)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.5) as con:
            return int(con.execute("select count(*) from tags where key = ?", (key,)).fetchone()[0])
    except sqlite3.Error:
        return -1


def _lock_holder(db: Path) -> str | None:
    """The owner tag of the unpack lock in the server's sqlite file, if the lock is there."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
        row = con.execute(
            "select value from registered_model_tags where name = ? and key = 'owner'",
            (target_lock.LOCK_NAME,),
        ).fetchone()
    return None if row is None else str(row[0])


# -- a server killed in the middle of the job ---------------------------------------------------


def test_target_killed_mid_unpack_then_restarted(
    tmp_path: Path,
    new_sqlite: NewStore,
    fresh_server: MlflowServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = 12
    src = new_sqlite("src")
    seed_bulk(src, "bulk", runs=runs, points=2000, artifact_root=tmp_path / "art")
    archive = tmp_path / "a.exim"
    pack(archive, tracking_uri=src)
    target = fresh_server.url
    proc = _cli("unpack", str(archive), "--tracking-uri", target, pace=0.2)
    deadline = time.monotonic() + 120
    created = pending = 0
    while time.monotonic() < deadline and proc.poll() is None:
        created = _tagged(fresh_server.db, SOURCE_RUN_TAG)
        pending = _tagged(fresh_server.db, INCOMPLETE_TAG)
        if created == runs and 0 < pending <= runs - 3:  # some runs done, some half-written
            break
        time.sleep(0.02)
    assert proc.poll() is None, "unpack finished before the server could be killed"
    fresh_server.kill()
    killed = time.monotonic()
    _out, err = proc.communicate(timeout=90)
    took = time.monotonic() - killed

    line = _one_error_line(proc.returncode, err)
    assert took < 45, f"unpack took {took:.0f} s to give up on a dead server"
    assert f"127.0.0.1:{fresh_server.port}" in line, line
    assert _tagged(fresh_server.db, INCOMPLETE_TAG) > 0, "the kill left nothing to resume"
    # The dead unpack could not release its lock: the next one takes it over once it is stale
    # (STALE_AFTER, 120 s by default; shortened here to keep the test quick).
    assert _lock_holder(fresh_server.db) is not None

    fresh_server.start()
    monkeypatch.setattr(target_lock, "STALE_AFTER", 1.0)
    report = unpack(archive, tracking_uri=target)
    assert report.runs_created + report.runs_resumed + report.runs_already_complete == runs
    assert report.runs_resumed > 0 and report.runs_already_complete > 0, report
    assert report.runs_checked == runs
    assert _tagged(fresh_server.db, INCOMPLETE_TAG) == 0
    assert _lock_holder(fresh_server.db) is None
    assert count_runs(target) == count_runs(src) == runs
    assert snapshot(target, ["bulk"]) == snapshot(src, ["bulk"])


def test_dead_target_mid_unpack_is_a_target_error(
    tmp_path: Path, new_sqlite: NewStore, target_server: MlflowServer, unique: str
) -> None:
    src = new_sqlite("src")
    seed_bulk(src, f"{unique} small", runs=2, points=10, artifact_root=tmp_path / "art")
    pack(tmp_path / "a.exim", tracking_uri=src)
    dead = threading.Event()

    def rule(req: Request) -> Fault | None:
        if req.route.endswith("/runs/create"):
            dead.set()  # from the first run on, the target is gone
        return RESET if dead.is_set() else None

    with FaultProxy(target_server.url, rule) as proxy:
        code, _out, err, took = _run(
            "unpack", str(tmp_path / "a.exim"), "--tracking-uri", proxy.url
        )
    line = _one_error_line(code, err)
    assert took < 30, f"unpack took {took:.0f} s to give up on a dead server"
    assert code == 6, line
    # the run's create (or the check for whether a lost create landed) is what fails
    assert line.startswith(f"error: {proxy.url}: "), line
    assert "creating run for source run" in line or "listing runs of experiment" in line, line


def test_source_killed_mid_pack(tmp_path: Path, fresh_server: MlflowServer) -> None:
    runs = 12
    seed_bulk(fresh_server.url, "bulk", runs=runs, points=2000)
    folder = tmp_path / "out"
    folder.mkdir()
    archive = folder / "a.exim"

    proc = _cli("pack", str(archive), "--tracking-uri", fresh_server.url)
    deadline = time.monotonic() + 120
    seen: list[str] = []
    while time.monotonic() < deadline and proc.poll() is None:
        seen = [p.name for p in folder.iterdir() if ".dl-" in p.name]
        if seen:  # the archive is staged and artifacts are being downloaded
            break
        time.sleep(0.005)
    assert proc.poll() is None and seen, "pack finished before the server could be killed"
    fresh_server.kill()
    killed = time.monotonic()
    _out, err = proc.communicate(timeout=90)
    took = time.monotonic() - killed

    line = _one_error_line(proc.returncode, err)
    assert took < 45, f"pack took {took:.0f} s to give up on a dead server"
    assert proc.returncode == 5, f"expected a SourceError (exit 5): {line}"
    assert line.startswith(f"error: {fresh_server.url}: "), line
    assert not archive.exists()
    assert list(folder.iterdir()) == [], "staging, partial or download files were left behind"

    fresh_server.start()
    report = pack(archive, tracking_uri=fresh_server.url)
    assert report.counts["runs"] == runs
    assert report.counts["metric_points"] == runs * 2000
    assert report.counts["artifacts"] == runs
    assert verify(archive).ok
    assert [p.name for p in folder.iterdir()] == ["a.exim"]


# -- transient faults: retried, counted, and the result complete ---------------------------------

_ROTATION = (
    Fault.of(503),
    Fault.of(429),
    RESET,
    Fault.of(502, json_body=False),
    CLOSE,
    Fault.of(504),
    Fault.of(429, json_body=False),
    Fault.of(500),
)
# Writes whose reply is lost although they took effect: the retry must not duplicate anything.
_LOSE_FIRST = (
    ("POST", "/api/2.0/mlflow/experiments/create"),
    ("POST", "/api/2.0/mlflow/runs/create"),
    ("POST", "/api/2.0/mlflow/runs/log-batch"),
    ("POST", "/api/2.0/mlflow/runs/log-inputs"),
    ("POST", "/api/2.0/mlflow/runs/update"),
    ("POST", "/api/2.0/mlflow/runs/delete-tag"),
    ("POST", "/api/2.0/mlflow/runs/delete"),
    ("PUT", "/api/2.0/mlflow-artifacts/artifacts/"),
)  # and experiments/delete: see test_lost_reply_of_experiment_delete_is_not_an_error


class _FlakyRule:
    """Every third distinct request fails once (rotating through 5xx, 429 and dropped
    connections), the first /health answers 503, and the first of each write in
    :data:`_LOSE_FIRST` takes effect but loses its reply. A retry of a request (same method,
    path and body) passes, so every call succeeds within two attempts."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str, bytes]] = set()
        self.lost: set[tuple[str, str]] = set()
        self.eligible = 0  # distinct requests neither /health nor a lost reply
        self.injected = 0  # rotation faults returned so far
        self.lock = threading.Lock()

    def __call__(self, req: Request) -> Fault | None:
        if "/registered-models/" in req.route:
            return None  # the unpack lock: see test_transient_error_on_the_lock_*
        signature = (req.method, req.path, req.body)
        with self.lock:
            if signature in self.seen:
                return None
            self.seen.add(signature)
            if req.route == "/health":
                return Fault.of(503)
            for method, prefix in _LOSE_FIRST:
                first = (method, prefix) not in self.lost
                if req.method == method and req.route.startswith(prefix) and first:
                    self.lost.add((method, prefix))
                    return LOSE_REPLY
            # Counted apart from /health and lost replies, so that whichever requests the
            # threads happen to send first, the first 8 rotation faults are all 8 kinds.
            self.eligible += 1
            if self.eligible % 3:
                return None
            fault = _ROTATION[self.injected % len(_ROTATION)]
            self.injected += 1
            return fault


def _runs_per_experiment(uri: str, names: list[str]) -> dict[str, int]:
    client = MlflowClient(tracking_uri=uri)
    out = {}
    for name in names:
        exp = client.get_experiment_by_name(name)
        assert exp is not None, name
        runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
        out[name] = len(runs)
    return out


def test_transient_faults_are_retried_and_counted(
    tmp_path: Path,
    source_server: MlflowServer,
    target_server: MlflowServer,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EXIM_RETRY_ATTEMPTS", "6")
    monkeypatch.setenv("EXIM_RETRY_BACKOFF", "0.05")
    names = seed_rich(source_server.url, unique)
    archive = tmp_path / "a.exim"

    with FaultProxy(source_server.url, _FlakyRule()) as proxy:
        packed = pack(archive, tracking_uri=proxy.url, experiments=names)
        pack_faults = proxy.faults()
    assert packed.retries > 0
    assert {"503", "429", "reset", "502", "close"} <= set(pack_faults), pack_faults
    assert verify(archive).ok
    assert packed.counts["runs"] == 5 and packed.counts["artifacts"] == 4

    with FaultProxy(target_server.url, _FlakyRule()) as proxy:
        report = unpack(archive, tracking_uri=proxy.url)
        unpack_faults = proxy.faults()
    assert report.retries > 0
    assert {"503", "429", "reset", "502", "close", "lose_reply"} <= set(unpack_faults)
    assert unpack_faults["lose_reply"] >= len(_LOSE_FIRST), unpack_faults
    assert report.runs_created == 5 and report.runs_checked == 5
    assert _runs_per_experiment(target_server.url, names) == _runs_per_experiment(
        source_server.url, names
    )
    assert snapshot(target_server.url, names) == snapshot(source_server.url, names)


def test_lost_reply_of_experiment_delete_is_not_an_error(
    tmp_path: Path,
    new_sqlite: NewStore,
    target_server: MlflowServer,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EXIM_RETRY_BACKOFF", "0.05")
    src = new_sqlite("src")
    client = MlflowClient(tracking_uri=src)
    gone = client.create_experiment(f"{unique} gone", artifact_location=(tmp_path / "a").as_uri())
    client.create_run(gone, run_name="r")
    client.delete_experiment(gone)
    pack(tmp_path / "a.exim", tracking_uri=src)
    lost: list[str] = []

    def rule(req: Request) -> Fault | None:
        if req.route.endswith("/experiments/delete") and not lost:
            lost.append(req.route)
            return LOSE_REPLY
        return None

    with FaultProxy(target_server.url, rule) as proxy:
        try:
            report = unpack(tmp_path / "a.exim", tracking_uri=proxy.url)
        finally:
            assert lost, "the fault was not injected"
    assert report.retries > 0
    found = MlflowClient(target_server.url).get_experiment_by_name(f"{unique} gone")
    assert found is not None and found.lifecycle_stage == "deleted"


def test_transient_error_on_the_lock_is_retried(
    tmp_path: Path,
    new_sqlite: NewStore,
    target_server: MlflowServer,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EXIM_RETRY_BACKOFF", "0.05")
    src = new_sqlite("src")
    seed_bulk(src, f"{unique} small", runs=1, points=5, artifact_root=tmp_path / "art")
    pack(tmp_path / "a.exim", tracking_uri=src)
    failed: list[str] = []

    def rule(req: Request) -> Fault | None:
        if req.route.endswith("/registered-models/create") and not failed:
            failed.append(req.route)
            return Fault.of(503)
        return None

    with FaultProxy(target_server.url, rule) as proxy:
        report = unpack(tmp_path / "a.exim", tracking_uri=proxy.url)
        creates = proxy.requests("/registered-models/create")
    assert failed and report.runs_created == 1
    assert not [n for n in report.notes if "not guarded" in n], report.notes
    assert len(creates) == 2, "the lock was not taken after the transient failure"


def test_a_lost_reply_is_checked_before_the_write_is_issued_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Caller with before_retry: a write that landed (reply lost) is never issued twice, even
    when the check for it fails transiently first."""
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    from exim_archive.errors import TargetError
    from exim_archive.mlflow_errors import Caller

    writes: list[int] = []
    checks: list[str] = []

    def write() -> str:
        writes.append(1)
        raise requests.ConnectionError("Connection aborted: reply lost")  # but it landed

    def landed() -> str | None:
        checks.append("check")
        if len(checks) == 1:
            raise requests.ConnectionError("Connection reset by peer")
        return "run-1"

    call = Caller(TargetError, "http://target", "hint", attempts=6, backoff=0.0)
    assert call("creating run", write, before_retry=landed) == "run-1"
    assert len(writes) == 1 and len(checks) == 2 and call.retries == 2

    # Not landed: issued again once the check says so; a permanent error fails at once.
    outcomes: list[Exception | str] = [requests.ConnectionError("reset"), "run-2"]

    def flaky() -> str:
        result = outcomes.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    call = Caller(TargetError, "http://target", "hint", attempts=6, backoff=0.0)
    assert call("creating run", flaky, before_retry=lambda: None) == "run-2"
    assert call.retries == 1

    def forbidden() -> str:
        raise MlflowException("no", error_code=PERMISSION_DENIED)

    call = Caller(TargetError, "http://target", "hint", attempts=6, backoff=0.0)
    with pytest.raises(TargetError, match="creating run was refused"):
        call("creating run", forbidden)
    assert call.retries == 0


@pytest.mark.parametrize(
    ("missing", "others", "hint"),
    [
        ("psycopg", {"psycopg2"}, "write postgresql+psycopg2:// to use it"),
        ("psycopg", set(), "pip install 'exim-archive[postgres]'"),
        ("pymysql", {"psycopg2"}, "'exim-archive[mysql]'"),
    ],
)
def test_a_missing_driver_names_the_way_out(
    monkeypatch: pytest.MonkeyPatch, missing: str, others: set[str], hint: str
) -> None:
    """SQLAlchemy 2.1 connects postgresql:// with psycopg: where only psycopg2 is installed
    (SQLAlchemy 2.0's default), the message says to name it in the URI."""
    import importlib.util

    from exim_archive.errors import TargetError
    from exim_archive.mlflow_errors import Caller

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            object() if name in others else None if name == "psycopg2" else real(name, *a)
        ),
    )

    def connect() -> None:
        raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

    call = Caller(TargetError, "postgresql://db/x", "hint", attempts=6, backoff=0.0)
    with pytest.raises(TargetError, match=f"the Python module '{missing}' is not installed") as e:
        call("connecting", connect)
    assert hint in (e.value.hint or "") and call.retries == 0


# -- permanent faults: one line, at once, no retries --------------------------------------------


@pytest.mark.parametrize("health", ["refused", "open"])
def test_refused_access_fails_fast(source_server: MlflowServer, health: str) -> None:
    def rule(req: Request) -> Fault | None:
        if health == "open" and req.route == "/health":
            return None
        return Fault.of(403)

    with FaultProxy(source_server.url, rule) as proxy:
        code, _out, err, took = _run(
            "pack", "a.exim", "--tracking-uri", proxy.url, env={"EXIM_RETRY_ATTEMPTS": "6"}
        )
        api_calls = [r for r in proxy.log if r[1] != "/health"]
    line = _one_error_line(code, err)
    assert code == 5 and took < 10, (code, took)
    assert line.startswith(f"error: {proxy.url}: "), line
    assert "refused" in line and ("403" in line or "PERMISSION_DENIED" in line), line
    assert len(api_calls) == (0 if health == "refused" else 1), api_calls
    assert not Path("a.exim").exists()


def test_unknown_experiment_fails_fast_without_retries(source_server: MlflowServer) -> None:
    with FaultProxy(source_server.url) as proxy:
        code, _out, err, took = _run(
            "pack", "a.exim", "--tracking-uri", proxy.url, "--experiment", "nope-no-such",
            env={"EXIM_RETRY_ATTEMPTS": "6"},
        )  # fmt: skip
        lookups = proxy.requests("/experiments/get")
        by_number = _run(
            "pack", "b.exim", "--tracking-uri", proxy.url, "--experiment", "987654321",
            env={"EXIM_RETRY_ATTEMPTS": "6"},
        )  # fmt: skip
        lookups_by_number = proxy.requests("/experiments/get")[len(lookups) :]
    line = _one_error_line(code, err)
    assert code == 5 and took < 10
    assert line.startswith(f"error: {proxy.url}: no experiment named or numbered 'nope-no-such'")
    assert [(m, p.split("?")[0]) for m, p, _f in lookups] == [
        ("GET", "/api/2.0/mlflow/experiments/get-by-name")
    ]
    line = _one_error_line(by_number[0], by_number[2])
    assert by_number[0] == 5 and by_number[3] < 10
    assert "no experiment named or numbered '987654321'" in line
    assert [p.split("?")[0] for _m, p, _f in lookups_by_number] == [
        "/api/2.0/mlflow/experiments/get-by-name",
        "/api/2.0/mlflow/experiments/get",
    ]
    assert not Path("a.exim").exists() and not Path("b.exim").exists()


def test_404_on_an_endpoint_fails_fast(source_server: MlflowServer) -> None:
    def rule(req: Request) -> Fault | None:
        return Fault.of(404) if req.route.endswith("/runs/search") else None

    with FaultProxy(source_server.url, rule) as proxy:
        code, _out, err, took = _run(
            "pack", "a.exim", "--tracking-uri", proxy.url, env={"EXIM_RETRY_ATTEMPTS": "6"}
        )
        searches = proxy.requests("/runs/search")
    line = _one_error_line(code, err)
    assert code == 5 and took < 10
    assert line.startswith(f"error: {proxy.url}: listing runs of experiments "), line
    assert len(searches) == 1, searches


def test_refused_writes_fail_fast(
    tmp_path: Path, new_sqlite: NewStore, target_server: MlflowServer, unique: str
) -> None:
    src = new_sqlite("src")
    seed_bulk(src, f"{unique} small", runs=2, points=10, artifact_root=tmp_path / "art")
    pack(tmp_path / "a.exim", tracking_uri=src)

    def rule(req: Request) -> Fault | None:
        reads = ("/health", "/search", "/get")
        return None if any(part in req.route for part in reads) else Fault.of(403)

    with FaultProxy(target_server.url, rule) as proxy:
        code, _out, err, took = _run(
            "unpack", str(tmp_path / "a.exim"), "--tracking-uri", proxy.url,
            env={"EXIM_RETRY_ATTEMPTS": "6"},
        )  # fmt: skip
        locks = proxy.requests("/registered-models/create")
        creates = proxy.requests("/experiments/create")
    line = _one_error_line(code, err)
    assert code == 6 and took < 15, (code, took)
    # the unpack lock is the first write: refused once, not retried, nothing else attempted
    assert line.startswith(f"error: {proxy.url}: taking the unpack lock was refused"), line
    assert len(locks) == 1 and not creates, (locks, creates)
    assert MlflowClient(target_server.url).get_experiment_by_name(f"{unique} small") is None
