#!/usr/bin/env python
"""Scaling table: exim-archive's time and peak memory at 1x, 4x and 16x a workload.

Runs ``exim-archive pack`` and ``unpack`` in child processes against local sqlite stores (so the
numbers are exim-archive's own, not a server's) and reports wall time, peak RSS, and cost per run
and per metric point, which should stay flat as the workload grows (the factor multiplies the
number of runs; each run keeps its size). Not a test.

    python bench/scaling.py --runs 20 --metrics 10 --steps 500 --factors 1 4 16
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
T0_MS = 1_700_000_000_000
FLAT = 1.5
"""Largest growth (largest over smallest factor) of peak RSS and of cost per point still
reported as flat."""


def _seed(db: Path, runs: int, metrics: int, steps: int) -> None:
    """A migrated store (MlflowClient makes it and the experiment), then ``runs`` runs written
    with sqlite3 ``executemany`` as MLflow's ``create_run`` and ``log_batch`` leave them: a
    ``runs`` row, the ``mlflow.runName`` and ``mlflow.user`` tags, two params, the points in
    ``metrics`` plus one ``latest_metrics`` row per key (hours faster than MLflow at 100,000
    runs). Values: float32 noise widened to float64. No artifact files."""
    import uuid

    import numpy as np
    from mlflow import MlflowClient

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # migration INFO lines
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    location = db.parent.as_uri()
    exp = int(client.create_experiment("scale", artifact_location=location))
    rng = np.random.default_rng(7)
    ids = uuid.UUID(int=rng.integers(1 << 62).item()).hex  # a seeded stream of run ids
    step_list = list(range(steps))
    stamps = [T0_MS + s * 1000 for s in step_list]
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous=OFF")
    try:
        for first in range(0, runs, 1000):
            run_rows, tag_rows, param_rows = [], [], []
            rows: list[tuple[str, float, int, str, int]] = []
            latest: list[tuple[str, float, int, int, str]] = []
            for r in range(first, min(first + 1000, runs)):
                run_id = f"{ids[:20]}{r:012x}"
                start = T0_MS + r
                run_rows.append(
                    (
                        run_id,
                        f"run-{r}",
                        "UNKNOWN",
                        "",
                        "",
                        "bench",
                        "FINISHED",
                        start,
                        start + steps * 1000,
                        "",
                        "active",
                        f"{location}/{run_id}/artifacts",
                        exp,
                    )
                )
                tag_rows += [
                    ("mlflow.runName", f"run-{r}", run_id),
                    ("mlflow.user", "bench", run_id),
                ]
                param_rows += [("lr", str(0.001 * (r % 7 + 1)), run_id), ("seed", str(r), run_id)]
                for k in range(metrics):
                    values = rng.normal(0.0, 1.0, steps).astype(np.float32).tolist()
                    rows += zip(
                        [f"m{k}"] * steps, values, stamps, [run_id] * steps, step_list, strict=True
                    )
                    latest.append((f"m{k}", values[-1], stamps[-1], steps - 1, run_id))
            with conn:
                conn.executemany(
                    "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, "
                    "user_id, status, start_time, end_time, source_version, lifecycle_stage, "
                    "artifact_uri, experiment_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    run_rows,
                )
                conn.executemany(
                    "INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)", tag_rows
                )
                conn.executemany(
                    "INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)", param_rows
                )
                conn.executemany(
                    "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                    "VALUES (?, ?, ?, ?, ?, 0)",
                    rows,
                )
                conn.executemany(
                    "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
                    "VALUES (?, ?, ?, ?, 0, ?)",
                    latest,
                )
    finally:
        conn.close()


def timed(cmd: list[str], cwd: Path, log_path: Path | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process (its own, via wait4).

    The child's output goes to ``log_path`` (default: ``cwd/child.log``); its tail is shown if
    the child fails."""
    log_path = log_path or cwd / "child.log"
    env = {**os.environ, **QUIET_ENV}
    env.pop("MLFLOW_TRACKING_URI", None)
    with log_path.open("ab") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n{tail}")
    return elapsed, usage.ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs at factor 1")
    parser.add_argument("--metrics", type=int, default=10, help="metric keys per run")
    parser.add_argument("--steps", type=int, default=500, help="points per metric")
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    os.environ.update(QUIET_ENV)
    exim = [sys.executable, "-m", "exim_archive"]
    print(
        f"{'factor':>6} {'runs':>6} {'points':>10} {'seed s':>7} {'pack s':>7} {'pack MB':>8} "
        f"{'unpack s':>9} {'unpack MB':>10} {'s/run':>7} {'µs/pt':>7}",
        flush=True,
    )
    rows: list[tuple[int, float, float, float]] = []
    for factor in args.factors:
        work = Path(tempfile.mkdtemp(prefix="exim-scale-"))
        try:
            runs = args.runs * factor
            points = runs * args.metrics * args.steps
            src, dst = f"sqlite:///{work / 'src.db'}", f"sqlite:///{work / 'dst.db'}"
            seeded = time.perf_counter()
            _seed(work / "src.db", runs, args.metrics, args.steps)
            seed_s = time.perf_counter() - seeded
            archive = str(work / "a.exim")
            pack_s, pack_mb = timed([*exim, "pack", archive, "--tracking-uri", src], work)
            unpack_s, unpack_mb = timed([*exim, "unpack", archive, "--tracking-uri", dst], work)
            total = pack_s + unpack_s
            us_per_point = total / points * 1e6
            rows.append((factor, max(pack_mb, unpack_mb), us_per_point, total / runs))
            print(
                f"{factor:>6} {runs:>6} {points:>10,} {seed_s:>7.1f} {pack_s:>7.1f} "
                f"{pack_mb:>8.0f} {unpack_s:>9.1f} {unpack_mb:>10.0f} {total / runs:>7.3f} "
                f"{us_per_point:>7.1f}",
                flush=True,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        for what, i in (("peak RSS", 1), ("time per point", 2), ("time per run", 3)):
            growth = last[i] / first[i]
            verdict = "flat" if growth <= FLAT else "NOT flat"
            print(
                f"{what}: {growth:.2f}x from factor {first[0]} to {last[0]} "
                f"({verdict}; flat means <= {FLAT}x)"
            )


if __name__ == "__main__":
    main()
