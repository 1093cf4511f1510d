"""The proof after unpack covers the families: a clean unpack passes it; a target damaged
afterwards (a version deleted, an alias moved, tags gone, a logged model deleted, a file gone, a
trace deleted, a record gone) fails ``check_against`` with one line per problem. An archive
without family rows costs the proof no call."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import mlflow.tracking._tracking_service.utils as tracking_utils
import pytest
from conftest import MlflowServer, NewStore
from mlflow import MlflowClient

from exim_archive import family_proof
from exim_archive.eval_datasets import SOURCE_DATASET_TAG
from exim_archive.family_proof import check_families
from exim_archive.logged_models import SOURCE_MODEL_TAG
from exim_archive.pack import pack
from exim_archive.proof import ProofReport, check_against
from exim_archive.registry import SOURCE_VERSION_TAG
from exim_archive.unpack import unpack


@pytest.fixture
def global_uri() -> Iterator[None]:
    """MLflow resolves ``models:/m-...`` sources, traces and dataset records through the
    process-wide tracking URI: put back what was there."""
    saved = tracking_utils._tracking_uri
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(saved)  # type: ignore[arg-type]
    if saved_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved_env


def _seed(uri: str, unique: str, tmp: Path) -> dict[str, Any]:
    """One experiment with a run, two logged models (one with files, a metric and two registry
    versions, one alias), two traces (one with an assessment) and a dataset of two records."""
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.create_experiment(f"{unique}-fam")
    run = client.create_run(exp).info.run_id
    files = tmp / "model-files"
    (files / "sub").mkdir(parents=True)
    (files / "MLmodel").write_text("flavors: {}\n")
    (files / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 50)
    model = client.create_logged_model(
        exp, name="clf", source_run_id=run, params={"alpha": "0.5"}, tags={"team": "vision"}
    )
    client.log_model_artifacts(model.model_id, str(files))
    client.log_metric(run, "acc", 0.75, step=1, model_id=model.model_id)
    client.finalize_logged_model(model.model_id, "READY")
    spare = client.create_logged_model(exp, name="spare", tags={"team": "other"})
    client.finalize_logged_model(spare.model_id, "READY")
    client.set_terminated(run)

    name = f"{unique}-Clf"
    client.create_registered_model(name)
    for number in ("1", "2"):
        client.create_model_version(
            name,
            f"models:/{model.model_id}",
            run_id=run,
            model_id=model.model_id,
            tags={"stage": f"s{number}"},
        )
    client.set_registered_model_alias(name, "champion", "2")

    mlflow.set_experiment(experiment_id=exp)
    with mlflow.start_span("root") as root:
        mlflow.update_current_trace(tags={"team": "blue"})
        with mlflow.start_span("child") as child:
            child.set_inputs({"q": 1})
    with mlflow.start_span("lonely"):
        pass
    mlflow.flush_trace_async_logging()
    traces = sorted(
        t.info.trace_id for t in client.search_traces(locations=[exp], include_spans=False)
    )
    assert len(traces) == 2
    mlflow.log_feedback(trace_id=root.trace_id, name="quality", value=0.5)

    dataset = client.create_dataset(f"{unique}-qa", experiment_id=[exp], tags={"k": "v"})
    dataset.merge_records(
        [
            {"inputs": {"q": "one"}, "expectations": {"a": "1"}},
            {"inputs": {"q": "two"}, "expectations": {"a": "2"}},
        ]
    )
    return {
        "experiment": f"{unique}-fam",
        "name": name,
        "model": model.model_id,
        "spare": spare.model_id,
        "root": root.trace_id,
        "other": next(t for t in traces if t != root.trace_id),
        "dataset": dataset.dataset_id,
    }


def _target_models(client: MlflowClient, exp: str) -> dict[str, Any]:
    return {
        m.tags[SOURCE_MODEL_TAG]: m
        for m in client.search_logged_models([exp])
        if SOURCE_MODEL_TAG in m.tags
    }


def test_damaged_target_fails_the_proof(
    new_sqlite: NewStore, unique: str, tmp_path: Path, global_uri: None
) -> None:
    src, dst = new_sqlite("src"), new_sqlite("dst")
    seeded = _seed(src, unique, tmp_path)
    archive = tmp_path / "a.exim"
    report = pack(archive, tracking_uri=src, workers=2)
    assert report.counts["model_versions"] == 2
    assert report.counts["traces"] == 2
    unpack(archive, tracking_uri=dst, workers=2)  # its own proof, families included, passes
    assert check_against(archive, tracking_uri=dst).problems == []

    mlflow.set_tracking_uri(dst)
    client = MlflowClient(dst, registry_uri=dst)
    name = seeded["name"]
    exp = client.get_experiment_by_name(seeded["experiment"]).experiment_id  # type: ignore[union-attr]
    versions = {
        v.tags[SOURCE_VERSION_TAG]: v for v in client.search_model_versions(f"name = '{name}'")
    }
    assert sorted(versions) == ["1", "2"]
    models = _target_models(client, exp)
    copy = models[seeded["model"]]

    client.delete_model_version(name, versions["1"].version)
    client.delete_model_version_tag(name, versions["2"].version, "stage")
    foreign = client.create_model_version(name, f"models:/{copy.model_id}", model_id=copy.model_id)
    client.set_registered_model_alias(name, "champion", foreign.version)
    client.delete_logged_model_tag(copy.model_id, "team")
    client.delete_logged_model(models[seeded["spare"]].model_id)
    location = copy.artifact_location.removeprefix("file://")
    os.remove(os.path.join(location, "sub", "weights.bin"))
    client.delete_traces(exp, trace_ids=[seeded["other"]])
    client.delete_trace_tag(seeded["root"], "team")
    store = client._tracking_client.store
    target_set = next(
        d for d in client.search_datasets() if d.tags.get(SOURCE_DATASET_TAG) == seeded["dataset"]
    )
    records, _ = store._load_dataset_records(target_set.dataset_id, max_results=10)
    store.delete_dataset_records(target_set.dataset_id, [records[0].dataset_record_id])

    proof = check_against(archive, tracking_uri=dst)
    model, spare = seeded["model"], seeded["spare"]
    assert sorted(proof.problems) == sorted(
        [
            f"registered model {name!r} version 1: missing in the target",
            f"registered model {name!r} version 2: tag 'stage' is missing or differs",
            f"registered model {name!r}: alias 'champion' names version {foreign.version} in "
            "the target, not the copy of version 2",
            f"logged model {model} ('clf'): tag 'team' is missing or differs",
            f"logged model {spare} ('spare'): missing in the target",
            f"logged model {model}: 1 of its 2 files missing in the target or of another size "
            "(e.g. 'sub/weights.bin')",
            f"trace {seeded['other']}: missing in the target",
            f"trace {seeded['root']}: tag 'team' is missing or differs",
            f"evaluation dataset {seeded['dataset']} ({unique + '-qa'!r}): 1 of its 2 records "
            "missing in the target",
        ]
    )


@pytest.mark.server
def test_clean_unpack_between_servers_passes(
    source_server: MlflowServer,
    target_server: MlflowServer,
    unique: str,
    tmp_path: Path,
    global_uri: None,
) -> None:
    """Over REST (tags and files through the server), a clean target is proved whole, and a
    deleted logged model file is still found."""
    seeded = _seed(source_server.url, unique, tmp_path)
    archive = tmp_path / "a.exim"
    pack(archive, tracking_uri=source_server.url, experiments=[seeded["experiment"]], workers=2)
    unpack(archive, tracking_uri=target_server.url, workers=2)
    assert check_against(archive, tracking_uri=target_server.url).problems == []

    client = MlflowClient(target_server.url)
    exp = client.get_experiment_by_name(seeded["experiment"]).experiment_id  # type: ignore[union-attr]
    copy = _target_models(client, exp)[seeded["model"]]
    client.delete_trace_tag(seeded["root"], "team")
    proof = check_against(archive, tracking_uri=target_server.url)
    assert proof.problems == [f"trace {seeded['root']}: tag 'team' is missing or differs"]
    assert copy.artifact_location.startswith("mlflow-artifacts:")


class _NoFamilies:
    def family_rows(self) -> dict[str, list[dict[str, Any]]]:
        return {"registered_models": [], "traces": []}


def test_no_family_rows_makes_no_call() -> None:
    def call(what: str, fn: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"called: {what}")

    report = ProofReport("a.exim", "sqlite://")

    def client() -> Any:
        raise AssertionError("opened MLflow's client")

    check_families(report, _NoFamilies(), client, call, "sqlite://", {"1": "2"})  # type: ignore[arg-type]
    assert report.ok


class _Rows:
    def __init__(self, rows: dict[str, list[dict[str, Any]]]) -> None:
        self.rows = rows

    def family_rows(self) -> dict[str, list[dict[str, Any]]]:
        return self.rows


def _version(number: int, run_scope: str = "archive", model_scope: str = "none") -> dict[str, Any]:
    return {"name": "m", "version": number, "run_scope": run_scope, "model_scope": model_scope}


def test_registry_rules_without_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """A version whose run or logged model is outside the archive may be missing (so may its
    alias); another kind under the name is reported once; long tags compare cut, long keys
    and ``mlflow_exim.*`` tags not at all; numbers that moved are followed by the tag; a
    version made twice is reported."""
    archive = {
        "registered_models": [
            {"name": "m", "kind": "model"},
            {"name": "p", "kind": "prompt"},
            {"name": "gone", "kind": "model"},
        ],
        "model_versions": [
            _version(1),
            _version(2, run_scope="outside"),
            _version(3, model_scope="outside"),
            _version(4, run_scope="none"),
            _version(5),
            {**_version(1), "name": "p"},
        ],
        "model_version_tags": [
            {"name": "m", "version": 1, "key": "long", "value": "x" * 6000},
            {"name": "m", "version": 1, "key": "k" * 251, "value": "skipped"},
            {"name": "m", "version": 1, "key": "mlflow_exim.field.x", "value": "other"},
            {"name": "m", "version": 4, "key": "t", "value": "v"},
        ],
        "registered_model_aliases": [
            {"name": "m", "alias": "a", "version": 1},
            {"name": "m", "alias": "b", "version": 2},
            {"name": "m", "alias": "c", "version": 4},
        ],
    }
    target = {
        "registered_models": [{"name": "m", "kind": "model"}, {"name": "p", "kind": "model"}],
        "model_version_tags": [
            {"name": "m", "version": 1, "key": SOURCE_VERSION_TAG, "value": "1"},
            {"name": "m", "version": 1, "key": "long", "value": "x" * 5000},
            {"name": "m", "version": 1, "key": "mlflow_exim.field.x", "value": "mine"},
            {"name": "m", "version": 7, "key": SOURCE_VERSION_TAG, "value": "4"},
            {"name": "m", "version": 7, "key": "t", "value": "v"},
            {"name": "m", "version": 8, "key": SOURCE_VERSION_TAG, "value": "4"},
        ],
        "registered_model_aliases": [
            {"name": "m", "alias": "a", "version": 1},
            {"name": "m", "alias": "c", "version": 1},
        ],
    }
    monkeypatch.setattr(family_proof, "read_registry", lambda scope, model_ids: target)
    report = ProofReport("a.exim", "sqlite://")
    check_families(report, _Rows(archive), object, None, "sqlite://", {})  # type: ignore[arg-type]
    assert report.problems == [
        "registered model 'gone': missing in the target",
        "registered model 'm' version 4: 2 copies in the target (versions 7, 8)",
        "registered model 'm' version 5: missing in the target",
        "registered model 'm': alias 'c' names version 1 in the target, not the copy of version 4",
        "prompt 'p': the target has a model of that name (nothing of it written)",
    ]


def test_families_back_to_their_source_are_not_copied_again(
    tmp_path: Path, new_sqlite: NewStore
) -> None:
    """A -> B -> A: B's logged model, versions (of a model and of a prompt) and evaluation
    dataset name A's in their bookkeeping tags; unpacked into A again, A's objects stand for
    them (nothing created, the champion alias stays on its version) and the proof passes."""
    from families_workload import seed_families, snapshot_families

    a, b = new_sqlite("a"), new_sqlite("b")
    seed_families(a, "home", tmp_path / "art")
    before = snapshot_families(a, "home")
    pack(tmp_path / "ab.exim", tracking_uri=a)
    unpack(tmp_path / "ab.exim", tracking_uri=b, import_source_tags=True)
    pack(tmp_path / "ba.exim", tracking_uri=b)
    back = unpack(tmp_path / "ba.exim", tracking_uri=a, import_source_tags=True)
    created = {k: v for k, v in back.families.items() if k.endswith("_created") and v}
    assert created == {}, back.families
    assert back.families["model_versions_skipped"] == 4
    assert back.families["logged_models_skipped"] == back.families["datasets_skipped"] == 1
    assert snapshot_families(a, "home") == before
    said = [n for n in back.notes if "no unpack made" in n]
    assert len(said) == 5, back.notes  # runs, logged models, two registered models, datasets
    proof = check_against(tmp_path / "ba.exim", tracking_uri=a)
    assert proof.ok, proof.problems
