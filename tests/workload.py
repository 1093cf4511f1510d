"""Test workloads: a source store seeded with every case the fidelity table names, and a
snapshot of a store that two stores can be compared by (ids and server times left out)."""

from __future__ import annotations

import hashlib
import math
import os
import random
import tempfile
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag, ViewType

T0 = 1_767_225_600_000


def _location(artifact_root: Path | None, name: str) -> str | None:
    return None if artifact_root is None else (artifact_root / name).as_uri()


def seed_rich(uri: str, prefix: str, artifact_root: Path | None = None) -> list[str]:
    """Seed the fidelity workload; returns the experiment names it made.

    ``artifact_root`` is needed for database stores (no server to hold artifacts); leave it
    None for an http server, whose experiments then get ``mlflow-artifacts:/`` locations.
    """
    c = MlflowClient(tracking_uri=uri)
    rng = random.Random(42)
    main = f"{prefix} fidelity ünïcødé 日本"
    empty = f"{prefix} empty"
    gone = f"{prefix} deleted"
    exp = c.create_experiment(
        main,
        artifact_location=_location(artifact_root, "main"),
        tags={"team": "vision", "mlflow.note.content": "# Notes\nmulti-line ✓"},
    )
    c.create_experiment(empty, artifact_location=_location(artifact_root, "empty"))
    parent = c.create_run(exp, start_time=T0, run_name="parent", tags={"mlflow.user": "alice"})
    pid = parent.info.run_id
    c.log_batch(pid, metrics=[Metric("loss", 0.5, T0 + 1, 0)], params=[Param("kind", "sweep")])
    c.set_terminated(pid, "FINISHED", end_time=T0 + 10_000)

    child = c.create_run(
        exp,
        start_time=T0 + 100,
        run_name="child ✓ 子",
        tags={"mlflow.user": "bob", "mlflow.parentRunId": pid, "note": "värde 🚀"},
    )
    cid = child.info.run_id
    points = [Metric("loss", math.exp(-s / 20) + rng.gauss(0, 0.01), T0 + s, s) for s in range(300)]
    points += [
        Metric("special", float("nan"), T0 + 1, 0),
        Metric("special", float("inf"), T0 + 2, 1),
        Metric("special", float("-inf"), T0 + 3, 2),
        Metric("special", -0.0, T0 + 4, 3),
        Metric("special", 5e-324, T0 + 5, 4),
        Metric("repeat", 1.0, T0 + 10, 7),
        Metric("repeat", 2.0, T0 + 11, 7),
        Metric("repeat", 3.0, T0 + 12, 7),
        Metric("steps", 1.0, T0, -5),
        Metric("steps", 2.0, T0, 2**40),
        Metric("métrique/日本", 1.5, T0, 0),
    ]
    params = [Param(f"p{i:03d}", f"value {i}") for i in range(150)]
    params.append(Param("empty", ""))
    c.log_batch(cid, metrics=points, params=params)
    c.log_batch(cid, tags=[RunTag(f"t{i:03d}", "x" * i) for i in range(120)])
    c.log_inputs(
        cid,
        [
            DatasetInput(
                Dataset(
                    "train", "d1", "local", '{"uri": "/data/train"}', '{"cols": 3}', '{"n": 9}'
                ),
                [InputTag("mlflow.data.context", "training")],
            ),
            DatasetInput(
                Dataset("eval", "d2", "http", '{"url": "http://x"}', None, None),
                [InputTag("mlflow.data.context", "eval"), InputTag("split", "b")],
            ),
        ],
    )
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "deep" / "er" / "est").mkdir(parents=True)
        (root / "deep" / "er" / "est" / "model.txt").write_text("weights " * 500)
        (root / "empty.txt").write_bytes(b"")
        (root / "random.bin").write_bytes(rng.randbytes(100_000))
        (root / "ünï.json").write_text('{"a": 1}')
        c.log_artifacts(cid, str(root))
    c.set_terminated(cid, "FAILED", end_time=T0 + 20_000)

    running = c.create_run(exp, start_time=T0 + 200, run_name="still running")
    c.log_batch(running.info.run_id, params=[Param("a", "1")])
    killed = c.create_run(exp, start_time=T0 + 300, run_name="killed and deleted")
    c.log_batch(killed.info.run_id, metrics=[Metric("loss", 9.0, T0 + 301, 0)])
    c.set_terminated(killed.info.run_id, "KILLED", end_time=T0 + 400)
    c.delete_run(killed.info.run_id)

    gone_id = c.create_experiment(gone, artifact_location=_location(artifact_root, "gone"))
    old = c.create_run(gone_id, start_time=T0 + 500, run_name="in deleted experiment")
    c.log_batch(old.info.run_id, metrics=[Metric("x", 1.0, T0, 0)])
    c.set_terminated(old.info.run_id, "FINISHED", end_time=T0 + 600)
    c.delete_experiment(gone_id)
    return [main, empty, gone]


def seed_bulk(
    uri: str, name: str, runs: int, points: int, artifact_root: Path | None = None
) -> None:
    """A plainer experiment with many runs, for interruption and scale tests."""
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment(name, artifact_location=_location(artifact_root, name))
    for i in range(runs):
        run = c.create_run(exp, start_time=T0 + i, run_name=f"run-{i:03d}")
        rid = run.info.run_id
        metrics = [Metric("m", float(s) * 0.5, T0 + s, s) for s in range(points)]
        for start in range(0, len(metrics), 1000):
            c.log_batch(rid, metrics=metrics[start : start + 1000])
        c.log_batch(rid, params=[Param("i", str(i))])
        with tempfile.TemporaryDirectory() as d:
            Path(d, "a.txt").write_text(f"run {i}\n")
            c.log_artifacts(rid, d)
        c.set_terminated(rid, "FINISHED", end_time=T0 + 10_000 + i)


def as_sql_keeps(snap: dict[str, Any]) -> dict[str, Any]:
    """A snapshot's metric values as SQL stores keep them: +/-inf as +/-DBL_MAX, -0.0 as 0.0
    (SQLite and MariaDB). The archive keeps what the source returned; the target cannot."""
    table = {"inf": "1.7976931348623157e+308", "-inf": "-1.7976931348623157e+308", "-0.0": "0.0"}
    for exp in snap.values():
        for run in exp["runs"].values():
            for key, points in run["metrics"].items():
                run["metrics"][key] = [(s, t, table.get(v, v)) for s, t, v in points]
    return snap


def _value(v: float) -> str:
    return "nan" if math.isnan(v) else repr(v)


def snapshot(uri: str, names: list[str], with_artifacts: bool = True) -> dict[str, Any]:
    """Everything the fidelity table promises, keyed by names rather than ids."""
    c = MlflowClient(tracking_uri=uri)
    out: dict[str, Any] = {}
    for name in names:
        exp = c.get_experiment_by_name(name)
        assert exp is not None, f"experiment {name!r} missing at {uri}"
        runs = c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=50_000)
        id_to_name = {r.info.run_id: r.info.run_name for r in runs}
        run_snaps: dict[str, Any] = {}
        for run in runs:
            tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow_exim.")}
            if "mlflow.parentRunId" in tags:
                tags["mlflow.parentRunId"] = "->" + id_to_name.get(tags["mlflow.parentRunId"], "?")
            metrics = {
                key: sorted(
                    (m.step, m.timestamp, _value(m.value))
                    for m in c.get_metric_history(run.info.run_id, key)
                )
                for key in run.data.metrics
            }
            inputs = sorted(
                (
                    d.dataset.name,
                    d.dataset.digest,
                    d.dataset.source_type,
                    d.dataset.source,
                    d.dataset.schema,
                    d.dataset.profile,
                    tuple(sorted((t.key, t.value) for t in d.tags)),
                )
                for d in run.inputs.dataset_inputs
            )
            snap = {
                "status": run.info.status,
                "start_time": run.info.start_time,
                "end_time": run.info.end_time,
                "lifecycle": run.info.lifecycle_stage,
                "user_id": run.info.user_id,
                "params": dict(run.data.params),
                "tags": tags,
                "inputs": inputs,
                "metrics": metrics,
            }
            if with_artifacts:
                snap["artifacts"] = _artifacts(c, run.info.run_id)
            assert run.info.run_name not in run_snaps, "duplicate run name: a run came twice"
            run_snaps[run.info.run_name] = snap
        out[name] = {
            "lifecycle": exp.lifecycle_stage,
            "tags": {k: v for k, v in exp.tags.items() if not k.startswith("mlflow_exim.")},
            "runs": run_snaps,
        }
    return out


def _artifacts(c: MlflowClient, run_id: str) -> dict[str, str]:
    if not c.list_artifacts(run_id):
        return {}
    with tempfile.TemporaryDirectory() as d:
        root = Path(c.download_artifacts(run_id, "", d))
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }


def count_runs(uri: str) -> int:
    c = MlflowClient(tracking_uri=uri)
    exps = c.search_experiments(view_type=ViewType.ALL)
    return sum(
        len(c.search_runs([e.experiment_id], run_view_type=ViewType.ALL, max_results=50_000))
        for e in exps
    )


def env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}
