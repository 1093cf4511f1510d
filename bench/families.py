#!/usr/bin/env python
"""Cost of the MLflow 3 / registry object families: ms per model version and per trace span.

Seeds a real ``mlflow server`` (sqlite backend, ``--artifacts-destination``) with one experiment:
one run logging a tiny pyfunc model (one logged model), a registered model with N versions made
from it, and T traces of S nested spans each. Then packs that experiment four times, adding one
family at a time (runs only; + logged-models; + registry; + traces = everything), and unpacks
each archive into its own fresh target server. Consecutive differences are each family's cost.
One measurement per variant, in-process through the library API (``PackReport.seconds``,
``UnpackReport.seconds``). Not a test; see bench/README.md.

    python bench/families.py --versions 20 --traces 20 --spans 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from run_bench import (
    QUIET_ENV,
    WARMUP_ROUNDS,
    WARMUP_THREADS,
    Server,
    StepError,
    launch_server,
    log,
    stop_server,
    wait_healthy,
    warm_up,
)

from exim_archive.pack import FAMILIES, pack
from exim_archive.unpack import unpack

EXPERIMENT = "bench-families"
MODEL = "bench-families-model"
ALL = frozenset(FAMILIES)

# (label, leave_out): each variant adds one family to the one before it
VARIANTS: list[tuple[str, frozenset[str]]] = [
    ("runs only", ALL),
    ("+ logged-models", ALL - {"logged-models"}),
    ("+ registry", frozenset({"traces"})),  # prompts, evaluation-datasets in too (none exist)
    ("+ traces (everything)", frozenset()),
]


class AddOne(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        return model_input + 1


def warm_up_families(server: Server) -> None:
    """Untimed, after run_bench's warm_up (experiments, runs, artifacts): each server worker
    also sets up its model registry, logged-model and trace paths lazily on first use. Write one
    logged model and version in a throwaway experiment, read all three concurrently, delete."""
    client = MlflowClient(server.uri, registry_uri=server.uri)
    exp_id = client.create_experiment(f"bench-warmup-families-{server.name}")
    model = client.create_logged_model(exp_id, name="warm")
    client.finalize_logged_model(model.model_id, "READY")
    name = f"bench-warmup-{server.name}"
    client.create_registered_model(name)
    client.create_model_version(
        name, model.model_uri, model_id=model.model_id, await_creation_for=0
    )

    def reads(_: int) -> None:
        client.search_registered_models()
        client.search_model_versions(f"name = '{name}'")
        client.search_logged_models([exp_id])
        client.search_traces(locations=[exp_id])

    with ThreadPoolExecutor(max_workers=WARMUP_THREADS) as pool:
        list(pool.map(reads, range(WARMUP_ROUNDS)))
    client.delete_registered_model(name)
    client.delete_logged_model(model.model_id)
    client.delete_experiment(exp_id)


def seed(uri: str, versions: int, traces: int, spans: int) -> None:
    """One experiment: a run with a logged pyfunc model, N versions of it, T traces x S spans."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp_id = mlflow.set_experiment(EXPERIMENT).experiment_id
    with mlflow.start_run(run_name="train") as run:
        info = mlflow.pyfunc.log_model(name="m", python_model=AddOne(), pip_requirements=[])
    if versions:
        client = MlflowClient(uri, registry_uri=uri)
        client.create_registered_model(MODEL)
        for _ in range(versions):
            client.create_model_version(
                MODEL,
                info.model_uri,
                run_id=run.info.run_id,
                model_id=info.model_id,
                await_creation_for=0,
            )
    for t in range(traces):
        _nested(t, spans)
    mlflow.flush_trace_async_logging()
    client = MlflowClient(uri)
    found = client.search_traces(locations=[exp_id], max_results=traces + 1, include_spans=False)
    if len(found) != traces:
        raise StepError(f"seeded {traces} traces, the source lists {len(found)}")


def _nested(trace: int, depth: int, level: int = 0) -> None:
    if level >= depth:
        return
    with mlflow.start_span(name=f"trace{trace}-span{level}") as span:
        span.set_inputs({"x": level})
        _nested(trace, depth, level + 1)
        span.set_outputs({"y": level + 1})


def measure(
    work: Path, source: Server, workers: int | None
) -> tuple[list[tuple[str, float, float]], dict[str, int], dict[str, int]]:
    """(label, pack s, unpack s) per variant, and the full archive's counts and unpack families."""
    # untimed: the first pack/unpack of a process pays lazy imports; give them to a throwaway
    warm_archive = work / "warm.exim"
    pack(warm_archive, tracking_uri=source.uri, experiments=[EXPERIMENT], overwrite=True)
    unpack(warm_archive, tracking_uri=f"sqlite:///{work / 'warm.db'}")
    log("pack/unpack warmed up (untimed)")
    rows: list[tuple[str, float, float]] = []
    counts: dict[str, int] = {}
    families: dict[str, int] = {}
    for i, (label, leave_out) in enumerate(VARIANTS):
        archive = work / f"variant-{i}.exim"
        packed = pack(
            archive,
            tracking_uri=source.uri,
            experiments=[EXPERIMENT],
            overwrite=True,
            leave_out=leave_out,
        )
        log(f"pack {label}: {packed.seconds:.2f}s, {archive.stat().st_size:,} bytes")
        # a fresh target per archive: every archive holds the same experiment name
        target = launch_server(f"target-{i}", work, workers)
        try:
            wait_healthy(target, work / "logs" / f"server-{target.name}.log")
            warm_up(target, work)
            warm_up_families(target)
            unpacked = unpack(archive, tracking_uri=target.uri)
        finally:
            stop_server(target)
        log(f"unpack {label}: {unpacked.seconds:.2f}s")
        rows.append((label, packed.seconds, unpacked.seconds))
        counts, families = packed.counts, unpacked.families
    return rows, counts, families


def _ms(seconds: float, objects: int) -> str:
    return f"{seconds * 1000 / objects:.1f}" if objects else "n/a"


def report(
    rows: list[tuple[str, float, float]],
    counts: dict[str, int],
    families: dict[str, int],
) -> None:
    print(f"\n{'archive':<24}{'pack s':>9}{'unpack s':>10}")
    for label, pack_s, unpack_s in rows:
        print(f"{label:<24}{pack_s:>9.2f}{unpack_s:>10.2f}")
    c = counts
    per = [
        ("logged-models", f"{c['logged_models']} logged model(s)", c["logged_models"], "model"),
        (
            "registry",
            f"{c['model_versions']} versions, {c['registered_models']} model(s)",
            c["model_versions"],
            "version",
        ),
        ("traces", f"{c['traces']} traces, {c['spans']} spans", c["spans"], "span"),
    ]
    header = f"{'family':<15}{'objects':<26}{'pack s':>8}{'unpack s':>10}{'pack ms':>9}"
    header += f"{'unpack ms':>11}  per"
    print("\n" + header + "\n" + "-" * len(header))
    for (name, objects, n, unit), before, after in zip(per, rows[:-1], rows[1:], strict=True):
        d_pack, d_unpack = after[1] - before[1], after[2] - before[2]
        print(
            f"{name:<15}{objects:<26}{d_pack:>8.2f}{d_unpack:>10.2f}"
            f"{_ms(d_pack, n):>9}{_ms(d_unpack, n):>11}  {unit}"
        )
    print(f"\narchive counts: {counts}")
    print(f"unpack families: {families}")
    for made, packed in (
        ("logged_models_created", "logged_models"),
        ("model_versions_created", "model_versions"),
        ("traces_created", "traces"),
        ("spans", "spans"),
    ):
        if families.get(made) != counts.get(packed):
            print(f"WARNING: unpack {made} {families.get(made)} != archive {packed} {c[packed]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--versions", type=int, default=30, help="model versions (N)")
    p.add_argument("--traces", type=int, default=30, help="traces (T)")
    p.add_argument("--spans", type=int, default=5, help="nested spans per trace (S)")
    p.add_argument("--server-workers", type=int, help="mlflow server --workers (default: its)")
    args = p.parse_args()
    os.environ.update(QUIET_ENV)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    work = Path(tempfile.mkdtemp(prefix="exim-families-"))
    (work / "logs").mkdir()
    (work / "staging").mkdir()
    log(f"work dir: {work}")
    source: Server | None = None
    try:
        source = launch_server("source", work, args.server_workers)
        wait_healthy(source, work / "logs" / "server-source.log")
        warm_up(source, work)
        warm_up_families(source)
        seed(source.uri, args.versions, args.traces, args.spans)
        log(f"seeded: {args.versions} versions, {args.traces} traces x {args.spans} spans")
        rows, counts, families = measure(work, source, args.server_workers)
    except Exception as exc:
        print(f"\nBENCHMARK STEP FAILED: {exc!r}", file=sys.stderr)
        print(f"work dir kept for inspection: {work}", file=sys.stderr)
        return 1
    finally:
        if source is not None:
            stop_server(source)
    report(rows, counts, families)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
