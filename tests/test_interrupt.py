"""An unpack killed for real (SIGKILL, mid-way) and run again finishes the job: the target ends
identical to a clean unpack, with no duplicate and no half-written run."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import NewStore
from workload import count_runs, seed_bulk, snapshot

from exim_archive import pack, unpack
from exim_archive.lineage import INCOMPLETE_TAG, SOURCE_RUN_TAG


def _tagged(db: Path, key: str) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return int(con.execute("select count(*) from tags where key = ?", (key,)).fetchone()[0])
    except sqlite3.Error:
        return 0


def test_killed_unpack_is_finished_by_running_it_again(
    tmp_path: Path, new_sqlite: NewStore
) -> None:
    src, dst = new_sqlite("src"), new_sqlite("dst")
    seed_bulk(src, "bulk", runs=24, points=4000, artifact_root=tmp_path / "art")
    pack(tmp_path / "a.exim", tracking_uri=src)
    db = tmp_path / "dst.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "exim_archive", "unpack", str(tmp_path / "a.exim"),
         "--tracking-uri", dst],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        created = _tagged(db, SOURCE_RUN_TAG)
        pending = _tagged(db, INCOMPLETE_TAG)
        if created == 24 and pending < 20:
            break
        time.sleep(0.05)
    assert proc.poll() is None, (
        "unpack finished before it could be killed; make the workload bigger"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert _tagged(db, INCOMPLETE_TAG) > 0, "the kill left nothing half-done to resume"

    report = unpack(tmp_path / "a.exim", tracking_uri=dst)
    assert report.runs_created + report.runs_resumed + report.runs_already_complete == 24
    assert report.runs_resumed > 0
    assert _tagged(db, INCOMPLETE_TAG) == 0
    assert count_runs(dst) == count_runs(src) == 24
    assert snapshot(dst, ["bulk"]) == snapshot(src, ["bulk"])


def test_ctrl_c_stops_promptly_and_a_rerun_completes(tmp_path: Path, new_sqlite: NewStore) -> None:
    src, dst = new_sqlite("src"), new_sqlite("dst")
    seed_bulk(src, "bulk", runs=24, points=4000, artifact_root=tmp_path / "art")
    pack(tmp_path / "a.exim", tracking_uri=src)
    db = tmp_path / "dst.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "exim_archive", "unpack", str(tmp_path / "a.exim"),
         "--tracking-uri", dst],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if _tagged(db, SOURCE_RUN_TAG) == 24 and _tagged(db, INCOMPLETE_TAG) < 20:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "unpack finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    stopped = time.monotonic()
    code = proc.wait(timeout=60)
    assert time.monotonic() - stopped < 15, "Ctrl-C did not stop unpack promptly"
    err = proc.stderr.read() if proc.stderr else ""
    assert code == 130 and "error: interrupted" in err and "Traceback" not in err, err
    report = unpack(tmp_path / "a.exim", tracking_uri=dst)
    assert report.runs_created + report.runs_resumed + report.runs_already_complete == 24
    assert count_runs(dst) == 24
    assert snapshot(dst, ["bulk"]) == snapshot(src, ["bulk"])
