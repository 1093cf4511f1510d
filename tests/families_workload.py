"""A store seeded with one of every 1.1 family (logged model, registered model with a gap, an
alias and a stage, a prompt, a trace with nested spans, an evaluation dataset), and a snapshot
two stores can be compared by (ids, times and exim's own tags left out)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient


@contextmanager
def uris_kept() -> Iterator[None]:
    """Put back, after the block, exactly what MLflow's process-wide URIs were: the module
    globals as they were (``get_registry_uri()`` would return a resolved default, which set back
    would pin every later client's registry to it) and the environment variables ``set_*_uri``
    also write."""
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = tracking_utils._tracking_uri, registry_utils._registry_uri
    saved_env = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def global_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (traces, prompts, datasets) and its database registry store use the
    process-wide tracking URI: point it at ``uri`` for the block (:func:`uris_kept`)."""
    with uris_kept():
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield


def seed_families(uri: str, prefix: str, artifact_root: Path) -> None:
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.create_experiment(
        f"{prefix} models", artifact_location=(artifact_root / "models").as_uri()
    )
    files = artifact_root / "model-files"
    files.mkdir(parents=True, exist_ok=True)
    (files / "MLmodel").write_text("flavors: {}\n")
    (files / "weights.bin").write_bytes(bytes(range(256)) * 4)
    with global_uri(uri):
        run = client.create_run(exp, run_name="trainer")
        model = client.create_logged_model(
            exp, name="net", source_run_id=run.info.run_id, params={"lr": "0.1"}, tags={"k": "v"}
        )
        client.log_model_artifacts(model.model_id, str(files))
        client.finalize_logged_model(model.model_id, "READY")
        name = f"{prefix}-net"
        client.create_registered_model(name, tags={"team": "db"}, description="a net")
        for _ in range(3):
            client.create_model_version(
                name, f"models:/{model.model_id}", run_id=run.info.run_id, model_id=model.model_id
            )
        client.delete_model_version(name, "2")
        client.set_registered_model_alias(name, "champion", "3")
        client.set_model_version_tag(name, "1", "checked", "yes")
        client.set_terminated(run.info.run_id)
        mlflow.genai.register_prompt(f"{prefix}-ask", "Ask {{q}}", commit_message="one")
        mlflow.genai.register_prompt(f"{prefix}-ask", "Ask: {{q}}?", commit_message="two")
        mlflow.genai.set_prompt_alias(f"{prefix}-ask", "live", 2)
        client._get_registry_client().set_registered_model_tag(
            f"{prefix}-ask", "_mlflow_experiment_ids", f",{exp},"
        )
        mlflow.set_experiment(experiment_id=exp)
        with mlflow.start_span("root") as root:
            root.set_inputs({"q": "x"})
            with mlflow.start_span("child") as child:
                child.set_attribute("depth", 1)
        mlflow.flush_trace_async_logging()
        from mlflow.genai.datasets import create_dataset

        dataset = create_dataset(name=f"{prefix}-qa", experiment_id=[exp], tags={"t": "1"})
        dataset.merge_records([{"inputs": {"q": "a"}, "expectations": {"a": 1}}])


def snapshot_families(uri: str, prefix: str) -> dict[str, Any]:
    client = MlflowClient(uri, registry_uri=uri)
    registry = client._get_registry_client()

    def mine(tags: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in tags.items() if not k.startswith("mlflow_exim.")}

    name = f"{prefix}-net"
    rm = registry.get_registered_model(name)
    versions = {
        int(v.version): (v.current_stage, mine(v.tags), v.source.startswith("models:/m-"))
        for v in client.search_model_versions(f"name = '{name}'")
    }
    exp = client.get_experiment_by_name(f"{prefix} models")
    models = client.search_logged_models([exp.experiment_id])
    traces = client.search_traces(locations=[exp.experiment_id])
    with global_uri(uri):
        prompt = mlflow.genai.load_prompt(f"prompts:/{prefix}-ask@live")
        from mlflow.genai.datasets import search_datasets

        datasets = search_datasets(experiment_ids=[exp.experiment_id])
        records = sorted(str(r["inputs"]) for d in datasets for r in d.to_df().to_dict("records"))
    return {
        "model": (rm.description, mine(rm.tags), dict(rm.aliases)),
        "versions": versions,
        "logged": [(m.name, m.params, mine(m.tags).get("k"), str(m.status)) for m in models],
        "traces": sorted((t.info.trace_id, sorted(s.name for s in t.data.spans)) for t in traces),
        "prompt": (prompt.template, prompt.version, prompt.commit_message),
        "datasets": (sorted(d.name for d in datasets), records),
    }
