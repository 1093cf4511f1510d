"""Parent links across archives (spec/1.0/unpack.md §7): a child packed with ``--experiment``
apart from its parent, in another experiment, names the parent's copy whichever archive is
unpacked first; a parent no archive brings stays the source id, with the pending tag."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import MlflowServer, NewStore
from mlflow import MlflowClient

from exim_archive.artifact_roots import ArtifactRoots
from exim_archive.lineage import PENDING_PARENT_TAG, SOURCE_RUN_TAG
from exim_archive.pack import pack
from exim_archive.proof import check_against
from exim_archive.sink import open_sink
from exim_archive.sql_metrics import DISABLE_ENV
from exim_archive.unpack import unpack

PARENT = "mlflow.parentRunId"
NOWHERE = "0" * 32
"""A parent id no archive holds."""


def _source(tmp_path: Path, uri: str) -> dict[str, str]:
    """Experiment "parents" (two runs) and "children": a child of each parent (the second child
    deleted), a child of a run that exists nowhere, and a parent tag that is no run id."""
    c = MlflowClient(uri)
    parents = c.create_experiment("parents", artifact_location=(tmp_path / "p").as_uri())
    children = c.create_experiment("children", artifact_location=(tmp_path / "c").as_uri())
    ids = {
        "p1": c.create_run(parents, run_name="p1").info.run_id,
        "p2": c.create_run(parents, run_name="p2").info.run_id,
    }
    for name, parent in (("c1", ids["p1"]), ("c2", ids["p2"]), ("c3", NOWHERE), ("c4", "x y")):
        run = c.create_run(children, run_name=name, tags={PARENT: parent})
        c.set_terminated(run.info.run_id)
        ids[name] = run.info.run_id
    c.delete_run(ids["c2"])
    parents = pack(tmp_path / "parents.exim", tracking_uri=uri, experiments=["parents"])
    children = pack(tmp_path / "children.exim", tracking_uri=uri, experiments=["children"])
    assert not [w for w in parents.warnings if "parent run" in w]
    assert [w for w in children.warnings if "parent run" in w] == [
        f"4 run(s) (first: {min(ids[c] for c in ('c1', 'c2', 'c3', 'c4'))}) have a parent run "
        "that is not in this archive (in an experiment not selected, or gone): unpack links "
        "them to it once the archive holding it is unpacked into the same target, in either order"
    ]
    return ids


def _copies(uri: str) -> dict[str, tuple[str, dict[str, str], str]]:
    """Source run id -> (copy id, its tags, its lifecycle stage), over the whole target."""
    c = MlflowClient(uri)
    exps = [e.experiment_id for e in c.search_experiments(view_type=3)]
    runs = c.search_runs(exps, run_view_type=3, max_results=1000)
    return {
        r.data.tags[SOURCE_RUN_TAG]: (r.info.run_id, r.data.tags, r.info.lifecycle_stage)
        for r in runs
    }


def _assert_linked(uri: str, ids: dict[str, str]) -> None:
    copies = _copies(uri)
    for child, parent in (("c1", "p1"), ("c2", "p2")):
        _, tags, _ = copies[ids[child]]
        assert tags[PARENT] == copies[ids[parent]][0], f"{child} names its parent's copy"
        assert PENDING_PARENT_TAG not in tags
    assert copies[ids["c2"]][2] == "deleted", "a deleted child stays deleted"
    _, tags, _ = copies[ids["c3"]]
    assert (tags[PARENT], tags[PENDING_PARENT_TAG]) == (NOWHERE, NOWHERE)
    _, tags, _ = copies[ids["c4"]]
    assert tags[PARENT] == "x y" and PENDING_PARENT_TAG not in tags, "no run id: nothing to wait"


@pytest.mark.parametrize("direct", [True, False], ids=["direct-sql", "mlflow-store"])
@pytest.mark.parametrize(
    "order",
    [("parents", "children"), ("children", "parents"), ("children", "parents", "children")],
)
def test_a_child_names_its_parents_copy_in_any_order(
    tmp_path: Path,
    new_sqlite: NewStore,
    monkeypatch: pytest.MonkeyPatch,
    order: tuple[str, ...],
    direct: bool,
) -> None:
    ids = _source(tmp_path, new_sqlite("src"))
    if not direct:
        monkeypatch.setenv(DISABLE_ENV, "1")
    dst = new_sqlite("dst")
    reports = [unpack(tmp_path / f"{name}.exim", tracking_uri=dst) for name in order]
    _assert_linked(dst, ids)
    for name in ("parents", "children"):
        assert check_against(tmp_path / f"{name}.exim", tracking_uri=dst).problems == []
    notes = [n for r in reports for n in r.notes]
    if order[0] == "children":
        assert (
            f"run {ids['c1']}: parent run {ids['p1']} is not in the archive; "
            f"{PARENT} keeps the source id until an unpack brings that run"
        ) in notes
        linked = [n for n in reports[1].notes if "unpacked before their parent" in n]
        assert linked and linked[0].startswith("2 run(s)")
    else:
        copy = _copies(dst)[ids["p1"]][0]
        assert (
            f"run {ids['c1']}: parent run {ids['p1']} is not in the archive; "
            f"{PARENT} names its copy {copy}, made by an earlier unpack"
        ) in notes


def test_over_http_children_first(
    tmp_path: Path, new_sqlite: NewStore, fresh_server: MlflowServer
) -> None:
    """Through a server: search by tag over every experiment, and the deleted child restored
    for the link and deleted again."""
    ids = _source(tmp_path, new_sqlite("src"))
    unpack(tmp_path / "children.exim", tracking_uri=fresh_server.url)
    before = _copies(fresh_server.url)
    assert before[ids["c1"]][1][PENDING_PARENT_TAG] == ids["p1"]
    report = unpack(tmp_path / "parents.exim", tracking_uri=fresh_server.url)
    assert any(n.startswith("2 run(s) unpacked before their parent") for n in report.notes)
    _assert_linked(fresh_server.url, ids)
    report = unpack(tmp_path / "children.exim", tracking_uri=fresh_server.url)
    assert report.runs_already_complete == 4 and report.runs_created == 0
    _assert_linked(fresh_server.url, ids)


def test_a_copy_written_before_pending_tags_is_linked_by_its_own_archive(
    tmp_path: Path, new_sqlite: NewStore
) -> None:
    """A child copy that names the source parent without the pending tag (as unpack wrote it
    before there was one) fails the proof once the parent's copy is there, and unpacking its
    archive again links it."""
    ids = _source(tmp_path, new_sqlite("src"))
    dst = new_sqlite("dst")
    unpack(tmp_path / "children.exim", tracking_uri=dst)
    c = MlflowClient(dst)
    c1 = _copies(dst)[ids["c1"]][0]
    c.delete_tag(c1, PENDING_PARENT_TAG)
    unpack(tmp_path / "parents.exim", tracking_uri=dst)
    assert c.get_run(c1).data.tags[PARENT] == ids["p1"], "nothing marked it as waiting"
    problems = check_against(tmp_path / "children.exim", tracking_uri=dst).problems
    assert problems == [f"run {ids['c1']} (c1): tag {PARENT!r} is missing or differs"]
    unpack(tmp_path / "children.exim", tracking_uri=dst)
    _assert_linked(dst, ids)


@pytest.mark.parametrize("database", ["postgres_uri", "mysql_uri"])
def test_links_in_postgresql_and_mariadb(
    tmp_path: Path, new_sqlite: NewStore, request: pytest.FixtureRequest, database: str
) -> None:
    """The same on the databases servers use: after the first unpack has set the database up,
    the lookups and the links are plain SQL (the deleted child written without a restore)."""
    ids = _source(tmp_path, new_sqlite("src"))
    dst = request.getfixturevalue(database)
    unpack(tmp_path / "children.exim", tracking_uri=dst)
    sink = open_sink(dst, ArtifactRoots())
    assert sink.direct is not None, "set up by the first unpack: plain SQL from here on"
    sink.close()
    for name in ("parents", "children"):
        unpack(tmp_path / f"{name}.exim", tracking_uri=dst)
    _assert_linked(dst, ids)
    assert check_against(tmp_path / "children.exim", tracking_uri=dst).problems == []
