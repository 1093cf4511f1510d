#!/usr/bin/env python
"""Peak memory of exim-archive pack and unpack on runs with millions of metric points.

Issue 4: one run with 5 M metric points packs and unpacks under 500 MB peak RSS. Seeds one
run (``--runs N``: N such runs) in a fresh, migrated MLflow sqlite store (the run through
MlflowClient, its points with sqlite3 ``executemany`` straight into ``metrics`` plus one
``latest_metrics`` row per key: MLflow's ``log_batch`` would take many minutes for 5 M points),
then runs ``exim-archive pack`` from it and ``exim-archive unpack`` into a fresh sqlite store
(migrated first, untimed, as a server would have it: the direct SQL target,
:mod:`exim_archive.sql_target`), each in its own process, and reports each one's wall time and
peak RSS (``os.wait4``). Not a test.

    python bench/memory.py                      # 5,000,000 points: 5 keys x 1,000,000 steps
    python bench/memory.py --points 1000000 --keys 5
    python bench/memory.py --http               # also pack the run through an mlflow server
    python bench/memory.py --runs 20 --points 2000000 --keys 10   # 40 M points, 2 M a run

``--http`` starts ``mlflow server`` (127.0.0.1, sqlite backend: the seeded store) and adds a
``pack http`` row: the run read over HTTP, one key at a time in ``get_metric_history`` pages.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from scaling import QUIET_ENV, timed

CHUNK = 200_000
T0_MS = 1_700_000_000_000


def _key_points(
    rng: np.random.Generator, steps: int, chunk_start: int, chunk: int, scale: float
) -> tuple[list[float], list[int]]:
    """Values (float32 computations widened to float64, as ``.item()`` gives them) and
    timestamps (~1 s per step, jittered) for steps [chunk_start, chunk_start + chunk)."""
    step = np.arange(chunk_start, chunk_start + chunk, dtype=np.float32)
    trend = np.float32(scale) * np.exp(-step / np.float32(steps / 5))
    noise = rng.normal(0.0, 0.02 * scale, chunk).astype(np.float32)
    values = (trend + noise).astype(np.float32).tolist()
    stamps = (
        T0_MS
        + np.arange(chunk_start, chunk_start + chunk, dtype=np.int64) * 1000
        + rng.integers(0, 300, chunk)
    ).tolist()
    return values, stamps


def seed(db: Path, points: int, keys: int, runs: int = 1) -> float:
    """``runs`` runs with ``points`` points each over ``keys`` keys; returns the seconds."""
    from mlflow import MlflowClient

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # migration INFO lines
    started = time.perf_counter()
    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("memory", artifact_location=(db.parent / "artifacts").as_uri())
    rng = np.random.default_rng(0)
    for n in range(runs):
        run_id = client.create_run(exp, start_time=T0_MS, run_name=f"long-run-{n}").info.run_id
        last_ts = _seed_points(db, run_id, points // keys, keys, rng)
        client.set_terminated(run_id, end_time=last_ts + 1000)
    return time.perf_counter() - started


def _seed_points(db: Path, run_id: str, steps: int, keys: int, rng: np.random.Generator) -> int:
    """A run's points (``keys`` keys of ``steps`` steps) and latest values; returns its last
    timestamp."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous=OFF")
    insert = (
        "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
        "VALUES (?, ?, ?, ?, ?, 0)"
    )
    latest = []
    last_ts = T0_MS
    for k in range(keys):
        key = f"metric_{k}"
        for chunk_start in range(0, steps, CHUNK):
            chunk = min(CHUNK, steps - chunk_start)
            values, stamps = _key_points(rng, steps, chunk_start, chunk, 1.0 + k)
            rows = zip(
                [key] * chunk,
                values,
                stamps,
                [run_id] * chunk,
                range(chunk_start, chunk_start + chunk),
                strict=True,
            )
            with conn:
                conn.executemany(insert, rows)
        latest.append((key, values[-1], stamps[-1], steps - 1, run_id))
        last_ts = max(last_ts, stamps[-1])
    with conn:
        conn.executemany(
            "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
            "VALUES (?, ?, ?, ?, 0, ?)",
            latest,
        )
    conn.close()
    return last_ts


@contextmanager
def server(db: Path, work: Path) -> Iterator[str]:
    """An ``mlflow server`` on ``db`` (127.0.0.1, a free port), stopped by its process group."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (work / "served").mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += [
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--artifacts-destination",
        str(work / "served"),
    ]
    with (work / "server.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(
                        f"mlflow server did not come up; see {work / 'server.log'}"
                    ) from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def count_points(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0])
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=5_000_000, help="metric points a run")
    parser.add_argument("--runs", type=int, default=1, help="runs, each with --points points")
    parser.add_argument("--keys", type=int, default=5, help="metric keys (points split evenly)")
    parser.add_argument("--limit-mb", type=float, default=500.0, help="peak RSS target (MB)")
    parser.add_argument("--work-dir", help="keep the stores and the archive here")
    parser.add_argument("--exim", default=f"{sys.executable} -m exim_archive")
    parser.add_argument("--http", action="store_true", help="also pack through an mlflow server")
    args = parser.parse_args()
    os.environ.update(QUIET_ENV)
    exim = args.exim.split()

    if args.work_dir:
        work = Path(args.work_dir).resolve()
        work.mkdir(parents=True, exist_ok=False)
    else:
        work = Path(tempfile.mkdtemp(prefix="exim-memory-"))
    try:
        (work / "src").mkdir()
        (work / "dst").mkdir()
        src, dst = work / "src" / "mlflow.db", work / "dst" / "mlflow.db"
        per_run = args.points // args.keys * args.keys
        points = per_run * args.runs
        print(
            f"seeding {args.runs} run(s) with {per_run:,} points each ({args.keys} keys) ...",
            flush=True,
        )
        seed_s = seed(src, per_run, args.keys, args.runs)
        print(f"seeded in {seed_s:.1f}s ({src.stat().st_size / 1e6:.0f} MB sqlite)", flush=True)
        archive = work / "memory.exim"
        pack_s, pack_mb = timed(
            [*exim, "pack", str(archive), "--tracking-uri", f"sqlite:///{src}"], work
        )
        from mlflow import MlflowClient  # the target set up as a server leaves it (untimed)

        MlflowClient(tracking_uri=f"sqlite:///{dst}").search_experiments()
        unpack_s, unpack_mb = timed(
            [*exim, "unpack", str(archive), "--tracking-uri", f"sqlite:///{dst}"], work / "dst"
        )
        rows = [("pack", pack_s, pack_mb), ("unpack", unpack_s, unpack_mb)]
        if args.http:
            with server(src, work) as url:
                http_s, http_mb = timed(
                    [*exim, "pack", str(work / "http.exim"), "--tracking-uri", url], work
                )
            rows.append(("pack http", http_s, http_mb))
        landed = count_points(dst)
        print(f"\narchive: {archive.stat().st_size:,} bytes; points in target: {landed:,}")
        if landed != points:
            print(f"WARNING: target holds {landed:,} points, source {points:,}")
        print(
            f"\n{'step':<10}{'seconds':>9}{'µs/point':>10}{'peak RSS MB':>13}{'target':>10}  result"
        )
        for name, secs, mb in rows:
            verdict = "PASS" if mb < args.limit_mb else "FAIL"
            print(
                f"{name:<10}{secs:>9.1f}{secs / points * 1e6:>10.2f}{mb:>13.0f}"
                f"{'<' + format(args.limit_mb, 'g'):>10}  {verdict}"
            )
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
