"""An unpack stopped for real mid-way (SIGKILL, or Ctrl-C) and run again finishes the job: the
target ends identical to a clean unpack, with no duplicate and no half-written run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import NewStore
from paced import command as paced_command
from workload import count_runs, seed_bulk, snapshot

from exim_archive import pack, target_lock, unpack
from exim_archive.lineage import INCOMPLETE_TAG, SOURCE_RUN_TAG

RUNS = 24
POINTS = 2_000
PACE = 0.2
"""Seconds the unpack pauses after each run it fills (``paced.py``): the stop has to land while
runs are being filled, on any machine."""


def _tagged(db: Path, key: str) -> int | None:
    """Runs with the tag (waiting out the writer's short transactions); None if unreadable."""
    try:
        with sqlite3.connect(db, timeout=10) as con:
            return int(con.execute("select count(*) from tags where key = ?", (key,)).fetchone()[0])
    except sqlite3.Error:
        return None


def _unpack_until_midway(
    tmp_path: Path, new_sqlite: NewStore
) -> tuple[str, str, subprocess.Popen[str]]:
    """Start ``exim-archive unpack`` in a process; return once every run exists, most unfinished."""
    src, dst = new_sqlite("src"), new_sqlite("dst")
    seed_bulk(src, "bulk", runs=RUNS, points=POINTS, artifact_root=tmp_path / "art")
    pack(tmp_path / "a.exim", tracking_uri=src)
    db = tmp_path / "dst.db"
    proc = subprocess.Popen(
        [*paced_command(PACE), "unpack", str(tmp_path / "a.exim"), "--tracking-uri", dst],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        # A run started in the background by a non-interactive shell inherits SIGINT ignored,
        # and Python then never turns Ctrl-C into KeyboardInterrupt: give the child the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        incomplete = _tagged(db, INCOMPLETE_TAG)
        if _tagged(db, SOURCE_RUN_TAG) == RUNS and incomplete and incomplete < RUNS - 4:
            break  # every run created, some filled, some still being filled
        time.sleep(0.05)
    assert proc.poll() is None, "unpack finished before it could be stopped; use a bigger workload"
    return src, dst, proc


def _rerun_finishes(tmp_path: Path, src: str, dst: str) -> list[str]:
    """Run the unpack again; returns what it said (about the lock)."""
    said: list[str] = []
    report = unpack(tmp_path / "a.exim", tracking_uri=dst, say=said.append)
    assert report.runs_created + report.runs_resumed + report.runs_already_complete == RUNS
    assert report.runs_resumed > 0
    assert _tagged(tmp_path / "dst.db", INCOMPLETE_TAG) == 0
    assert count_runs(dst) == count_runs(src) == RUNS
    assert snapshot(dst, ["bulk"]) == snapshot(src, ["bulk"])
    return said


def test_killed_unpack_is_finished_by_running_it_again(
    tmp_path: Path, new_sqlite: NewStore
) -> None:
    src, dst, proc = _unpack_until_midway(tmp_path, new_sqlite)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (_tagged(tmp_path / "dst.db", INCOMPLETE_TAG) or 0) > 0, (
        "the kill left nothing to resume"
    )
    said = _rerun_finishes(tmp_path, src, dst)
    # The killed unpack's lock names a process of this machine that is gone: taken over at
    # once, not after its heartbeat goes stale (STALE_AFTER, 120 s).
    assert len(said) == 1 and said[0].startswith("taking over the unpack lock of "), said
    assert f":{proc.pid}:" in said[0] and said[0].endswith(": gone"), said


def test_ctrl_c_stops_promptly_and_a_rerun_completes(tmp_path: Path, new_sqlite: NewStore) -> None:
    src, dst, proc = _unpack_until_midway(tmp_path, new_sqlite)
    proc.send_signal(signal.SIGINT)
    stopped = time.monotonic()
    code = proc.wait(timeout=60)
    assert time.monotonic() - stopped < 15, "Ctrl-C did not stop unpack promptly"
    err = proc.stderr.read() if proc.stderr else ""
    assert code == 130 and "error: interrupted" in err and "Traceback" not in err, err
    _rerun_finishes(tmp_path, src, dst)


def test_a_lock_holder_is_gone_only_if_its_process_here_has_ended() -> None:
    here = target_lock._machine()
    if here is None:
        pytest.skip("no /proc: only the heartbeat decides on this system")
    assert not target_lock._gone(f"{here}/{os.getpid()}")  # alive
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline, "child never exited"
            time.sleep(0.01)
        assert target_lock._gone(f"{here}/{child.pid}")  # ended, not yet reaped: a zombie
    finally:
        child.wait()
    assert target_lock._gone(f"{here}/{child.pid}")  # ended and reaped
    assert not target_lock._gone(f"another-boot/pid:[1]/{child.pid}")  # another machine
    assert not target_lock._gone("")  # a lock taken where there is no /proc
    assert not target_lock._gone(f"{here}/not-a-pid")


def test_a_file_that_cannot_be_written_fails_the_unpack_and_a_rerun_finishes(
    tmp_path: Path, new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Into SQLite the files of new runs are written on the pool, ahead of the one writer that
    fills and ends runs. A file that cannot be written (the disk full, say) fails the unpack
    with that error, every run it did not end stays incomplete (files written ahead or not),
    and the same unpack again finishes the job."""
    import errno

    from exim_archive.bundle_reader import ArchiveReader
    from exim_archive.errors import TargetError

    src, dst = new_sqlite("src"), new_sqlite("dst")
    seed_bulk(src, "bulk", runs=RUNS, points=50, artifact_root=tmp_path / "art")
    pack(tmp_path / "a.exim", tracking_uri=src)
    extract = ArchiveReader.extract_artifact
    written: list[str] = []
    failed: list[str] = []

    def disk_full_at_the_tenth(self: ArchiveReader, record: object, destination: Path) -> None:
        if len(written) >= 9:
            failed.append(destination.parent.parent.name)  # <run id>/artifacts/a.txt
            raise OSError(errno.ENOSPC, "No space left on device", str(destination))
        extract(self, record, destination)  # type: ignore[arg-type]
        written.append(str(destination))

    monkeypatch.setattr(ArchiveReader, "extract_artifact", disk_full_at_the_tenth)
    with pytest.raises(TargetError, match="No space left on device"):
        unpack(tmp_path / "a.exim", tracking_uri=dst, workers=4)
    db = tmp_path / "dst.db"
    assert _tagged(db, SOURCE_RUN_TAG) == RUNS
    ended = RUNS - (_tagged(db, INCOMPLETE_TAG) or 0)
    assert ended < RUNS  # filled runs end in groups: a failure may come before the first
    with sqlite3.connect(db) as con:  # no run whose file failed was ended
        marked = {
            r[0] for r in con.execute("select run_uuid from tags where key = ?", (INCOMPLETE_TAG,))
        }
    assert failed and set(failed) <= marked
    monkeypatch.setattr(ArchiveReader, "extract_artifact", extract)
    report = unpack(tmp_path / "a.exim", tracking_uri=dst)
    assert report.runs_resumed == RUNS - ended
    assert _tagged(db, INCOMPLETE_TAG) == 0
    assert snapshot(dst, ["bulk"]) == snapshot(src, ["bulk"])
