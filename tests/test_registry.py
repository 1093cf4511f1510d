"""The model registry, prompts and logged models through real servers: every row of the issue's
table, a deleted version (gap in numbers), aliases and stages, a version whose run was not
selected, a run with model inputs and outputs, loading ``models:/name@alias`` on the target, and
a repeated unpack that creates nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd
import pytest
from conftest import MlflowServer
from families_workload import uris_kept
from mlflow import MlflowClient
from mlflow.entities import LoggedModelInput

from exim_archive.bundle_reader import ArchiveReader
from exim_archive.pack import pack
from exim_archive.unpack import unpack
from exim_archive.verify import verify


class AddOne(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
        return model_input + 1


@pytest.fixture
def global_uri() -> Iterator[None]:
    """MLflow's fluent API uses process-wide URIs: leave them exactly as they were (restoring
    ``get_registry_uri()``'s resolved default pinned later clients' registries to this test's
    store, seen as a lock test failing after this file)."""
    with uris_kept():
        yield


def _use(url: str) -> None:
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)


def _seed(url: str, unique: str, tmp: Path) -> dict[str, Any]:
    """One experiment with a logged model registered three times (version 2 then deleted),
    a version made from run files, prompts, model inputs; and a run in a second experiment
    (not selected) with its own version of the same model."""
    _use(url)
    client = MlflowClient(url, registry_uri=url)
    saved = tmp / "saved-model"
    mlflow.pyfunc.save_model(saved, python_model=AddOne(), pip_requirements=[])
    mlflow.set_experiment(f"{unique}-reg")
    with mlflow.start_run() as run:
        mlflow.log_param("p", "1")
        info = mlflow.pyfunc.log_model(
            name="adder", python_model=AddOne(), pip_requirements=[], params={"alpha": "0.5"}
        )
        mlflow.log_metric("acc", 0.75, model_id=info.model_id)
        mlflow.log_artifacts(str(saved), "files")
    name = f"{unique}-Adder"
    client.create_registered_model(name, tags={"team": "vision"}, description="adds one")
    for _ in range(3):
        client.create_model_version(
            name, info.model_uri, run_id=run.info.run_id, model_id=info.model_id
        )
    client.delete_model_version(name, "2")
    from_files = client.create_model_version(
        name,
        f"{run.info.artifact_uri}/files",
        run_id=run.info.run_id,
        tags={"kind": "files"},
        description="from run files",
    )
    assert from_files.version == "4"
    client.set_model_version_tag(name, "3", "validated", "yes")
    client.set_registered_model_alias(name, "champion", "3")
    client.set_registered_model_alias(name, "files", "4")
    client.transition_model_version_stage(name, "1", "Staging")
    with mlflow.start_run() as consumer:
        pass
    client.log_inputs(consumer.info.run_id, models=[LoggedModelInput(info.model_id)])

    mlflow.set_experiment(f"{unique}-other")
    with mlflow.start_run() as other:
        mlflow.log_artifacts(str(saved), "files")
    client.create_model_version(name, f"{other.info.artifact_uri}/files", run_id=other.info.run_id)

    prompt = f"{unique}-greet"
    mlflow.genai.register_prompt(prompt, "Hello {{name}}", commit_message="first")
    mlflow.genai.register_prompt(prompt, "Hi {{name}}!", commit_message="second")
    mlflow.genai.set_prompt_alias(prompt, "prod", 1)
    exp_id = client.get_experiment_by_name(f"{unique}-reg").experiment_id
    client._get_registry_client().set_registered_model_tag(
        prompt, "_mlflow_experiment_ids", f",{exp_id},"
    )
    return {
        "name": name,
        "prompt": prompt,
        "run": run.info.run_id,
        "consumer": consumer.info.run_id,
        "other": other.info.run_id,
        "model_id": info.model_id,
    }


def _run_by_source(client: MlflowClient, exp_name: str, source_id: str) -> Any:
    exp = client.get_experiment_by_name(exp_name)
    runs = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow_exim.unpack.source_run_id` = '{source_id}'"
    )
    assert len(runs) == 1
    return runs[0]


@pytest.mark.server
def test_registry_round_trip(
    source_server: MlflowServer,
    target_server: MlflowServer,
    unique: str,
    tmp_path: Path,
    global_uri: None,
) -> None:
    src = _seed(source_server.url, unique, tmp_path)
    name, prompt = src["name"], src["prompt"]
    archive = tmp_path / "reg.exim"
    report = pack(archive, tracking_uri=source_server.url, experiments=[f"{unique}-reg"])
    assert verify(archive).ok
    c = report.counts
    assert (c["registered_models"], c["prompts"], c["logged_models"]) == (2, 1, 1)
    assert c["model_versions"] == 4 + 2  # model versions 1, 3, 4, 5 and two prompt versions
    with ArchiveReader(archive) as reader:
        rows = reader.family_rows()
    scopes = {r["version"]: r["run_scope"] for r in rows["model_versions"] if r["name"] == name}
    assert scopes == {1: "archive", 3: "archive", 4: "archive", 5: "outside"}

    done = unpack(archive, tracking_uri=target_server.url, import_source_tags=True)
    assert any(f"version 5 of {name!r}" in n for n in done.notes), done.notes
    target = MlflowClient(target_server.url, registry_uri=target_server.url)
    registry = target._get_registry_client()
    rm = registry.get_registered_model(name)
    assert rm.description == "adds one"
    assert rm.tags["team"] == "vision"
    assert rm.tags["mlflow_exim.field.name"] == name, rm.tags
    assert rm.aliases == {"champion": 3, "files": 4} or rm.aliases == {
        "champion": "3",
        "files": "4",
    }
    versions = {int(v.version): v for v in target.search_model_versions(f"name = '{name}'")}
    assert sorted(versions) == [1, 3, 4]  # 2 was deleted at the source; 5's run is elsewhere
    new_run = _run_by_source(target, f"{unique}-reg", src["run"])
    new_model = done.id_map["logged_models"][src["model_id"]]
    assert versions[1].run_id == new_run.info.run_id
    assert versions[1].source == f"models:/{new_model}"
    assert versions[1].current_stage == "Staging"
    assert versions[3].tags["validated"] == "yes"
    assert versions[4].source == f"{new_run.info.artifact_uri}/files"
    assert versions[4].description == "from run files"
    assert versions[4].tags["mlflow_exim.field.version"] == "4"

    model = target.get_logged_model(new_model)
    assert model.name == "adder"
    assert model.params == {"alpha": "0.5", "p": "1"}  # log_model copies the run's params
    assert model.source_run_id == new_run.info.run_id
    assert [(m.key, m.value) for m in model.metrics or []] == [("acc", 0.75)]
    assert str(model.status) in ("READY", "LoggedModelStatus.READY")
    assert model.tags["mlflow_exim.field.model_id"] == src["model_id"]  # lineage
    assert model.tags["mlflow_exim.mlflow_tag.user"] == model.tags["mlflow.user"]
    # search_runs does not return model inputs: read the runs one by one
    consumer = target.get_run(_run_by_source(target, f"{unique}-reg", src["consumer"]).info.run_id)
    assert [m.model_id for m in consumer.inputs.model_inputs] == [new_model]
    maker = target.get_run(new_run.info.run_id)
    assert [m.model_id for m in maker.outputs.model_outputs] == [new_model]

    exp_id = target.get_experiment_by_name(f"{unique}-reg").experiment_id
    # before any load_prompt: MLflow's load_prompt appends the active experiment
    tags = registry.get_registered_model(prompt).tags
    assert tags["_mlflow_experiment_ids"] == f",{exp_id},"

    _use(target_server.url)
    frame = pd.DataFrame({"x": [1, 2]})
    for uri in (f"models:/{name}@champion", f"models:/{name}/3", f"models:/{name}@files"):
        assert mlflow.pyfunc.load_model(uri).predict(frame)["x"].tolist() == [2, 3], uri
    assert mlflow.genai.load_prompt(f"prompts:/{prompt}@prod").template == "Hello {{name}}"
    second = mlflow.genai.load_prompt(f"prompts:/{prompt}/2")
    assert (second.template, second.commit_message) == ("Hi {{name}}!", "second")

    again = unpack(archive, tracking_uri=target_server.url, import_source_tags=True)
    made = {k: v for k, v in again.families.items() if k.endswith("_created") and v}
    assert made == {}
    assert len(target.search_model_versions(f"name = '{name}'")) == 3


@pytest.mark.server
def test_version_of_an_unselected_run_follows_when_its_run_arrives_first(
    source_server: MlflowServer,
    target_server: MlflowServer,
    unique: str,
    tmp_path: Path,
    global_uri: None,
) -> None:
    """Archives of two experiments, the registry in the one unpacked last: the version whose
    run lives in the other archive is remapped to the run that archive brought. (MLflow never
    reuses a version number, so numbers can only match once every version's run is there.)"""
    src = _seed(source_server.url, unique, tmp_path)
    first, second = tmp_path / "other.exim", tmp_path / "reg.exim"
    pack(
        first,
        tracking_uri=source_server.url,
        experiments=[f"{unique}-other"],
        leave_out=frozenset({"registry", "prompts"}),
    )
    pack(second, tracking_uri=source_server.url, experiments=[f"{unique}-reg"])
    unpack(first, tracking_uri=target_server.url)
    unpack(second, tracking_uri=target_server.url)
    target = MlflowClient(target_server.url, registry_uri=target_server.url)
    versions = {int(v.version): v for v in target.search_model_versions(f"name = '{src['name']}'")}
    assert sorted(versions) == [1, 3, 4, 5]
    other = _run_by_source(target, f"{unique}-other", src["other"])
    assert versions[5].run_id == other.info.run_id
    assert versions[5].source == f"{other.info.artifact_uri}/files"


@pytest.mark.server
def test_leave_out_families(
    source_server: MlflowServer, unique: str, tmp_path: Path, global_uri: None
) -> None:
    _seed(source_server.url, unique, tmp_path)
    archive = tmp_path / "runs-only.exim"
    report = pack(
        archive,
        tracking_uri=source_server.url,
        experiments=[f"{unique}-reg"],
        leave_out=frozenset({"registry", "prompts", "logged-models"}),
    )
    c = report.counts
    assert (c["registered_models"], c["model_versions"], c["logged_models"]) == (0, 0, 0)
    assert c["runs"] == 2
    assert verify(archive).ok


# -- verify: the references of format 1.1 (archives written directly, no server) ---------------


def _version(**change: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": "m",
        "version": 1,
        "description": None,
        "source": "runs:/r1/model",
        "run_id": "r1",
        "run_scope": "archive",
        "run_link": None,
        "model_id": None,
        "model_scope": "none",
        "current_stage": None,
        "status": "READY",
        "status_message": None,
        "user_id": None,
        "creation_timestamp": 1,
        "last_updated_timestamp": 1,
        "source_json": "{}",
    }
    row.update(change)
    return row


def _archive_with(path: Path, rows: dict[str, list[dict[str, Any]]]) -> Path:
    from exim_archive.bundle_writer import ArchiveWriter
    from exim_archive.records import ExperimentRecord, RunRecord

    writer = ArchiveWriter(
        path, created_at="2026-01-01T00:00:00Z", producer={}, source={}, selection={}
    )
    writer.add_experiment(ExperimentRecord("1", "e", None, "active", None, None))
    writer.add_run(RunRecord("r1", "1", None, None, "FINISHED", 0, 0, "active", None))
    model = {"name": "m", "kind": "model", "description": None, "creation_timestamp": None}
    model |= {"last_updated_timestamp": None, "user_id": None, "source_json": "{}"}
    writer.add_rows({"registered_models": [model], **rows})
    writer.finish()
    return path


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ({}, None),
        ({"model_versions": [_version(run_scope="outside", run_id="r9")]}, None),
        ({"model_versions": [_version(run_id="r9")]}, "not in the archive"),
        ({"model_versions": [_version(run_scope="outside", run_id=None)]}, "is empty"),
        ({"model_versions": [_version(run_scope="elsewhere")]}, "not one of"),
        (
            {
                "model_versions": [_version()],
                "registered_model_aliases": [{"name": "m", "alias": "a", "version": 2}],
            },
            "names version 2",
        ),
        (
            {"spans": [{"trace_id": "tr-x", "span_id": "s", "parent_span_id": None,
                        "name": None, "start_time_ns": 0, "end_time_ns": 0,
                        "source_json": "{}"}]},
            "not in table traces",
        ),
    ],
)  # fmt: skip
def test_verify_checks_the_new_references(
    tmp_path: Path, rows: dict[str, list[dict[str, Any]]], problem: str | None
) -> None:
    report = verify(_archive_with(tmp_path / "a.exim", rows))
    if problem is None:
        assert report.ok, report.problems
    else:
        assert not report.ok
        assert any(problem in p for p in report.problems), report.problems


def test_target_with_its_own_versions_gets_ours_once(
    tmp_path: Path, new_sqlite: Any, global_uri: None
) -> None:
    """A target model that already has versions: ours get the next numbers (reported), and a
    second unpack recognises them by their source-version tag instead of making them again."""
    src, dst = new_sqlite("src"), new_sqlite("dst")
    files = tmp_path / "files"
    files.mkdir()
    (files / "MLmodel").write_text("flavors: {}\n")
    for uri, count in ((src, 1), (dst, 2)):
        client = MlflowClient(uri, registry_uri=uri)
        exp = client.create_experiment("e", artifact_location=(tmp_path / f"art{count}").as_uri())
        run = client.create_run(exp)
        client.log_artifacts(run.info.run_id, str(files), "model")
        client.create_registered_model("shared")
        for _ in range(count):
            client.create_model_version(
                "shared", f"{run.info.artifact_uri}/model", run_id=run.info.run_id
            )
    pack(tmp_path / "a.exim", tracking_uri=src)
    first = unpack(tmp_path / "a.exim", tracking_uri=dst)
    assert first.id_map["model_versions"] == {"shared": {"1": 3}}
    assert any("numbers differ" in n for n in first.notes)
    second = unpack(tmp_path / "a.exim", tracking_uri=dst)
    assert second.families["model_versions_created"] == 0
    target = MlflowClient(dst, registry_uri=dst)
    assert sorted(int(v.version) for v in target.search_model_versions("name = 'shared'")) == [
        1,
        2,
        3,
    ]
