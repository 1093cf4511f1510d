#!/usr/bin/env python
"""Benchmark exim-archive against mlflow-export-import (the "old tool").

Builds a synthetic MLflow workload in a source tracking server, then measures:

* pack:   old ``export-experiment`` (summed over experiments) vs one ``exim-archive pack``
* size:   total bytes of the old export folders vs the archive file
* unpack: old ``import-experiment`` (summed) vs one ``exim-archive unpack``, each into
  its own fresh target server

Standalone script (stdlib + mlflow + requests); not a test. See bench/README.md.
Exit code is 0 whatever the PASS/FAIL outcome, non-zero only if a step crashed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import mlflow
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

# row name -> minimum ratio old/new for PASS (pack, unpack: seconds; size: bytes)
TARGETS: dict[str, float] = {"pack": 3.0, "size": 10.0, "unpack": 1.0}

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

    @property
    def experiment_names(self) -> list[str]:
        return [f"{EXPERIMENT_PREFIX}-{i}" for i in range(self.experiments)]

    @property
    def metric_points(self) -> int:
        return self.experiments * self.runs * self.metrics * self.steps


def _metric_batch(rng: random.Random, wl: Workload, start_ms: int) -> tuple[list[Metric], int]:
    """Noisy float64 training curves, step-major like a real training loop logs them."""
    shapes = [(rng.uniform(0.5, 3.0), rng.uniform(0.05, 0.5) * wl.steps) for _ in range(wl.metrics)]
    metrics: list[Metric] = []
    ts = start_ms
    for step in range(wl.steps):
        ts += max(1, int(rng.gauss(1000.0, 150.0)))  # ~1 s per step, jittered
        for k, (scale, tau) in enumerate(shapes):
            value = scale * math.exp(-step / tau) + rng.gauss(0.0, 0.02 * scale)
            metrics.append(Metric(key=f"metric_{k}", value=value, timestamp=ts, step=step))
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


def load_workload(tracking_uri: str, wl: Workload, staging: Path) -> float:
    """Create experiments + runs over HTTP, LOAD_THREADS runs at a time. Returns seconds."""
    client = MlflowClient(tracking_uri=tracking_uri)
    start = time.perf_counter()
    exp_ids = [client.create_experiment(name) for name in wl.experiment_names]
    jobs = [(e, r) for e in range(wl.experiments) for r in range(wl.runs)]
    with ThreadPoolExecutor(max_workers=LOAD_THREADS) as pool:
        futures = [pool.submit(load_run, client, wl, exp_ids[e], e, r, staging) for e, r in jobs]
        for fut in futures:
            fut.result()
    return time.perf_counter() - start


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
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


def warm_up(server: Server, work: Path) -> None:
    """Untimed: every worker process lazily imports/initialises on its first requests
    (measured ~1 s per run extra for whichever tool went first). Exercise the write and
    read paths concurrently in a throwaway experiment, then delete it."""
    client = MlflowClient(tracking_uri=server.uri)
    exp_id = client.create_experiment(f"bench-warmup-{server.name}")
    run_id = client.create_run(exp_id).info.run_id
    client.log_batch(run_id, metrics=[Metric("warm", 1.0, 0, i) for i in range(10)])
    local = work / "staging" / f"warmup-{server.name}"
    (local / "dir").mkdir(parents=True)
    (local / "dir" / "f.txt").write_text("warm\n")
    client.log_artifacts(run_id, str(local))
    client.set_terminated(run_id)
    with ThreadPoolExecutor(max_workers=WARMUP_THREADS) as pool:
        futures = [
            pool.submit(_warm_reads, client, exp_id, run_id, local / f"dl-{i}")
            for i in range(WARMUP_ROUNDS)
        ]
        for fut in futures:
            fut.result()
    client.delete_experiment(exp_id)
    shutil.rmtree(local)


# --------------------------------------------------------------------------- commands


def run_timed(label: str, cmd: Sequence[str], env: dict[str, str], log_path: Path) -> float:
    """Wall time of the whole CLI command; raises StepError (with output tail) on failure."""
    with log_path.open("ab") as out:
        out.write(f"$ {shlex.join(cmd)}\n".encode())
        out.flush()
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
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
    old: float
    new: float | None

    @property
    def ratio(self) -> float | None:
        if self.new is None:
            return None
        return math.inf if self.new == 0 else self.old / self.new

    @property
    def passed(self) -> bool | None:
        return None if self.ratio is None else self.ratio >= TARGETS[self.name]


@dataclass
class Results:
    workload: dict[str, int]
    versions: dict[str, str]
    load_seconds: float
    rows: list[Row] = field(default_factory=list)
    bytes_per_point: dict[str, float | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["rows"] = [
            {**asdict(r), "ratio": r.ratio, "target": TARGETS[r.name], "pass": r.passed}
            for r in self.rows
        ]
        return data


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{int(value):,}" if unit == "bytes" else f"{value:.2f}"


def print_table(results: Results) -> None:
    header = f"{'':<8}{'unit':>7}{'old':>16}{'new':>16}{'old/new':>10}{'target':>9}  result"
    print("\n" + header + "\n" + "-" * len(header))
    for r in results.rows:
        ratio = "n/a" if r.ratio is None else f"{r.ratio:.2f}x"
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[r.passed]
        print(
            f"{r.name:<8}{r.unit:>7}{_fmt(r.old, r.unit):>16}{_fmt(r.new, r.unit):>16}"
            f"{ratio:>10}{'>=' + format(TARGETS[r.name], 'g') + 'x':>9}  {verdict}"
        )
    bpp = results.bytes_per_point
    print(
        f"\nbytes per metric point: old {_fmt(bpp.get('old'), 's')}, "
        f"new {_fmt(bpp.get('new'), 's')}"
    )
    print(f"workload load time: {results.load_seconds:.1f}s")
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

    def start_servers(self, names: Sequence[str]) -> list[Server]:
        """Launch all at once (startup is slow and untimed), then wait for each."""
        launched = [launch_server(n, self.work, self.args.server_workers) for n in names]
        self.servers += launched
        for srv in launched:
            wait_healthy(srv, self.work / "logs" / f"server-{srv.name}.log")
        return launched

    def run(self, label: str, cmd: list[str], tracking_uri: str, log_name: str) -> float:
        env = {**base_env(), "MLFLOW_TRACKING_URI": tracking_uri}
        return run_timed(label, cmd, env, self.work / "logs" / log_name)


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


def new_pack(ctx: Context, exim: list[str], uri: str) -> tuple[float, Path]:
    archive = ctx.work / "bench.zip"
    cmd = [*exim, "pack", str(archive), "--tracking-uri", uri]
    for name in ctx.wl.experiment_names:
        cmd += ["--experiment", name]
    seconds = ctx.run("exim-archive pack", cmd, uri, "exim.log")
    if not archive.is_file():
        raise StepError(f"exim-archive pack exited 0 but wrote no {archive}")
    return seconds, archive


def new_unpack(ctx: Context, exim: list[str], archive: Path, uri: str) -> float:
    cmd = [*exim, "unpack", str(archive), "--tracking-uri", uri]
    return ctx.run("exim-archive unpack", cmd, uri, "exim.log")


def collect_versions(old_bin: Path) -> dict[str, str]:
    old = package_versions(old_bin / "python", [OLD_TOOL_PACKAGE, "mlflow", "mlflow-skinny"])
    return {"bench_mlflow": mlflow.__version__, **{f"old_{k}": v for k, v in old.items()}}


def run_benchmark(ctx: Context) -> Results:
    wl, exim = ctx.wl, ctx.exim
    names = ["source", "target-old"] + (["target-new"] if exim else [])
    source, old_target, *rest = ctx.start_servers(names)
    for srv in ctx.servers:
        warm_up(srv, ctx.work)
    log("servers warmed up")
    log(f"loading workload: {wl.metric_points:,} metric points, {wl.experiments * wl.runs} runs")
    load_s = load_workload(source.uri, wl, ctx.work / "staging")
    log(f"workload loaded in {load_s:.1f}s")
    results = Results(asdict(wl), collect_versions(ctx.old_bin), load_s)
    expected = summarize(source.uri, wl.experiment_names)

    old_pack_s, export_root = old_export(ctx, source.uri)
    old_bytes = tree_bytes(export_root)
    old_unpack_s = old_import(ctx, export_root, old_target.uri)
    results.problems += compare("old", expected, summarize(old_target.uri, wl.experiment_names))

    new_pack_s = new_unpack_s = new_bytes = None
    if exim:
        new_pack_s, archive = new_pack(ctx, exim, source.uri)
        new_bytes = archive.stat().st_size
        new_unpack_s = new_unpack(ctx, exim, archive, rest[0].uri)
        actual = summarize(rest[0].uri, wl.experiment_names)
        results.problems += compare("exim-archive", expected, actual)

    results.rows = [
        Row("pack", "s", old_pack_s, new_pack_s),
        Row("unpack", "s", old_unpack_s, new_unpack_s),
        Row("size", "bytes", old_bytes, new_bytes),
    ]
    results.bytes_per_point = {
        "old": old_bytes / wl.metric_points,
        "new": None if new_bytes is None else new_bytes / wl.metric_points,
    }
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
    p.add_argument("--exim", help="exim-archive command (default: next to this python)")
    p.add_argument("--skip-exim", action="store_true", help="measure the old tool only")
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
            for srv in ctx.servers:
                stop_server(srv)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
