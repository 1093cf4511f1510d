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
    cmd = [sys.executable, "-m", "exim_archive", "unpack", str(tmp_path / "a.exim"),
           "--tracking-uri", target_server.url]  # fmt: skip
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read() if p.stderr else "") for p in procs]
    for code, err in results:
        assert code == 0, err
    assert any("already there" in err and "0 created" in err.split("runs")[1] for _, err in results)
    assert snapshot(target_server.url, names) == snapshot(src, names)
    from mlflow import MlflowClient

    client = MlflowClient(target_server.url)
    assert not [m for m in client.search_registered_models() if m.name == LOCK_NAME]
