"""``demo``: the whole job on a local sqlite store, no server needed.

Seeds a source store with sample runs (nested runs, NaN and inf, a dataset input, artifacts, a
deleted run and a deleted experiment), packs it, inspects and verifies the archive, and unpacks it
into a second store. Used by the README's first command.
"""

from __future__ import annotations

import math
import os
import random
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UsageError

__all__ = ["run_demo", "seed_sample_store"]

_MARKER = ".exim-demo"


@contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def seed_sample_store(
    tracking_uri: str, artifact_root: Path, runs: int = 3, steps: int = 100
) -> None:
    """Write sample experiments and runs into ``tracking_uri``."""
    from mlflow import MlflowClient
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param

    rng = random.Random(7)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    t0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    exp_id = client.create_experiment(
        "demo: image classifier",
        artifact_location=(artifact_root / "classifier").as_uri(),
        tags={
            "team": "vision",
            "mlflow.note.content": "Sample experiment made by exim-archive demo",
        },
    )
    parent = client.create_run(
        exp_id, start_time=t0, run_name="sweep", tags={"mlflow.user": "ada"}
    ).info.run_id
    trials: list[str] = []
    for i in range(runs):
        start = t0 + 60_000 * (i + 1)
        run_id = client.create_run(
            exp_id,
            start_time=start,
            run_name=f"trial-{i}",
            tags={"mlflow.user": "ada", "mlflow.parentRunId": parent, "optimizer": "adam"},
        ).info.run_id
        loss = [math.exp(-s / 30) + rng.gauss(0, 0.01) for s in range(steps)]
        metrics = [Metric("loss", v, start + s * 100, s) for s, v in enumerate(loss)]
        metrics += [Metric("accuracy", 1 - v, start + s * 100, s) for s, v in enumerate(loss)]
        metrics.append(Metric("grad_norm", float("nan"), start + 50, 0))
        metrics.append(Metric("grad_norm", float("inf"), start + 60, 1))
        client.log_batch(run_id, metrics=metrics, params=[Param("lr", str(10 ** -(i + 2)))])
        client.log_inputs(
            run_id,
            [
                DatasetInput(
                    Dataset("cifar-mini", "a1b2c3", "local", '{"uri": "data/cifar"}', None, None),
                    [InputTag("mlflow.data.context", "training")],
                )
            ],
        )
        art = artifact_root / "staging" / run_id
        (art / "plots").mkdir(parents=True)
        (art / "plots" / "loss.csv").write_text("\n".join(f"{s},{v}" for s, v in enumerate(loss)))
        (art / "notes.txt").write_text(f"trial {i}\n")
        client.log_artifacts(run_id, str(art))
        client.set_terminated(run_id, "FINISHED" if i else "FAILED", end_time=start + 30_000)
        trials.append(run_id)
    client.set_terminated(parent, "FINISHED", end_time=t0 + 600_000)
    # the registry: a model with a version per finished trial, an alias, and a prompt
    client.create_registered_model("demo-classifier", tags={"team": "vision"})
    for run_id in trials[1:]:
        uri = client.get_run(run_id).info.artifact_uri
        client.create_model_version("demo-classifier", f"{uri}/plots", run_id=run_id)
    client.set_registered_model_alias("demo-classifier", "champion", str(len(trials) - 1))
    client.register_prompt("demo-caption", "Describe {{image}} in one line.", "first draft")
    client.register_prompt("demo-caption", "Describe {{image}} briefly.", "shorter")
    client.set_prompt_alias("demo-caption", "production", 2)
    doomed = client.create_run(exp_id, start_time=t0, run_name="mistake").info.run_id
    client.delete_run(doomed)
    old = client.create_experiment(
        "demo: retired", artifact_location=(artifact_root / "retired").as_uri()
    )
    client.create_run(old, start_time=t0, run_name="ancient")
    client.delete_experiment(old)


def run_demo(directory: Path, say: Callable[[str], None]) -> None:
    """Seed, pack, inspect, verify and unpack in ``directory`` (new, or an earlier demo's)."""
    from .pack import pack
    from .summary import inspect_archive, render_summary
    from .unpack import unpack
    from .verify import verify

    directory = directory.resolve()
    if directory.is_dir() and any(directory.iterdir()):
        if not (directory / _MARKER).exists():
            raise UsageError(
                "is not empty and not an earlier demo",
                where=str(directory),
                hint="give a new folder",
            )
        shutil.rmtree(directory)  # an earlier demo's folder: start it afresh
    directory.mkdir(parents=True, exist_ok=True)
    (directory / _MARKER).write_text("made by exim-archive demo; safe to delete\n")
    source = f"sqlite:///{directory / 'source.db'}"
    target = f"sqlite:///{directory / 'target.db'}"
    archive = directory / "demo.exim"
    say(f"1. seeding sample runs into {source}")
    seed_sample_store(source, directory / "source-artifacts")
    say(f"2. exim-archive pack {archive} --tracking-uri {source}")
    packed = pack(archive, tracking_uri=source)
    c = packed.counts
    say(
        f"   {c['runs']} runs, {c['metric_points']} metric points, {c['registered_models']} "
        f"registered models and prompts ({c['model_versions']} versions), {packed.bytes:,} bytes"
    )
    say(f"3. exim-archive inspect {archive}")
    say(render_summary(inspect_archive(archive)))
    say(f"4. exim-archive verify {archive}")
    report = verify(archive)
    report.raise_if_failed()
    say(f"   ok: {report.members_checked} members, sha256:{report.digest}")
    say(f"5. exim-archive unpack {archive} --tracking-uri {target} --import-source-tags")
    with _cwd(directory):
        done = unpack(archive, tracking_uri=target, import_source_tags=True)
    say(
        f"   {done.runs_created} runs created, {done.metric_points} metric points, "
        f"{done.artifacts} artifacts, {done.families.get('model_versions_created', 0)} model "
        "and prompt versions"
    )
    say(f"done: the copy is in {target}; browse it with: mlflow ui --backend-store-uri {target}")
