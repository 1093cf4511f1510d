#!/usr/bin/env python
"""Benchmark exim-archive against mlflow-export-import (the "old tool"), issue 4 targets.

Builds one synthetic MLflow workload in a source tracking server (sqlite backend, proxied
artifacts) and the same workload in a PostgreSQL database, then measures:

* pack:   old ``export-experiment`` over HTTP (summed over experiments) vs one ``exim-archive
  pack`` from the server's ``http://`` URI, from its ``sqlite:///`` file and from PostgreSQL
* floor:  one ``SELECT`` of the metrics table plus ``pq.write_table`` (zstd), per database
* unpack: old ``import-experiment`` over HTTP (summed) vs one ``exim-archive unpack`` into a
  fresh ``http://`` server, a fresh sqlite file and a fresh PostgreSQL database
* size:   total bytes of the old export folders vs the archive file; bytes per metric point
  of the archive's ``metrics`` table

Standalone script (stdlib + mlflow + requests, psycopg for PostgreSQL); not a test. See
bench/README.md. Exit code is 0 whatever the PASS/FAIL outcome, non-zero only if a step crashed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
import numpy as np
import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

BENCH_DIR = Path(__file__).resolve().parent
OLD_TOOL_PACKAGE = "mlflow-export-import-v2"
METRICS_PER_BATCH = 1000
LOAD_THREADS = 4
WARMUP_THREADS = 8
WARMUP_ROUNDS = 16
HEALTH_TIMEOUT_S = 300.0  # generous: a loaded 2-core machine needs >2 min for 3 servers
STOP_TIMEOUT_S = 20.0
EXPERIMENT_PREFIX = "bench-exp"
DEFAULT_PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

# Issue 4 targets. "at least": baseline/exim >= target (faster, smaller); "within": exim/baseline
# <= target (exim against a floor); "at most": the exim value itself <= target.
AT_LEAST, WITHIN, AT_MOST = "at least", "within", "at most"
UNPACK_WORKERS = 4  # exim_archive.unpack.unpack's default, which the CLI uses
TARGETS: dict[str, tuple[str, float]] = {
    "pack http": (AT_LEAST, 5.0),
    "pack sqlite": (AT_LEAST, 30.0),
    "pack postgresql": (AT_LEAST, 30.0),
    "floor http": (WITHIN, 1.5),
    "floor sqlite": (WITHIN, 3.0),
    "floor postgresql": (WITHIN, 3.0),
    "unpack http": (AT_LEAST, 3.0),
    "ceiling http": (WITHIN, 1.5),
    "unpack sqlite": (AT_LEAST, 10.0),
    "unpack postgresql": (AT_LEAST, 10.0),
    "size": (AT_LEAST, 10.0),
    "bytes/point": (AT_MOST, 6.0),
}

# applied to this process and to every server / CLI it starts (same for both tools)
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}

_T0 = time.perf_counter()


class StepError(RuntimeError):
    """A benchmark step failed (server did not start, a CLI command exited non-zero...)."""


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Workload:
    experiments: int
    runs: int
    metrics: int
    steps: int
    params: int
    tags: int
    artifact_kb: int
    seed: int
    full_entropy_values: bool

    @property
    def experiment_names(self) -> list[str]:
        return [f"{EXPERIMENT_PREFIX}-{i}" for i in range(self.experiments)]

    @property
    def metric_points(self) -> int:
        return self.experiments * self.runs * self.metrics * self.steps


def _curves(rng: random.Random, wl: Workload) -> list[list[float]]:
    """One list of values per metric key: decaying training curves plus noise.

    Default: computed in float32 and handed over as Python floats, as a training loop does
    (``loss.item()`` on a float32 tensor): noisy, but every value is a float32 widened to float64.
    ``full_entropy_values``: float64 ``random.gauss`` noise, a random 52-bit mantissa per value
    (no real metric has that; no lossless layout stores it in under ~8 bytes).
    """
    shapes = [(rng.uniform(0.5, 3.0), rng.uniform(0.05, 0.5) * wl.steps) for _ in range(wl.metrics)]
    if wl.full_entropy_values:
        return [
            [scale * math.exp(-s / tau) + rng.gauss(0.0, 0.02 * scale) for s in range(wl.steps)]
            for scale, tau in shapes
        ]
    nrng = np.random.default_rng(rng.getrandbits(64))
    steps = np.arange(wl.steps, dtype=np.float32)
    out: list[list[float]] = []
    for scale, tau in shapes:
        trend = np.float32(scale) * np.exp(-steps / np.float32(tau))
        noise = nrng.normal(0.0, 0.02 * scale, wl.steps).astype(np.float32)
        out.append((trend + noise).astype(np.float32).tolist())
    return out


def _metric_batch(rng: random.Random, wl: Workload, start_ms: int) -> tuple[list[Metric], int]:
    """Noisy training curves, step-major like a real training loop logs them."""
    curves = _curves(rng, wl)
    metrics: list[Metric] = []
    ts = start_ms
    for step in range(wl.steps):
        ts += max(1, int(rng.gauss(1000.0, 150.0)))  # ~1 s per step, jittered
        for k, curve in enumerate(curves):
            metrics.append(Metric(key=f"metric_{k}", value=curve[step], timestamp=ts, step=step))
    return metrics, ts


def _text_blob(rng: random.Random, size: int) -> bytes:
    levels = ("INFO", "INFO", "INFO", "DEBUG", "WARNING")
    lines: list[str] = []
    total = 0
    step = 0
    while total < size:
        line = (
            f"2024-05-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
            f" {rng.choice(levels)} trainer step={step} loss={rng.gauss(0.5, 0.1):.6f}"
            f" lr={rng.uniform(1e-5, 1e-3):.3e} grad_norm={abs(rng.gauss(1.0, 0.3)):.4f}\n"
        )
        lines.append(line)
        total += len(line)
        step += 1
    return "".join(lines).encode()[:size]


def _json_blob(rng: random.Random, size: int) -> bytes:
    records: list[dict[str, object]] = []
    text = "[]"
    while len(text) < size:
        records.append(
            {
                "class": f"label_{len(records) % 50}",
                "precision": rng.random(),
                "recall": rng.random(),
                "support": rng.randint(10, 5000),
            }
        )
        if len(records) % 20 == 0:
            text = json.dumps(records, indent=2)
    return text.encode()


def write_artifacts(rng: random.Random, root: Path, total_kb: int) -> None:
    """Half random bytes, half text (log + json), in nested folders."""
    total = total_kb * 1024
    binary = total // 2
    files = {
        "model/weights/part-0.bin": rng.randbytes(binary // 2),
        "model/weights/part-1.bin": rng.randbytes(binary - binary // 2),
        "logs/train.log": _text_blob(rng, (total - binary) * 7 // 10),
        "eval/reports/summary.json": _json_blob(rng, (total - binary) * 3 // 10),
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def load_run(
    client: MlflowClient, wl: Workload, exp_id: str, exp_index: int, run_index: int, staging: Path
) -> None:
    rng = random.Random(f"{wl.seed}-{exp_index}-{run_index}")
    start_ms = int((time.time() - 7 * 86400) * 1000) + run_index * 30 * 60 * 1000
    run = client.create_run(exp_id, start_time=start_ms, run_name=f"run-{run_index:03d}")
    run_id = run.info.run_id
    params = [Param(f"param_{i}", f"{rng.choice([1e-4, 3e-4, 1e-3])}") for i in range(wl.params)]
    tags = [
        RunTag(f"tag_{i}", rng.choice(["baseline", "ablation", "sweep"])) for i in range(wl.tags)
    ]
    client.log_batch(run_id, params=params, tags=tags, synchronous=True)
    metrics, last_ts = _metric_batch(rng, wl, start_ms)
    for i in range(0, len(metrics), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + METRICS_PER_BATCH], synchronous=True)
    if wl.artifact_kb > 0:
        local = staging / run_id
        write_artifacts(rng, local, wl.artifact_kb)
        client.log_artifacts(run_id, str(local))
        shutil.rmtree(local)
    client.set_terminated(run_id, end_time=last_ts + 5000)


def load_workload(
    tracking_uri: str, wl: Workload, staging: Path, artifact_root: Path | None = None
) -> float:
    """Create experiments + runs, LOAD_THREADS runs at a time. Returns seconds.

    ``artifact_root``: a local folder for the experiments' artifacts (for a database URI, where
    MLflow's default would be ``./mlruns`` of this process)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    start = time.perf_counter()
    exp_ids = [
        client.create_experiment(
            name,
            artifact_location=None if artifact_root is None else (artifact_root / name).as_uri(),
        )
        for name in wl.experiment_names
    ]
    jobs = [(e, r) for e in range(wl.experiments) for r in range(wl.runs)]
    with ThreadPoolExecutor(max_workers=LOAD_THREADS) as pool:
        futures = [pool.submit(load_run, client, wl, exp_ids[e], e, r, staging) for e, r in jobs]
        for fut in futures:
            fut.result()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- PostgreSQL


def pg_database_uri(admin_uri: str, name: str) -> str:
    parts = urlsplit(admin_uri)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))


def create_pg_database(admin_uri: str) -> tuple[str, str]:
    """A fresh, empty database on the server of ``admin_uri``; returns (name, uri)."""
    import psycopg

    name = f"exim_bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(admin_uri, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.Error as exc:
        raise StepError(f"cannot create a PostgreSQL database via {admin_uri}: {exc}") from exc
    return name, pg_database_uri(admin_uri, name)


def drop_pg_database(admin_uri: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def settle_pg_database(uri: str) -> None:
    """After the untimed bulk load: ``VACUUM ANALYZE`` and a ``CHECKPOINT``, so autovacuum and
    the checkpointer do not work on the fresh rows while the timed steps run (as on a server
    that has been up for a while). Needs a superuser for CHECKPOINT; skipped if refused."""
    import psycopg

    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        with contextlib.suppress(psycopg.Error):
            conn.execute("CHECKPOINT")


def migrate_store(tracking_uri: str) -> None:
    """Create MLflow's schema now (untimed), as a server would have before any tool runs."""
    for name in ("mlflow.store.db.utils", "alembic"):  # one INFO line per migration step
        logging.getLogger(name).setLevel(logging.WARNING)
    MlflowClient(tracking_uri=tracking_uri).search_experiments()


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    port: int
    root: Path
    proc: subprocess.Popen[bytes]

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_uri(self) -> str:
        """The server's own sqlite backend store."""
        return f"sqlite:///{self.root / 'mlflow.db'}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    # Both tools run from compiled bytecode, as after a pip install (which compiles it): with
    # PYTHONDONTWRITEBYTECODE=1 in the environment an editable install would compile every
    # module of its package again on every command (~60 ms a command, measured).
    # check_exim's first run writes exim-archive's; pip wrote the old tool's.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(QUIET_ENV, PYTHONUNBUFFERED="1")
    return env


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no output>"


def launch_server(name: str, work: Path, workers: int | None) -> Server:
    root = work / name
    (root / "artifacts").mkdir(parents=True)
    port = free_port()
    db, artifacts = root / "mlflow.db", root / "artifacts"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(artifacts)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    with (work / "logs" / f"server-{name}.log").open("wb") as out:
        # own session so the uvicorn/gunicorn children can be stopped as one group
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=base_env(), start_new_session=True
        )
    return Server(name, port, root, proc)


def wait_healthy(server: Server, log_path: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise StepError(f"server {server.name} exited early:\n{_tail(log_path)}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{server.uri}/health", timeout=5).ok:
                log(f"server {server.name} up at {server.uri} (pid {server.proc.pid})")
                return
        time.sleep(0.25)
    raise StepError(f"server {server.name} not healthy in {HEALTH_TIMEOUT_S}s:\n{_tail(log_path)}")


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # group id == pid: started with start_new_session


def stop_server(server: Server) -> None:
    proc = server.proc
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)
    _signal_group(proc, signal.SIGKILL)  # stray workers left in the group, if any


def _warm_reads(client: MlflowClient, exp_id: str, run_id: str, dst: Path) -> None:
    client.search_runs([exp_id])
    client.get_run(run_id)
    client.get_metric_history(run_id, "warm")
    client.list_artifacts(run_id, "dir")
    client.download_artifacts(run_id, "dir", str(dst))


def _warm_writes(client: MlflowClient, exp_id: str, local: Path) -> str:
    """One run written as the tools write: a full batch, tags, files; its id."""
    run_id = client.create_run(exp_id).info.run_id
    params = [Param(f"p{i}", "1") for i in range(5)]
    tags = [RunTag(f"t{i}", "x") for i in range(5)]
    metrics = [Metric("warm", 1.0, 0, i) for i in range(METRICS_PER_BATCH)]
    client.log_batch(run_id, metrics=metrics, params=params, tags=tags, synchronous=True)
    client.set_tag(run_id, "warm", "1")
    client.delete_tag(run_id, "warm")
    client.log_artifacts(run_id, str(local))
    client.set_terminated(run_id)
    return run_id


def warm_up(server: Server, work: Path) -> None:
    """Untimed: every worker process lazily imports/initialises on its first requests of each
    kind (measured ~1 s per run extra for whichever tool went first; the first 1,000-point
    ``log_batch`` in each worker took 1-2.5 s against ~0.3 s after, so a warm-up that wrote
    through one worker left the timed unpack over HTTP ~5 s of the others' warm-up). Exercise
    the write and read paths concurrently, on every worker, in a throwaway experiment, then
    delete it: a server that has been up for a while, for both tools alike."""
    client = MlflowClient(tracking_uri=server.uri)
    exp_id = client.create_experiment(f"bench-warmup-{server.name}")
    local = work / "staging" / f"warmup-{server.name}"
    (local / "dir").mkdir(parents=True)
    (local / "dir" / "f.txt").write_text("warm\n")
    run_id = _warm_writes(client, exp_id, local)  # the run the reads read
    with ThreadPoolExecutor(max_workers=WARMUP_THREADS) as pool:
        futures = [
            pool.submit(_warm_writes, client, exp_id, local) for _ in range(WARMUP_ROUNDS)
        ] + [
            pool.submit(_warm_reads, client, exp_id, run_id, local / f"dl-{i}")
            for i in range(WARMUP_ROUNDS)
        ]
        for fut in futures:
            fut.result()
    client.delete_experiment(exp_id)
    shutil.rmtree(local)


# --------------------------------------------------------------------------- commands


def run_timed(
    label: str,
    cmd: Sequence[str],
    env: dict[str, str],
    log_path: Path,
    cwd: Path | None = None,
) -> float:
    """Wall time of the whole CLI command; raises StepError (with output tail) on failure."""
    with log_path.open("ab") as out:
        out.write(f"$ {shlex.join(cmd)}\n".encode())
        out.flush()
        start = time.perf_counter()
        proc = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, check=False
        )
        elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise StepError(
            f"{label} failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
            f"--- last output ({log_path}) ---\n{_tail(log_path)}"
        )
    log(f"{label}: {elapsed:.2f}s")
    return elapsed


def ensure_old_venv(venv: Path, spec: str) -> Path:
    """Create (once) a venv with the old tool; returns its bin directory."""
    bin_dir = venv / "bin"
    if (bin_dir / "export-experiment").exists() and (bin_dir / "import-experiment").exists():
        return bin_dir
    log(f"creating {venv} with `pip install {spec}` (one-off)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", spec], check=True)
    return bin_dir


def package_versions(python: Path, names: Sequence[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def resolve_exim(arg: str | None) -> list[str]:
    if arg:
        return shlex.split(arg)
    script = Path(sys.executable).parent / "exim-archive"
    return [str(script)] if script.exists() else [sys.executable, "-m", "exim_archive"]


def check_exim(exim: list[str]) -> None:
    proc = subprocess.run([*exim, "--help"], capture_output=True, text=True, env=base_env())
    if proc.returncode != 0:
        raise StepError(
            f"exim-archive command {shlex.join(exim)!r} does not work (exit {proc.returncode}):\n"
            f"{proc.stderr.strip() or proc.stdout.strip()}\n"
            "Install the package, pass --exim, or use --skip-exim."
        )


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- checks


Summary = dict[str, dict[str, int]]


def _count_files(client: MlflowClient, run_id: str, path: str | None = None) -> int:
    total = 0
    for info in client.list_artifacts(run_id, path):
        total += _count_files(client, run_id, info.path) if info.is_dir else 1
    return total


def summarize(tracking_uri: str, names: Sequence[str]) -> Summary:
    """Per experiment: run count; for run-000: metric_0 points, artifact files."""
    client = MlflowClient(tracking_uri=tracking_uri)
    out: Summary = {}
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            out[name] = {"runs": 0}
            continue
        runs = client.search_runs([exp.experiment_id], max_results=50000)
        sample = [r for r in runs if r.info.run_name == "run-000"]
        info = {"runs": len(runs)}
        if sample:
            run_id = sample[0].info.run_id
            info["sample_metric_points"] = len(client.get_metric_history(run_id, "metric_0"))
            info["sample_artifact_files"] = _count_files(client, run_id)
        out[name] = info
    return out


def compare(label: str, expected: Summary, actual: Summary) -> list[str]:
    if expected == actual:
        return []
    return [f"{label}: target differs from source: expected {expected}, got {actual}"]


# --------------------------------------------------------------------------- report


@dataclass
class Row:
    name: str
    unit: str
    baseline: float | None  # what the target is measured against (None: not measured)
    value: float | None  # exim-archive's
    baseline_is: str

    @property
    def rule(self) -> str:
        return TARGETS[self.name][0]

    @property
    def target(self) -> float:
        return TARGETS[self.name][1]

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.baseline is None or self.rule == AT_MOST:
            return None
        if self.rule == AT_LEAST:
            num, den = self.baseline, self.value
        else:
            num, den = self.value, self.baseline
        return math.inf if den == 0 else num / den

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        if self.rule == AT_MOST:
            return self.value <= self.target
        ratio = self.ratio
        if ratio is None:
            return None
        return ratio >= self.target if self.rule == AT_LEAST else ratio <= self.target

    @property
    def target_text(self) -> str:
        sign = ">=" if self.rule == AT_LEAST else "<="
        return f"{sign}{self.target:g}" + ("" if self.rule == AT_MOST else "x")


@dataclass
class Results:
    workload: dict[str, object]
    versions: dict[str, str]
    load_seconds: dict[str, float]
    rows: list[Row] = field(default_factory=list)
    bytes_per_point: dict[str, float | None] = field(default_factory=dict)
    floors: dict[str, dict[str, float]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["rows"] = [
            {
                **asdict(r),
                "ratio": r.ratio,
                "rule": r.rule,
                "target": r.target,
                "pass": r.passed,
            }
            for r in self.rows
        ]
        return data


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{int(value):,}" if unit == "bytes" else f"{value:.2f}"


def print_table(results: Results) -> None:
    header = (
        f"{'row':<18}{'unit':>6}{'baseline':>14}{'exim':>14}{'ratio':>9}{'target':>9}"
        f"  result  baseline is"
    )
    print("\n" + header + "\n" + "-" * (len(header) + 24))
    for r in results.rows:
        ratio = "-" if r.rule == AT_MOST else ("n/a" if r.ratio is None else f"{r.ratio:.2f}x")
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[r.passed]
        print(
            f"{r.name:<18}{r.unit:>6}{_fmt(r.baseline, r.unit):>14}{_fmt(r.value, r.unit):>14}"
            f"{ratio:>9}{r.target_text:>9}  {verdict:<6}  {r.baseline_is}"
        )
    print(
        "\nratio: baseline/exim for '>=' rows (times faster, times smaller); exim/baseline for"
        " the floor rows ('<=': at most that many times the floor's time)"
    )
    bpp = results.bytes_per_point
    print(
        "bytes per metric point: old export folder "
        f"{_fmt(bpp.get('old_export'), 's')}, whole archive {_fmt(bpp.get('archive'), 's')}, "
        f"archive metrics table {_fmt(bpp.get('metrics_table'), 's')}"
    )
    loads = ", ".join(f"{k} {v:.1f}s" for k, v in results.load_seconds.items())
    print(f"workload load time (untimed): {loads}")
    for note in results.notes:
        print(f"note: {note}")
    for problem in results.problems:
        print(f"WARNING: {problem}")


# --------------------------------------------------------------------------- main flow


@dataclass
class Context:
    args: argparse.Namespace
    wl: Workload
    work: Path
    exim: list[str] | None  # None with --skip-exim
    old_bin: Path
    servers: list[Server] = field(default_factory=list)
    pg_databases: list[str] = field(default_factory=list)

    def start_servers(self, names: Sequence[str]) -> list[Server]:
        """Launch all at once (startup is slow and untimed), then wait for each."""
        launched = [launch_server(n, self.work, self.args.server_workers) for n in names]
        self.servers += launched
        for srv in launched:
            wait_healthy(srv, self.work / "logs" / f"server-{srv.name}.log")
        return launched

    def new_pg_database(self) -> str:
        name, uri = create_pg_database(self.args.pg_admin_uri)
        self.pg_databases.append(name)
        return uri

    def run(
        self, label: str, cmd: list[str], tracking_uri: str, log_name: str, cwd: Path | None = None
    ) -> float:
        env = {**base_env(), "MLFLOW_TRACKING_URI": tracking_uri}
        os.sync()  # untimed: the last step's dirty pages are not flushed during this one
        return run_timed(label, cmd, env, self.work / "logs" / log_name, cwd)

    def cleanup(self) -> None:
        for srv in self.servers:
            stop_server(srv)
        for name in self.pg_databases:
            try:
                drop_pg_database(self.args.pg_admin_uri, name)
            except Exception as exc:  # report, keep cleaning
                print(f"could not drop PostgreSQL database {name}: {exc}", file=sys.stderr)


def old_export(ctx: Context, uri: str) -> tuple[float, Path]:
    """One export-experiment per experiment (the tool has no multi-experiment folder mode)."""
    out_root = ctx.work / "old-export"
    seconds = 0.0
    for name in ctx.wl.experiment_names:
        cmd = [str(ctx.old_bin / "export-experiment"), "--experiment", name]
        cmd += ["--output-dir", str(out_root / name)]
        seconds += ctx.run(f"old export {name}", cmd, uri, "old.log")
    return seconds, out_root


def old_import(ctx: Context, export_root: Path, uri: str) -> float:
    seconds = 0.0
    for name in ctx.wl.experiment_names:
        cmd = [str(ctx.old_bin / "import-experiment"), "--experiment-name", name]
        cmd += ["--input-dir", str(export_root / name)]
        seconds += ctx.run(f"old import {name}", cmd, uri, "old.log")
    return seconds


def new_pack(
    ctx: Context, exim: list[str], uri: str, archive: Path, label: str, *extra: str
) -> float:
    cmd = [*exim, "pack", str(archive), "--tracking-uri", uri, *extra]
    for name in ctx.wl.experiment_names:
        cmd += ["--experiment", name]
    seconds = ctx.run(label, cmd, uri, "exim.log")
    if not archive.is_file():
        raise StepError(f"{label} exited 0 but wrote no {archive}")
    return seconds


def new_unpack(
    ctx: Context, exim: list[str], archive: Path, uri: str, label: str, cwd: Path | None = None
) -> float:
    """``cwd``: for a database target, where MLflow's default ``./mlruns`` artifact root lands."""
    cmd = [*exim, "unpack", str(archive), "--tracking-uri", uri]
    return ctx.run(label, cmd, uri, "exim.log", cwd)


def sql_floor(ctx: Context, uri: str, label: str) -> tuple[float, dict[str, float]]:
    """Wall time of ``bench/sql_floor.py`` (one SELECT of the metrics table + zstd Parquet) in
    its own interpreter, like the CLI timings; plus the inner timings it prints."""
    out = ctx.work / f"floor-{label}.parquet"
    report = ctx.work / f"floor-{label}.json"
    cmd = [sys.executable, str(BENCH_DIR / "sql_floor.py"), uri, str(out), "--json", str(report)]
    seconds = ctx.run(f"SQL read + Parquet ({label})", cmd, uri, "floor.log")
    return seconds, json.loads(report.read_text())


def http_floor(ctx: Context, url: str) -> tuple[float, dict[str, float]]:
    """Wall time of ``bench/http_floor.py`` (the server's fastest complete read of the same
    experiments) in its own interpreter, like the CLI timings; plus the inner timings."""
    report = ctx.work / "floor-http.json"
    cmd = [sys.executable, str(BENCH_DIR / "http_floor.py"), url, *ctx.wl.experiment_names]
    cmd += ["--json", str(report)]
    seconds = ctx.run("fastest complete read (http)", cmd, url, "floor.log")
    return seconds, json.loads(report.read_text())


def bare_log_batch(uri: str, points: int, threads: int) -> tuple[float, int]:
    """The server's write ceiling: seconds to send ``points`` metric points as MLflow client
    ``log_batch`` calls of 1,000 (10 keys), ``threads`` at a time, into throwaway runs of
    10,000 points; nothing else (no params, tags, artifacts, no read-back). Returns (s, calls)."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(f"bare-log-batch-{uuid.uuid4().hex[:8]}")
    per_run = 10_000
    batches: list[tuple[str, list[Metric]]] = []
    for start in range(0, points, per_run):
        run_id = client.create_run(exp).info.run_id
        n = min(per_run, points - start)
        metrics = [Metric(f"m{i % 10}", i * 0.5, 1_700_000_000_000 + i, i // 10) for i in range(n)]
        batches += [(run_id, metrics[i : i + 1000]) for i in range(0, n, 1000)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for fut in [pool.submit(client.log_batch, r, metrics=m) for r, m in batches]:
            fut.result()
    return time.perf_counter() - started, len(batches)


def metrics_table_bytes(ctx: Context, exim: list[str], archive: Path) -> int:
    proc = subprocess.run(
        [*exim, "inspect", str(archive), "--json"],
        capture_output=True,
        text=True,
        env=base_env(),
        check=False,
    )
    if proc.returncode != 0:
        raise StepError(f"exim-archive inspect failed: {proc.stderr.strip()}")
    return int(json.loads(proc.stdout)["tables"]["metrics"]["bytes"])


def collect_versions(old_bin: Path) -> dict[str, str]:
    old = package_versions(old_bin / "python", [OLD_TOOL_PACKAGE, "mlflow", "mlflow-skinny"])
    return {"bench_mlflow": mlflow.__version__, **{f"old_{k}": v for k, v in old.items()}}


def run_benchmark(ctx: Context) -> Results:
    wl, exim, work = ctx.wl, ctx.exim, ctx.work
    use_pg = exim is not None and not ctx.args.skip_postgres
    names = ["source", "target-old"] + (["target-new"] if exim else [])
    source, old_target, *rest = ctx.start_servers(names)
    for srv in ctx.servers:
        warm_up(srv, work)
    log("servers warmed up")
    log(f"loading workload: {wl.metric_points:,} metric points, {wl.experiments * wl.runs} runs")
    loads = {"http": load_workload(source.uri, wl, work / "staging")}
    log(f"workload loaded over HTTP in {loads['http']:.1f}s")
    pg_source = pg_target = None
    sqlite_target = work / "target-sqlite"
    if exim is not None:
        sqlite_target.mkdir()
        migrate_store(f"sqlite:///{sqlite_target / 'mlflow.db'}")
    if use_pg:
        pg_source, pg_target = ctx.new_pg_database(), ctx.new_pg_database()
        migrate_store(pg_target)
        (work / "target-postgresql").mkdir()
        loads["postgresql"] = load_workload(
            pg_source, wl, work / "staging", artifact_root=work / "pg-artifacts"
        )
        log(f"workload loaded into PostgreSQL in {loads['postgresql']:.1f}s")
        settle_pg_database(pg_source)
    results = Results(asdict(wl), collect_versions(ctx.old_bin), loads)
    expected = summarize(source.uri, wl.experiment_names)
    if pg_source is not None:
        results.problems += compare(
            "postgresql source", expected, summarize(pg_source, wl.experiment_names)
        )

    old_pack_s, export_root = old_export(ctx, source.uri)
    old_bytes = tree_bytes(export_root)
    old_unpack_s = old_import(ctx, export_root, old_target.uri)
    results.problems += compare("old", expected, summarize(old_target.uri, wl.experiment_names))
    old_pack_label, old_unpack_label = "old export-experiment, http", "old import-experiment, http"

    new: dict[str, float | None] = dict.fromkeys(TARGETS)
    floors: dict[str, float | None] = dict.fromkeys(("http", "sqlite", "postgresql", "http write"))
    if exim:
        archive = work / "bench.exim"
        new["pack http"] = new_pack(ctx, exim, source.uri, archive, "exim pack http")
        floors["http"], results.floors["http"] = http_floor(ctx, source.uri)
        new["size"] = archive.stat().st_size
        new["bytes/point"] = metrics_table_bytes(ctx, exim, archive) / wl.metric_points
        # the server proxies its artifacts (mlflow-artifacts:/): read from its destination
        new["pack sqlite"] = new_pack(
            ctx,
            exim,
            source.db_uri,
            work / "sqlite.exim",
            "exim pack sqlite",
            "--artifacts-destination",
            str(source.root / "artifacts"),
        )
        floors["sqlite"], results.floors["sqlite"] = sql_floor(ctx, source.db_uri, "sqlite")
        if pg_source is not None:
            new["pack postgresql"] = new_pack(
                ctx, exim, pg_source, work / "postgresql.exim", "exim pack postgresql"
            )
            floors["postgresql"], results.floors["postgresql"] = sql_floor(
                ctx, pg_source, "postgresql"
            )
        new["unpack http"] = new_unpack(ctx, exim, archive, rest[0].uri, "exim unpack http")
        results.problems += compare(
            "exim http", expected, summarize(rest[0].uri, wl.experiment_names)
        )
        sqlite_uri = f"sqlite:///{sqlite_target / 'mlflow.db'}"
        new["unpack sqlite"] = new_unpack(
            ctx, exim, archive, sqlite_uri, "exim unpack sqlite", sqlite_target
        )
        results.problems += compare(
            "exim sqlite", expected, summarize(sqlite_uri, wl.experiment_names)
        )
        if pg_target is not None:
            new["unpack postgresql"] = new_unpack(
                ctx, exim, archive, pg_target, "exim unpack postgresql", work / "target-postgresql"
            )
            results.problems += compare(
                "exim postgresql", expected, summarize(pg_target, wl.experiment_names)
            )
        # last (it leaves 800k fresh rows to flush): the same number of points as bare
        # log_batch calls, into the old tool's target server
        ceiling, calls = bare_log_batch(old_target.uri, wl.metric_points, UNPACK_WORKERS)
        log(f"server write ceiling (bare log_batch, {UNPACK_WORKERS} threads): {ceiling:.2f}s")
        floors["http write"] = ceiling
        results.floors["http write"] = {"seconds": ceiling, "log_batch_calls": calls}
        results.bytes_per_point["archive"] = new["size"] / wl.metric_points
        results.bytes_per_point["metrics_table"] = new["bytes/point"]
    results.bytes_per_point["old_export"] = old_bytes / wl.metric_points

    results.rows = [
        Row("pack http", "s", old_pack_s, new["pack http"], old_pack_label),
        Row("pack sqlite", "s", old_pack_s, new["pack sqlite"], old_pack_label),
        Row("pack postgresql", "s", old_pack_s, new["pack postgresql"], old_pack_label),
        Row("floor http", "s", floors["http"], new["pack http"], "fastest complete read"),
        Row("floor sqlite", "s", floors["sqlite"], new["pack sqlite"], "SQL read + Parquet"),
        Row(
            "floor postgresql",
            "s",
            floors["postgresql"],
            new["pack postgresql"],
            "SQL read + Parquet",
        ),
        Row("unpack http", "s", old_unpack_s, new["unpack http"], old_unpack_label),
        Row(
            "ceiling http",
            "s",
            floors["http write"],
            new["unpack http"],
            "bare log_batch of the points",
        ),
        Row("unpack sqlite", "s", old_unpack_s, new["unpack sqlite"], old_unpack_label),
        Row("unpack postgresql", "s", old_unpack_s, new["unpack postgresql"], old_unpack_label),
        Row("size", "bytes", old_bytes, new["size"], "old export folders"),
        Row("bytes/point", "B", None, new["bytes/point"], "archive metrics table / points"),
    ]
    if exim:
        for row, bound, against, label in (
            ("pack http", floors.get("http"), old_pack_s, "fastest complete read"),
            ("unpack http", floors.get("http write"), old_unpack_s, "bare log_batch ceiling"),
        ):
            if bound and against:
                target = TARGETS[row][1]
                results.notes.append(
                    f"{row}: the server's {label} alone took {bound:.2f} s in this run, "
                    f"{against / bound:.2f}x faster than the old tool (target >={target:g}x): "
                    "a client of this server gets near that, not past it"
                )
        results.notes.append(
            "pack sqlite reads the source server's database and its --artifacts-destination "
            "folder (the server proxies its artifacts); pack postgresql includes the artifacts "
            "(local files); both include every artifact, like the old export"
        )
    if not wl.full_entropy_values:
        results.notes.append("metric values: float32 computations widened to float64")
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    w = p.add_argument_group("workload")
    w.add_argument("--experiments", type=int, default=2)
    w.add_argument("--runs", type=int, default=20, help="runs per experiment")
    w.add_argument("--metrics", type=int, default=10, help="metric keys per run")
    w.add_argument("--steps", type=int, default=500, help="points per metric")
    w.add_argument("--params", type=int, default=5, help="params per run")
    w.add_argument("--tags", type=int, default=5, help="tags per run")
    w.add_argument("--artifact-kb", type=int, default=64, help="artifact KB per run")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument(
        "--full-entropy-values",
        action="store_true",
        help="metric values as float64 random.gauss (random 52-bit mantissas) instead of "
        "float32 computations widened to float64",
    )
    p.add_argument("--exim", help="exim-archive command (default: next to this python)")
    p.add_argument("--skip-exim", action="store_true", help="measure the old tool only")
    p.add_argument("--skip-postgres", action="store_true", help="leave out the PostgreSQL rows")
    p.add_argument(
        "--scaling",
        action="store_true",
        help="then print the scaling table (bench/scaling.py: time and peak RSS at 1x, 4x, 16x)",
    )
    p.add_argument(
        "--pg-admin-uri",
        default=DEFAULT_PG_ADMIN,
        help="PostgreSQL URI allowed to CREATE/DROP DATABASE (default: %(default)s)",
    )
    p.add_argument("--old-venv", default=str(BENCH_DIR / ".venv-old"), help="cached venv")
    p.add_argument("--old-spec", default=OLD_TOOL_PACKAGE, help="pip spec of the old tool")
    p.add_argument("--server-workers", type=int, help="mlflow server --workers (default: its)")
    p.add_argument("--work-dir", help="keep all data here (default: temp dir, removed)")
    p.add_argument("--json", help="write results to this JSON file")
    return p.parse_args(argv)


def make_work_dir(arg: str | None) -> Path:
    if not arg:
        return Path(tempfile.mkdtemp(prefix="exim-bench-"))
    path = Path(arg).resolve()
    if path.exists() and any(path.iterdir()):
        raise StepError(f"--work-dir {path} is not empty")
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare(args: argparse.Namespace) -> Context:
    """Everything that can fail fast, before any server starts."""
    wl = Workload(**{f.name: getattr(args, f.name) for f in fields(Workload)})
    exim = None if args.skip_exim else resolve_exim(args.exim)
    if exim is not None:
        check_exim(exim)
    old_bin = ensure_old_venv(Path(args.old_venv).resolve(), args.old_spec)
    work = make_work_dir(args.work_dir)
    for sub in ("logs", "staging"):
        (work / sub).mkdir()
    log(f"work dir: {work}")
    return Context(args, wl, work, exim, old_bin)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(QUIET_ENV)
    ctx: Context | None = None
    try:
        ctx = prepare(args)
        try:
            results = run_benchmark(ctx)
        finally:
            ctx.cleanup()
    except (StepError, subprocess.CalledProcessError) as exc:
        print(f"\nBENCHMARK STEP FAILED: {exc}", file=sys.stderr)
        if ctx is not None:
            print(f"work dir kept for inspection: {ctx.work}", file=sys.stderr)
        return 1
    print_table(results)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results.to_json(), indent=2) + "\n")
        log(f"results written to {args.json}")
    if not args.work_dir:
        shutil.rmtree(ctx.work, ignore_errors=True)
    if args.scaling:
        log("scaling table (bench/scaling.py)")
        subprocess.run([sys.executable, str(BENCH_DIR / "scaling.py")], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
