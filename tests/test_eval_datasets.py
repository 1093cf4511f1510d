"""The evaluation-datasets family against real servers: pack rows, unpack, unpack again."""

from __future__ import annotations

import json
from typing import Any

import pytest
from families_workload import global_uri
from mlflow import MlflowClient

from exim_archive.errors import SourceError, TargetError
from exim_archive.eval_datasets import (
    SOURCE_DATASET_TAG,
    read_eval_datasets,
    write_eval_datasets,
)
from exim_archive.families import PackScope, Rows, UnpackScope
from exim_archive.lineage import Origin
from exim_archive.mlflow_errors import Caller
from exim_archive.tables import TABLES

ORIGIN = Origin(
    digest="ab" * 32,
    source_tracking_uri="http://source.example:5000",
    created_at="2026-01-02T03:04:05Z",
)


RECORDS: list[dict[str, Any]] = [
    {
        "inputs": {"question": "What is MLflow?"},
        "outputs": None,  # stored as null; left out, MLflow stores {} instead
        "expectations": {"answer": "A platform"},
    },
    {
        "inputs": {"question": "Who made it?", "lang": "en"},
        "outputs": {"text": "Databricks"},
        "expectations": {"answer": "Databricks", "score": 0.5},
        "tags": {"difficulty": "easy"},
    },
    {
        "inputs": {"question": "Non-ASCII? é ✓", "n": 3},
        "expectations": {"answer": ["a", "b"]},
        "source": {"source_type": "TRACE", "source_data": {"trace_id": "tr-0123456789abcdef"}},
    },
]


def make_source(url: str, unique: str) -> tuple[str, str, str]:
    """Two experiments and a dataset linked to both, with tags and three records, made the way
    a user makes them (the fluent API). Returns (dataset id, experiment 1, experiment 2)."""
    from mlflow.genai.datasets import create_dataset

    client = MlflowClient(url)
    e1 = client.create_experiment(f"eval-{unique}-a")
    e2 = client.create_experiment(f"eval-{unique}-b")
    with global_uri(url):
        dataset = create_dataset(
            name=f"qa-{unique}",
            experiment_id=[e1, e2],
            tags={"team": "genai", "stage": "regression", "mlflow.custom.note": "kept"},
        )
        dataset.merge_records([dict(r) for r in RECORDS])
    return str(dataset.dataset_id), e1, e2


def target_experiments(client: MlflowClient, unique: str, sources: list[str]) -> dict[str, str]:
    """A target experiment for each source one, with ids other than the source ids (so a link
    that kept its old id cannot pass for a remapped one)."""
    mapping: dict[str, str] = {}
    n = 0
    for source in sources:
        while True:
            n += 1
            target = client.create_experiment(f"eval-{unique}-target-{n}")
            if target not in sources:
                break
        mapping[source] = target
    return mapping


def pack_scope(url: str, experiment_ids: list[str]) -> PackScope:
    return PackScope(
        client=MlflowClient(url),
        call=Caller(SourceError, url, "check the source"),
        tracking_uri=url,
        experiment_ids=experiment_ids,
        run_ids=frozenset(),
        everything=False,
    )


def unpack_scope(url: str, experiments: dict[str, str], origin: Origin | None) -> UnpackScope:
    return UnpackScope(
        client=MlflowClient(url),
        call=Caller(TargetError, url, "check the target"),
        tracking_uri=url,
        experiments=experiments,
        runs={},
        origin=origin,
    )


def store(url: str) -> Any:
    return MlflowClient(url)._tracking_client.store


def target_copies(url: str, source_id: str) -> list[Any]:
    found = []
    token = None
    while True:
        page = MlflowClient(url).search_datasets(max_results=1000, page_token=token)
        found += [d for d in page if (d.tags or {}).get(SOURCE_DATASET_TAG) == source_id]
        token = page.token
        if not token:
            return found


def comparable(records: list[Any]) -> list[tuple[str, ...]]:
    """What a record holds apart from its ids and times, sorted by inputs."""
    out = []
    for r in records:
        source = r.source.to_dict() if r.source is not None else None
        out.append(
            tuple(
                json.dumps(v, sort_keys=True)
                for v in (r.inputs, r.outputs, r.expectations, r.tags, source)
            )
        )
    return sorted(out)


@pytest.mark.server
def test_pack_rows(source_server: Any, unique: str) -> None:
    dataset_id, e1, e2 = make_source(source_server.url, unique)
    rows = read_eval_datasets(pack_scope(source_server.url, [e1]))

    for table, items in rows.items():
        assert all(set(row) == set(TABLES[table].schema.names) for row in items), table
    (ds,) = rows["evaluation_datasets"]
    assert ds["dataset_id"] == dataset_id and ds["name"] == f"qa-{unique}"
    raw = json.loads(ds["source_json"])
    assert raw["dataset_id"] == dataset_id and raw["experiment_ids"] == sorted([e1, e2])
    assert raw["created_time"] == ds["created_time"] and isinstance(ds["created_time"], int)
    assert "records" not in raw
    tags = {r["key"]: r["value"] for r in rows["evaluation_dataset_tags"]}
    assert tags["team"] == "genai" and tags["mlflow.custom.note"] == "kept"
    assert "mlflow.user" in tags  # added by MLflow's create_dataset
    # Both links, though only e1 is selected: the unpacker decides what it can map.
    links = [r["experiment_id"] for r in rows["evaluation_dataset_experiments"]]
    assert links == sorted([e1, e2])
    records = rows["evaluation_dataset_records"]
    assert len(records) == 3
    by_question = {json.loads(r["inputs"])["question"]: r for r in records}
    traced = by_question["Non-ASCII? é ✓"]
    assert json.loads(traced["source"]) == {
        "source_type": "TRACE",
        "source_data": {"trace_id": "tr-0123456789abcdef"},
    }
    assert json.loads(traced["source_json"])["source_id"] == "tr-0123456789abcdef"
    assert json.loads(by_question["Who made it?"]["outputs"]) == {"text": "Databricks"}
    assert by_question["What is MLflow?"]["outputs"] is None
    assert json.loads(by_question["Non-ASCII? é ✓"]["outputs"]) == {}

    # Same source, same rows; a selection without the dataset's experiments has none of it.
    assert read_eval_datasets(pack_scope(source_server.url, [e1])) == rows
    other = MlflowClient(source_server.url).create_experiment(f"eval-{unique}-other")
    empty = read_eval_datasets(pack_scope(source_server.url, [other]))
    assert all(items == [] for items in empty.values())
    everything = pack_scope(source_server.url, [])
    everything.everything = True
    whole = read_eval_datasets(everything)
    assert ds in whole["evaluation_datasets"]
    assert all(r in whole["evaluation_dataset_records"] for r in records)


@pytest.mark.server
def test_unpack_round_trip_and_again(source_server: Any, target_server: Any, unique: str) -> None:
    src, dst = source_server.url, target_server.url
    dataset_id, e1, e2 = make_source(src, unique)
    rows = read_eval_datasets(pack_scope(src, [e1, e2]))
    mapping = target_experiments(MlflowClient(dst), unique, [e1, e2])
    scope = unpack_scope(dst, mapping, origin=None)

    counts = write_eval_datasets(scope, rows)
    assert counts["datasets_created"] == 1 and counts["records"] == 3
    assert scope.notes == []
    (copy,) = target_copies(dst, dataset_id)
    assert copy.dataset_id != dataset_id and copy.name == f"qa-{unique}"

    # Records: equal apart from ids and times (the target makes those anew).
    source_records, _ = store(src)._load_dataset_records(dataset_id, max_results=None)
    target_records, _ = store(dst)._load_dataset_records(copy.dataset_id, max_results=None)
    assert comparable(target_records) == comparable(source_records)
    assert len(target_records) == 3

    # Tags: the source's, plus the one bookkeeping tag. MLflow sets no dataset tag by itself
    # here: `mlflow.user` is added only by MlflowClient.create_dataset when the tags lack it,
    # and the unpacker writes through the store with the source's own `mlflow.user`.
    source_tags = MlflowClient(src).get_dataset(dataset_id).tags
    assert copy.tags == {**source_tags, SOURCE_DATASET_TAG: dataset_id}
    assert not any(k.startswith("mlflow_exim.") and k != SOURCE_DATASET_TAG for k in copy.tags)

    # Links: the TARGET experiment ids, not the source's.
    links = set(store(dst).get_dataset_experiment_ids(copy.dataset_id))
    assert links == {mapping[e1], mapping[e2]}
    assert links.isdisjoint({e1, e2})

    # Again: nothing created, no record twice.
    again = write_eval_datasets(unpack_scope(dst, mapping, origin=None), rows)
    assert again == {
        "datasets_created": 0,
        "datasets_skipped": 1,
        "records": 0,
        "experiment_links": 0,
    }
    assert len(target_copies(dst, dataset_id)) == 1
    records_after, _ = store(dst)._load_dataset_records(copy.dataset_id, max_results=None)
    assert comparable(records_after) == comparable(target_records)

    # A copy left short (a record and a link missing) is completed, not duplicated.
    store(dst).delete_dataset_records(copy.dataset_id, [target_records[0].dataset_record_id])
    MlflowClient(dst).remove_dataset_from_experiments(copy.dataset_id, [mapping[e2]])
    fixed = write_eval_datasets(unpack_scope(dst, mapping, origin=None), rows)
    assert fixed["datasets_created"] == 0 and fixed["records"] == 1
    assert fixed["experiment_links"] == 1
    records_fixed, _ = store(dst)._load_dataset_records(copy.dataset_id, max_results=None)
    assert comparable(records_fixed) == comparable(source_records)
    assert set(store(dst).get_dataset_experiment_ids(copy.dataset_id)) == links


@pytest.mark.server
def test_unpack_lineage_and_unmapped_link(
    source_server: Any, target_server: Any, unique: str
) -> None:
    src, dst = source_server.url, target_server.url
    dataset_id, e1, e2 = make_source(src, unique)
    client = MlflowClient(src)
    # An empty dataset: no schema, no profile (null fields get no lineage tag).
    empty = client.create_dataset(f"empty-{unique}", experiment_id=e1, tags={"kind": "empty"})
    rows = read_eval_datasets(pack_scope(src, [e1]))
    assert {r["dataset_id"] for r in rows["evaluation_datasets"]} == {
        dataset_id,
        empty.dataset_id,
    }
    mapping = target_experiments(MlflowClient(dst), unique, [e1])  # e2 is not in the archive
    scope = unpack_scope(dst, mapping, origin=ORIGIN)

    counts = write_eval_datasets(scope, rows)
    assert counts["datasets_created"] == 2 and counts["records"] == 3
    assert scope.notes == [
        f"evaluation dataset {dataset_id} ('qa-{unique}'): experiment {e2} is not in the "
        "archive; link not written"
    ]
    (copy,) = target_copies(dst, dataset_id)
    assert store(dst).get_dataset_experiment_ids(copy.dataset_id) == [mapping[e1]]

    source = client.get_dataset(dataset_id)
    tags = copy.tags
    assert tags["mlflow_exim.field.dataset_id"] == dataset_id
    assert tags["mlflow_exim.field.name"] == f"qa-{unique}"
    assert tags["mlflow_exim.field.created_time"] == str(source.created_time)
    assert tags["mlflow_exim.field.last_update_time"] == str(source.last_update_time)
    assert tags["mlflow_exim.field.digest"] == source.digest
    assert json.loads(tags["mlflow_exim.field.experiment_ids"]) == sorted([e1, e2])
    assert tags["mlflow_exim.mlflow_tag.user"] == source.tags["mlflow.user"]
    assert tags["mlflow_exim.mlflow_tag.custom.note"] == "kept"
    assert "mlflow_exim.field.tags" not in tags
    for key, value in ORIGIN.tags().items():
        assert tags[key] == value
    assert tags[SOURCE_DATASET_TAG] == dataset_id
    for key, value in source.tags.items():
        assert tags[key] == value

    (empty_copy,) = target_copies(dst, empty.dataset_id)
    assert "mlflow_exim.field.schema" not in empty_copy.tags
    assert "mlflow_exim.field.profile" not in empty_copy.tags
    assert empty_copy.tags["kind"] == "empty"
    assert store(dst)._load_dataset_records(empty_copy.dataset_id, max_results=None)[0] == []

    again = write_eval_datasets(unpack_scope(dst, mapping, origin=ORIGIN), rows)
    assert again["datasets_created"] == 0 and again["datasets_skipped"] == 2
    assert again["records"] == 0


def test_file_store_has_no_datasets(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file store cannot hold datasets: pack notes it and packs none; unpack of an archive
    that has some refuses in one line."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    scope = pack_scope(uri, ["0"])
    assert all(items == [] for items in read_eval_datasets(scope).values())
    assert scope.notes == [
        "evaluation datasets: none packed: its store has no evaluation datasets "
        "(they need a SQL database backend)"
    ]
    rows: Rows = {"evaluation_datasets": [{"dataset_id": "d-1", "name": "x"}]}
    with pytest.raises(TargetError, match="cannot store them"):
        write_eval_datasets(unpack_scope(uri, {}, origin=None), rows)


def test_unpack_nothing_makes_no_call() -> None:
    """An archive without datasets (every 1.0 archive) never asks the target about them."""
    scope = unpack_scope("http://127.0.0.1:9", {}, origin=None)
    empty: Rows = {}
    assert write_eval_datasets(scope, empty)["datasets_created"] == 0


class _Page(list[Any]):
    token = None


class _FlakyStore:
    """A store whose first create lands but loses its reply (a dropped connection)."""

    def __init__(self) -> None:
        self.datasets: list[Any] = []
        self.creates = 0
        self.upserts: list[list[dict[str, Any]]] = []

    def create_dataset(self, name: str, tags: dict[str, str], experiment_ids: list[str]) -> Any:
        from types import SimpleNamespace

        self.creates += 1
        self.datasets.append(SimpleNamespace(dataset_id=f"d-new{self.creates}", tags=tags))
        if self.creates == 1:
            raise ConnectionError("Connection reset by peer")
        return self.datasets[-1]

    def upsert_dataset_records(self, dataset_id: str, records: list[dict[str, Any]]) -> None:
        self.upserts.append(records)


class _FakeClient:
    def __init__(self) -> None:
        from types import SimpleNamespace

        self.store = _FlakyStore()
        self._tracking_client = SimpleNamespace(store=self.store)

    def search_datasets(self, **kwargs: Any) -> _Page:
        return _Page(self.store.datasets)


def test_create_whose_reply_was_lost_is_not_repeated() -> None:
    client = _FakeClient()
    scope = UnpackScope(
        client=client,
        call=Caller(TargetError, "fake", "hint", attempts=3, backoff=0),
        tracking_uri="fake",
        experiments={"1": "7"},
        runs={},
    )
    rows: Rows = {
        "evaluation_datasets": [{"dataset_id": "d-src", "name": "qa", "source_json": "{}"}],
        "evaluation_dataset_experiments": [{"dataset_id": "d-src", "experiment_id": "1"}],
        "evaluation_dataset_records": [
            {"dataset_id": "d-src", "record_id": "dr-1", "inputs": '{"q":1}', "outputs": None}
        ],
    }
    counts = write_eval_datasets(scope, rows)
    assert client.store.creates == 1 and counts["datasets_created"] == 1
    assert client.store.upserts == [[{"inputs": {"q": 1}, "outputs": None}]]
    assert scope.call.retries == 1
