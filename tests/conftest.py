"""Shared fixtures: real ``mlflow server`` processes on 127.0.0.1, sqlite stores, and the
PostgreSQL / MariaDB databases of the machine (mandatory when EXIM_REQUIRE_DATABASES=1, as in CI).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
REQUIRE_DATABASES = os.environ.get("EXIM_REQUIRE_DATABASES") == "1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """One ``mlflow server`` process: sqlite backend, proxied artifacts, bound to 127.0.0.1."""

    def __init__(self, root: Path, workers: int = 1, template: Path | None = None) -> None:
        self.root = root
        self.db = root / "mlflow.db"
        self.artifacts = root / "artifacts"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "server.log"
        self.template = template

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.artifacts.mkdir(exist_ok=True)
        if self.template is not None and not self.db.exists():
            shutil.copyfile(self.template, self.db)
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{self.db}",
            "--artifacts-destination", str(self.artifacts),
            "--workers", str(self.workers),
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited early: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not come up: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop the server and its workers by process group."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        self.proc = None

    def kill(self) -> None:
        """Kill it hard, as a crash would."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
            self.proc = None


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run each test in its own folder: stores opened by URI put ``./mlruns`` in the cwd."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite database with every migration applied (they take seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def new_sqlite(migrated_db: Path, tmp_path: Path) -> Callable[[str], str]:
    """``new_sqlite("src")`` -> the URI of a fresh, migrated sqlite store in this test's folder."""

    def make(name: str) -> str:
        path = tmp_path / f"{name}.db"
        shutil.copyfile(migrated_db, path)
        return f"sqlite:///{path}"

    return make


@pytest.fixture(scope="session")
def source_server(
    tmp_path_factory: pytest.TempPathFactory, migrated_db: Path
) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("source-server"), template=migrated_db)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def target_server(
    tmp_path_factory: pytest.TempPathFactory, migrated_db: Path
) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("target-server"), template=migrated_db)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_server(tmp_path: Path, migrated_db: Path) -> Iterator[MlflowServer]:
    """A server of this test's own, for tests that kill or restart it."""
    server = MlflowServer(tmp_path / "own-server", template=migrated_db)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def unique() -> str:
    """A short unique prefix for experiment names on shared servers."""
    return uuid.uuid4().hex[:8]


def _unreachable(what: str, exc: Exception) -> None:
    reason = f"{what} is not reachable on 127.0.0.1 ({type(exc).__name__}: {exc})"
    if REQUIRE_DATABASES:
        pytest.fail(f"{reason}; EXIM_REQUIRE_DATABASES=1 makes database tests mandatory")
    pytest.skip(f"{reason}; set up the database or run .ci/run")


@pytest.fixture
def postgres_uri() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    try:
        import psycopg

        admin = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test")
    except Exception as exc:
        _unreachable("PostgreSQL", exc)
    admin.autocommit = True
    name = f"exim_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture
def mysql_uri() -> Iterator[str]:
    """A fresh MariaDB database for one test, dropped afterwards."""
    try:
        import pymysql

        admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    except Exception as exc:
        _unreachable("MariaDB", exc)
    name = f"exim_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    try:
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


NewStore = Callable[[str], str]
