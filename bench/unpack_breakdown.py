#!/usr/bin/env python
"""Where ``exim-archive unpack`` into an ``http://`` server spends its time.

Starts a fresh ``mlflow server`` like run_bench.py's targets (sqlite backend, proxied artifacts,
default workers, warmed up), then, in this process through the library:

1. ``verify``: the archive check unpack does first;
2. ``unpack(check=False)``: verify again plus the writes (runs, params, tags, metric points,
   artifacts): "write" is its time less step 1's;
3. ``check_against``: the read-back proof unpack does last (``workers`` as unpack passes them);
   then its three reads again, each alone: ``search_runs`` pages, metric histories (the
   ``HistoryReader`` pack uses: bulk endpoint over http), one recursive artifact listing per run;
4. the server's own ceiling: the same number of metric points sent as bare ``log_batch`` calls
   of 1,000 points, ``--threads`` at a time, into one throwaway run each (no exim-archive code).

Not a test. Point it at an archive of the workload to study, e.g. one kept by
``run_bench.py --work-dir DIR`` (``DIR/bench.exim``):

    python bench/unpack_breakdown.py /tmp/bench/bench.exim
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from run_bench import (
    QUIET_ENV,
    UNPACK_WORKERS,
    bare_log_batch,
    launch_server,
    stop_server,
    wait_healthy,
    warm_up,
)

from exim_archive.histories import HistoryReader
from exim_archive.pool import ordered_map
from exim_archive.proof import check_against
from exim_archive.sink import MlflowSink
from exim_archive.source import MlflowSource
from exim_archive.summary import inspect_archive
from exim_archive.unpack import unpack
from exim_archive.verify import verify


def proof_parts(uri: str) -> dict[str, float]:
    """Seconds of each read the proof makes, timed alone (as the proof makes them)."""
    source, sink = MlflowSource(uri), MlflowSink(uri)
    exps = source.experiments(None)
    exp_ids = [
        e.experiment_id for e in exps if e.lifecycle_stage == "active" and e.name != "Default"
    ]
    parts: dict[str, float] = {}
    started = time.perf_counter()
    runs = source.runs(exp_ids)
    parts["search_runs"] = time.perf_counter() - started
    reader = HistoryReader(source, UNPACK_WORKERS)
    started = time.perf_counter()
    for start in range(0, len(runs), 200):
        reader.read(runs[start : start + 200])
    parts[f"histories ({reader.bulk_calls} bulk calls)"] = time.perf_counter() - started
    started = time.perf_counter()
    for _ in ordered_map(lambda r: sink.files(r.run_id, r.artifact_uri), runs, UNPACK_WORKERS):
        pass
    parts[f"artifact listings ({len(runs)} runs)"] = time.perf_counter() - started
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive")
    parser.add_argument("--threads", type=int, default=UNPACK_WORKERS, help="for step 4")
    parser.add_argument("--server-workers", type=int, help="mlflow server --workers")
    args = parser.parse_args()
    os.environ.update(QUIET_ENV)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    archive = Path(args.archive).resolve()
    info = inspect_archive(archive)
    points = int(info["counts"].get("metric_points", info["tables"]["metrics"]["rows"]))
    runs = int(info["counts"].get("runs", 0))

    work = Path(tempfile.mkdtemp(prefix="exim-breakdown-"))
    (work / "logs").mkdir()
    (work / "staging").mkdir()
    servers = []
    try:
        servers = [launch_server(name, work, args.server_workers) for name in ("target", "bare")]
        for srv in servers:
            wait_healthy(srv, work / "logs" / f"server-{srv.name}.log")
            warm_up(srv, work)
        target, bare = servers
        started = time.perf_counter()
        verify(archive).raise_if_failed()
        verify_s = time.perf_counter() - started
        started = time.perf_counter()
        report = unpack(archive, tracking_uri=target.uri, check=False, progress=False)
        write_s = time.perf_counter() - started - verify_s
        started = time.perf_counter()
        proof = check_against(archive, tracking_uri=target.uri, workers=UNPACK_WORKERS)
        proof_s = time.perf_counter() - started
        parts = proof_parts(target.uri)
        bare_s, calls = bare_log_batch(bare.uri, points, args.threads)
    finally:
        for srv in servers:
            stop_server(srv)
        shutil.rmtree(work, ignore_errors=True)

    total = verify_s + write_s + proof_s
    print(
        f"\narchive {archive}: {runs} runs, {points:,} metric points, {report.artifacts} artifacts"
    )
    print(f"{'phase':<34}{'seconds':>9}{'share':>8}")
    for name, secs in (("verify", verify_s), ("write", write_s), ("proof (read-back)", proof_s)):
        print(f"{name:<34}{secs:>9.2f}{secs / total:>8.0%}")
    print(f"{'total (CLI adds start-up)':<34}{total:>9.2f}")
    print("proof's reads, again, each alone:")
    for name, secs in parts.items():
        print(f"  {name:<32}{secs:>9.2f}")
    print(
        f"\nserver ceiling: {calls} bare log_batch calls of <= 1000 points, {args.threads} at a "
        f"time: {bare_s:.2f}s ({bare_s / calls * 1000:.0f} ms per call, "
        f"{points / bare_s:,.0f} points/s); write phase / ceiling: {write_s / bare_s:.2f}x"
    )
    if not proof.ok:
        print(f"WARNING: proof found {len(proof.problems)} problems: {proof.problems[0]}")


if __name__ == "__main__":
    sys.exit(main())
