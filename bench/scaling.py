"""Scaling table: exim-archive's time and peak memory at 1x, 4x and 16x a workload.

Runs ``exim-archive pack`` and ``unpack`` in child processes against local sqlite stores (so the
numbers are exim-archive's own, not a server's) and reports wall time, peak RSS, and cost per run
and per million points, which should stay flat as the workload grows. Not a test.

    python bench/scaling.py --runs 20 --metrics 10 --steps 500 --factors 1 4 16
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _seed(uri: str, runs: int, metrics: int, steps: int) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    rng = random.Random(7)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("scale", artifact_location=Path(uri[10:]).parent.as_uri())
    for r in range(runs):
        run_id = client.create_run(exp, start_time=1_700_000_000_000 + r).info.run_id
        points = [
            Metric(f"m{k}", rng.gauss(0, 1), 1_700_000_000_000 + s, s)
            for k in range(metrics)
            for s in range(steps)
        ]
        store = client._tracking_client.store
        for start in range(0, len(points), 5000):
            store.log_batch(run_id, metrics=points[start : start + 5000], params=[], tags=[])


def _timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process (its own, via wait4)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    exim = [sys.executable, "-m", "exim_archive"]
    print(f"{'factor':>6} {'runs':>6} {'points':>10} {'pack s':>8} {'pack MB':>8} "
          f"{'unpack s':>9} {'unpack MB':>10} {'s/run':>7} {'s/Mpt':>7}")  # fmt: skip
    for factor in args.factors:
        work = Path(tempfile.mkdtemp(prefix="exim-scale-"))
        try:
            runs = args.runs * factor
            points = runs * args.metrics * args.steps
            _seed(f"sqlite:///{work / 'src.db'}", runs, args.metrics, args.steps)
            archive = str(work / "a.exim")
            src, dst = f"sqlite:///{work / 'src.db'}", f"sqlite:///{work / 'dst.db'}"
            pack_s, pack_mb = _timed([*exim, "pack", archive, "--tracking-uri", src], work)
            unpack_s, unpack_mb = _timed([*exim, "unpack", archive, "--tracking-uri", dst], work)
            total = pack_s + unpack_s
            print(
                f"{factor:>6} {runs:>6} {points:>10,} {pack_s:>8.1f} {pack_mb:>8.0f} "
                f"{unpack_s:>9.1f} {unpack_mb:>10.0f} {total / runs:>7.2f} "
                f"{total / (points / 1e6):>7.1f}",
                flush=True,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
