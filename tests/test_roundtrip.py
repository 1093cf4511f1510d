"""Round trips through real stores: every row of the fidelity table, lineage tags key by key,
repeated and interrupted unpacks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import MlflowServer, NewStore
from mlflow import MlflowClient
from mlflow.entities import Metric, ViewType
from workload import T0, as_sql_keeps, count_runs, seed_rich, snapshot

from exim_archive import tables as T
from exim_archive.bundle_reader import ArchiveReader
from exim_archive.cli import main
from exim_archive.errors import SourceError, TargetError
from exim_archive.lineage import INCOMPLETE_TAG, SOURCE_RUN_TAG
from exim_archive.pack import pack
from exim_archive.sink import MlflowSink
from exim_archive.unpack import unpack


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _experiment_args(names: list[str]) -> list[str]:
    return [arg for name in names for arg in ("--experiment", name)]


@pytest.mark.server
def test_server_to_server_keeps_every_field(
    source_server: MlflowServer,
    target_server: MlflowServer,
    unique: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = seed_rich(source_server.url, unique)
    archive = tmp_path / "a.exim"
    code, out, err = _cli(
        capsys, "pack", str(archive), "--tracking-uri", source_server.url, *_experiment_args(names)
    )
    assert code == 0, err
    assert out.startswith("sha256:")
    code, out, err = _cli(
        capsys, "unpack", str(archive), "--tracking-uri", target_server.url, "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["runs_created"] == 5
    assert snapshot(target_server.url, names) == snapshot(source_server.url, names)

    # The id map covers every source run and points at real target runs.
    src = MlflowClient(source_server.url)
    dst = MlflowClient(target_server.url)
    for old, new in report["id_map"]["runs"].items():
        assert dst.get_run(new).data.tags[SOURCE_RUN_TAG] == old
        assert src.get_run(old).info.run_name == dst.get_run(new).info.run_name
    # Artifact URIs are the target's own, proxied through the server.
    some = next(iter(report["id_map"]["runs"].values()))
    assert dst.get_run(some).info.artifact_uri.startswith("mlflow-artifacts:/")


@pytest.mark.server
def test_nested_run_points_at_the_imported_parent(
    source_server: MlflowServer, target_server: MlflowServer, unique: str, tmp_path: Path
) -> None:
    names = seed_rich(source_server.url, unique)
    pack(tmp_path / "a.exim", tracking_uri=source_server.url, experiments=names[:1])
    report = unpack(tmp_path / "a.exim", tracking_uri=target_server.url)
    dst = MlflowClient(target_server.url)
    exp = dst.get_experiment_by_name(names[0])
    runs = {r.info.run_name: r for r in dst.search_runs([exp.experiment_id])}
    assert runs["child ✓ 子"].data.tags["mlflow.parentRunId"] == runs["parent"].info.run_id
    assert set(report.id_map["runs"].values()) >= {runs["parent"].info.run_id}


def test_sqlite_round_trip_with_source_tags(tmp_path: Path, new_sqlite: NewStore) -> None:
    src, dst = new_sqlite("src"), new_sqlite("dst")
    names = seed_rich(src, "s", tmp_path / "src-art")
    archive = tmp_path / "a.exim"
    packed = pack(archive, tracking_uri=src)
    report = unpack(archive, tracking_uri=dst, import_source_tags=True)
    assert snapshot(dst, names) == snapshot(src, names)

    source, target = MlflowClient(src), MlflowClient(dst)
    for old_id, new_id in report.id_map["runs"].items():
        old, new = source.get_run(old_id), target.get_run(new_id)
        tags = new.data.tags
        info = old.info
        expected = {
            "run_id": info.run_id,
            "run_uuid": info.run_id,
            "experiment_id": info.experiment_id,
            "run_name": info.run_name,
            "user_id": info.user_id,
            "status": info.status,
            "start_time": str(info.start_time),
            "end_time": None if info.end_time is None else str(info.end_time),
            "lifecycle_stage": info.lifecycle_stage,
            "artifact_uri": info.artifact_uri,
        }
        for field, value in expected.items():
            assert tags.get(f"mlflow_exim.run_info.{field}") == value, field
        for key, value in old.data.tags.items():
            if key.startswith("mlflow."):
                assert tags[f"mlflow_exim.mlflow_tag.{key[len('mlflow.') :]}"] == value
        assert not any(v == "None" for k, v in tags.items() if k.startswith("mlflow_exim."))
        assert tags["mlflow_exim.archive.digest"] == packed.digest
        assert tags["mlflow_exim.archive.source_tracking_uri"] == src
        assert INCOMPLETE_TAG not in tags
    for old_exp, new_exp in report.id_map["experiments"].items():
        old_e, new_e = source.get_experiment(old_exp), target.get_experiment(new_exp)
        tags = new_e.tags
        assert tags["mlflow_exim.field.experiment_id"] == old_e.experiment_id
        assert tags["mlflow_exim.field.creation_time"] == str(old_e.creation_time)
        assert tags["mlflow_exim.field.last_update_time"] == str(old_e.last_update_time)
        assert tags["mlflow_exim.field.artifact_location"] == old_e.artifact_location
        assert tags["mlflow_exim.field.lifecycle_stage"] == old_e.lifecycle_stage
        for key, value in old_e.tags.items():
            if key.startswith("mlflow."):
                assert tags[f"mlflow_exim.mlflow_tag.{key[len('mlflow.') :]}"] == value


@pytest.mark.parametrize("lineage_c", [False, True])
def test_archive_of_an_unpacked_store_unpacks_again(
    tmp_path: Path, new_sqlite: NewStore, lineage_c: bool
) -> None:
    """A -> B -> C: B's runs carry the first unpack's mlflow_exim.* tags into the second
    archive. C's bookkeeping names B's runs; C's lineage (if on) names B, else B's tags naming A
    are kept as they are; the proof passes, and a second unpack into C creates nothing."""
    a, b, c = new_sqlite("a"), new_sqlite("b"), new_sqlite("c")
    names = seed_rich(a, "chain", tmp_path / "art")
    pack(tmp_path / "ab.exim", tracking_uri=a)
    first = unpack(tmp_path / "ab.exim", tracking_uri=b, import_source_tags=True)
    second_pack = pack(tmp_path / "bc.exim", tracking_uri=b)
    second = unpack(tmp_path / "bc.exim", tracking_uri=c, import_source_tags=lineage_c)
    assert snapshot(c, names) == snapshot(a, names)
    assert second.runs_created == first.runs_created > 0
    b_of_a = first.id_map["runs"]
    digest_ab = dict(MlflowClient(b).get_run(next(iter(b_of_a.values()))).data.tags)[
        "mlflow_exim.archive.digest"
    ]
    target = MlflowClient(c)
    for a_id, b_id in b_of_a.items():
        tags = target.get_run(second.id_map["runs"][b_id]).data.tags
        assert tags[SOURCE_RUN_TAG] == b_id and INCOMPLETE_TAG not in tags
        hop = b_id if lineage_c else a_id
        assert tags["mlflow_exim.run_info.run_id"] == hop
        digest = second_pack.digest if lineage_c else digest_ab
        assert tags["mlflow_exim.archive.digest"] == digest
    code = main(["verify", str(tmp_path / "bc.exim"), "--against", c])
    assert code == 0
    again = unpack(tmp_path / "bc.exim", tracking_uri=c, import_source_tags=lineage_c)
    assert again.runs_created == 0 and again.runs_already_complete == second.runs_created


def test_pack_says_when_runs_are_unfinished_or_still_running(
    tmp_path: Path, new_sqlite: NewStore
) -> None:
    src = new_sqlite("src")
    c = MlflowClient(src)
    exp = c.create_experiment("half", artifact_location=(tmp_path / "art").as_uri())
    done = c.create_run(exp, start_time=T0).info.run_id
    c.set_terminated(done)
    half = c.create_run(exp, start_time=T0, tags={INCOMPLETE_TAG: "true"}).info.run_id
    report = pack(tmp_path / "a.exim", tracking_uri=src)
    said = [w for w in report.warnings if INCOMPLETE_TAG in w]
    assert len(said) == 1 and said[0].startswith(f"1 run(s) (first: {half}) carry "), said
    assert done not in said[0] and report.counts["runs"] == 2
    running = [w for w in report.warnings if "RUNNING" in w]
    assert len(running) == 1 and running[0].startswith(f"1 run(s) (first: {half}) are RUNNING")


def test_an_archive_back_to_its_source_duplicates_nothing(
    tmp_path: Path, new_sqlite: NewStore
) -> None:
    """A -> B -> A: B's copies name A's runs in their bookkeeping tag; unpacked into A again,
    they stand for those runs (left as they are) instead of becoming second copies."""
    a, b = new_sqlite("a"), new_sqlite("b")
    names = seed_rich(a, "home", tmp_path / "art")
    before = snapshot(a, names)
    runs_before = count_runs(a)
    pack(tmp_path / "ab.exim", tracking_uri=a)
    there = unpack(tmp_path / "ab.exim", tracking_uri=b, import_source_tags=True)
    pack(tmp_path / "ba.exim", tracking_uri=b)
    back = unpack(tmp_path / "ba.exim", tracking_uri=a, import_source_tags=True)
    assert back.runs_created == 0 and back.runs_already_complete == there.runs_created
    assert count_runs(a) == runs_before and snapshot(a, names) == before
    assert back.id_map["runs"] == {b_id: a_id for a_id, b_id in there.id_map["runs"].items()}
    assert any("no unpack made" in n for n in back.notes), back.notes
    assert main(["verify", str(tmp_path / "ba.exim"), "--against", a]) == 0


@pytest.mark.parametrize(("lineage", "over_http"), [(False, False), (True, False), (False, True)])
def test_a_newer_pack_updates_copies_an_older_one_leaves_them(
    tmp_path: Path,
    new_sqlite: NewStore,
    lineage: bool,
    over_http: bool,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    unique: str,
) -> None:
    """Incremental sync: a run still RUNNING when first packed gains points (at a step already
    logged, so only their count shows it), a param, a changed tag, a file and its end; the
    next pack's unpack brings its copy up to date and leaves the unchanged run alone. The older
    archive unpacked afterwards changes nothing and its proof passes."""
    src = new_sqlite("src")
    dst = request.getfixturevalue("target_server").url if over_http else new_sqlite("dst")
    name = f"{unique} sync"
    c = MlflowClient(src)
    exp = c.create_experiment(name, artifact_location=(tmp_path / "art").as_uri())
    live = c.create_run(exp, start_time=T0, tags={"phase": "1"}).info.run_id
    c.log_batch(live, metrics=[Metric("m", float(i), T0 + i, i) for i in range(10)])
    c.log_param(live, "p1", "a")
    done = c.create_run(exp, start_time=T0).info.run_id
    c.log_batch(done, metrics=[Metric("m", 1.0, T0, 0)])
    c.set_terminated(done, end_time=T0 + 5)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1800000000")  # pack times a second apart at least
    old = pack(tmp_path / "a1.exim", tracking_uri=src)
    first = unpack(tmp_path / "a1.exim", tracking_uri=dst, import_source_tags=lineage)
    assert first.runs_created == 2

    c.log_batch(live, metrics=[Metric("m", float(i), T0 + 100 + i, 9) for i in range(5)])
    c.log_param(live, "p2", "b")
    c.set_tag(live, "phase", "2")
    c.log_text(live, "late", "notes/late.txt")
    c.set_terminated(live, "FAILED", end_time=T0 + 50)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1800000060")
    new = pack(tmp_path / "a2.exim", tracking_uri=src)
    assert new.digest != old.digest
    second = unpack(tmp_path / "a2.exim", tracking_uri=dst, import_source_tags=lineage)
    assert (second.runs_updated, second.runs_already_complete, second.runs_created) == (1, 1, 0)
    assert second.metric_points == 15 and second.artifacts == 1
    assert snapshot(dst, [name]) == snapshot(src, [name])
    copy = MlflowClient(dst).get_run(second.id_map["runs"][live])
    assert copy.info.status == "FAILED" and copy.info.end_time == T0 + 50
    assert INCOMPLETE_TAG not in copy.data.tags
    if lineage:
        assert copy.data.tags["mlflow_exim.archive.digest"] == new.digest.split(":")[-1]

    again = unpack(tmp_path / "a2.exim", tracking_uri=dst, import_source_tags=lineage)
    assert (again.runs_updated, again.runs_already_complete) == (0, 2)
    older = unpack(tmp_path / "a1.exim", tracking_uri=dst, import_source_tags=lineage)
    assert (older.runs_updated, older.runs_already_complete) == (0, 2)
    assert any("made from a newer archive" in n and live in n for n in older.notes), older.notes
    assert snapshot(dst, [name]) == snapshot(src, [name])


@pytest.mark.parametrize("source_tags", [False, True])
def test_repeated_unpack_creates_nothing_twice(
    tmp_path: Path, new_sqlite: NewStore, source_tags: bool
) -> None:
    src, dst = new_sqlite("src"), new_sqlite("dst")
    names = seed_rich(src, "r", tmp_path / "src-art")
    pack(tmp_path / "a.exim", tracking_uri=src)
    first = unpack(tmp_path / "a.exim", tracking_uri=dst, import_source_tags=source_tags)
    before = snapshot(dst, names)
    again = unpack(tmp_path / "a.exim", tracking_uri=dst, import_source_tags=source_tags)
    assert again.runs_created == 0 and again.runs_resumed == 0
    assert again.runs_already_complete == first.runs_created
    assert again.id_map == first.id_map
    assert snapshot(dst, names) == before == snapshot(src, names)
    assert count_runs(dst) == count_runs(src)


class _Crash(Exception):
    pass


def test_interrupted_unpack_resumes_without_duplicates(
    tmp_path: Path, new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = new_sqlite("src"), new_sqlite("dst")
    names = seed_rich(src, "i", tmp_path / "src-art")
    pack(tmp_path / "a.exim", tracking_uri=src)

    real = MlflowSink.log_inputs
    calls = {"n": 0}

    def failing(self: MlflowSink, run_id: str, inputs: object) -> None:
        # after the run's params (and its first points, or all of them through MLflow's API),
        # before its files and its end (with its last points, through direct SQL)
        calls["n"] += 1
        if calls["n"] == 2:
            raise TargetError("simulated crash in the middle of a run")
        real(self, run_id, inputs)  # type: ignore[arg-type]

    monkeypatch.setattr(MlflowSink, "log_inputs", failing)
    with pytest.raises(TargetError):
        unpack(tmp_path / "a.exim", tracking_uri=dst, workers=1)
    monkeypatch.setattr(MlflowSink, "log_inputs", real)

    client = MlflowClient(dst)
    half = [
        r
        for e in client.search_experiments(view_type=ViewType.ALL)
        for r in client.search_runs([e.experiment_id], run_view_type=ViewType.ALL)
    ]
    assert any(INCOMPLETE_TAG in r.data.tags for r in half), "the crash left no half-written run"

    report = unpack(tmp_path / "a.exim", tracking_uri=dst)
    assert report.runs_resumed >= 1
    assert snapshot(dst, names) == snapshot(src, names)
    assert count_runs(dst) == count_runs(src)


def test_start_and_end_times_status_and_user_survive(tmp_path: Path, new_sqlite: NewStore) -> None:
    src, dst = new_sqlite("src"), new_sqlite("dst")
    names = seed_rich(src, "t", tmp_path / "src-art")
    pack(tmp_path / "a.exim", tracking_uri=src)
    unpack(tmp_path / "a.exim", tracking_uri=dst)
    runs = snapshot(dst, names, with_artifacts=False)[names[0]]["runs"]
    assert runs["parent"]["start_time"] == T0 and runs["parent"]["end_time"] == T0 + 10_000
    assert runs["child ✓ 子"]["status"] == "FAILED" and runs["child ✓ 子"]["user_id"] == "bob"
    assert runs["still running"]["status"] == "RUNNING"
    assert runs["still running"]["end_time"] is None
    assert runs["killed and deleted"]["lifecycle"] == "deleted"
    assert runs["killed and deleted"]["status"] == "KILLED"
    exps = snapshot(dst, names, with_artifacts=False)
    assert exps[names[2]]["lifecycle"] == "deleted"
    assert exps[names[1]]["runs"] == {}


def test_clash_with_a_deleted_target_experiment_is_refused_before_writing(
    tmp_path: Path, new_sqlite: NewStore
) -> None:
    src, dst = new_sqlite("src"), new_sqlite("dst")
    names = seed_rich(src, "c", tmp_path / "src-art")
    pack(tmp_path / "a.exim", tracking_uri=src, experiments=[names[0]])
    target = MlflowClient(dst)
    target.delete_experiment(target.create_experiment(names[0]))
    with pytest.raises(TargetError, match="deleted there"):
        unpack(tmp_path / "a.exim", tracking_uri=dst)
    assert count_runs(dst) == 0


def test_file_store_to_sqlite(
    tmp_path: Path, new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    src = (tmp_path / "mlruns-src").as_uri()
    names = seed_rich(src, "fs", tmp_path / "src-art")
    dst = new_sqlite("dst")
    pack(tmp_path / "a.exim", tracking_uri=src)
    with ArchiveReader(tmp_path / "a.exim") as reader:
        values = {v for b in reader.iter_metric_batches() for v in b.column("value").to_pylist()}
    assert {math.inf, -math.inf} <= values, "the archive must keep the file store's inf exactly"
    unpack(tmp_path / "a.exim", tracking_uri=dst)
    assert snapshot(dst, names) == as_sql_keeps(snapshot(src, names))


@pytest.mark.parametrize("batch_rows", [None, 1])
def test_a_parent_outside_the_archive_is_noted_and_kept(
    tmp_path: Path, new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch, batch_rows: int | None
) -> None:
    """A run whose parent is in another experiment, packed without it: one note, and its
    mlflow.parentRunId keeps the source id; a parent inside the archive is remapped and an empty
    parent tag names no run (no note). The same with the run tables read a row at a time."""
    from exim_archive import bundle_reader

    if batch_rows is not None:
        monkeypatch.setattr(bundle_reader, "BATCH_ROWS", batch_rows)
    src, dst = new_sqlite("src"), new_sqlite("dst")
    c = MlflowClient(src)
    other = c.create_experiment("elsewhere", artifact_location=(tmp_path / "a1").as_uri())
    here = c.create_experiment("here", artifact_location=(tmp_path / "a2").as_uri())
    outside = c.create_run(other).info.run_id
    inner = c.create_run(here).info.run_id
    orphan = c.create_run(here, tags={"mlflow.parentRunId": outside}).info.run_id
    child = c.create_run(here, tags={"mlflow.parentRunId": inner}).info.run_id
    c.create_run(here, tags={"mlflow.parentRunId": ""})
    pack(tmp_path / "a.exim", tracking_uri=src, experiments=["here"])
    report = unpack(tmp_path / "a.exim", tracking_uri=dst)
    noted = [n for n in report.notes if "is not in the archive" in n]
    assert noted == [
        f"run {orphan}: parent run {outside} is not in the archive; "
        "mlflow.parentRunId keeps the source id until an unpack brings that run"
    ]
    ids = report.id_map["runs"]
    target = MlflowClient(dst)
    tags = target.get_run(ids[orphan]).data.tags
    assert tags["mlflow.parentRunId"] == outside
    assert tags["mlflow_exim.unpack.pending_parent"] == outside
    assert target.get_run(ids[child]).data.tags["mlflow.parentRunId"] == ids[inner]


def test_runs_a_few_at_a_time_give_the_same_target(
    tmp_path: Path, new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pack reads run records, its writer holds runs, and unpack streams the archive's runs
    (plan, create, fill, proof), two at a time, every table written in row groups of three rows
    (so a chunk's rows of each run table span row groups): the target is the source's, and a
    second unpack finds every run complete."""
    import sys

    from exim_archive import bundle_reader, bundle_writer

    monkeypatch.setattr(sys.modules["exim_archive.pack"], "RUNS_AT_A_TIME", 2)
    monkeypatch.setattr(bundle_writer, "RUNS_HELD", 2)
    monkeypatch.setattr(bundle_writer, "ROW_GROUP_ROWS", 3)
    monkeypatch.setattr(bundle_reader, "RUNS_AT_A_TIME", 2)
    src, dst = new_sqlite("src"), new_sqlite("dst")
    names = seed_rich(src, "chunks", tmp_path / "art")
    archive = tmp_path / "a.exim"
    pack(archive, tracking_uri=src)
    with ArchiveReader(archive) as reader:
        tags = reader.parquet_file(T.RUN_TAGS, reader.table_members("run_tags")[0])
        assert tags.num_row_groups > 5  # more row groups than runs
    report = unpack(archive, tracking_uri=dst)
    assert report.runs_created == report.runs_checked == 5
    assert snapshot(dst, names) == snapshot(src, names)
    again = unpack(archive, tracking_uri=dst)
    assert again.runs_already_complete == 5 and again.runs_created == 0


@pytest.mark.parametrize(
    ("chunk", "sql"),
    [(1000, True), (2, True), (2, False)],
    ids=["one-chunk", "chunks-of-2-sql", "chunks-of-2-mlflow"],
)
def test_verify_against_finds_what_the_target_lost(
    tmp_path: Path,
    new_sqlite: NewStore,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    chunk: int,
    sql: bool,
) -> None:
    """Also with the archive's runs checked two at a time (bundle_reader.RUNS_AT_A_TIME: the
    target's runs read by id, a chunk at a time), by plain SQL and through MLflow's store."""
    import sqlite3

    from exim_archive import bundle_reader

    monkeypatch.setattr(bundle_reader, "RUNS_AT_A_TIME", chunk)
    if not sql:
        monkeypatch.setenv("EXIM_NO_SQL_FAST_PATH", "1")
    src, dst = new_sqlite("src"), new_sqlite("dst")
    seed_rich(src, "v", tmp_path / "art")
    archive = str(tmp_path / "a.exim")
    pack(archive, tracking_uri=src)
    assert unpack(archive, tracking_uri=dst).runs_checked == 5
    assert main(["verify", archive, "--against", dst]) == 0
    assert "holds all of it (5 runs checked)" in capsys.readouterr().out
    with sqlite3.connect(tmp_path / "dst.db") as con:
        con.execute("delete from metrics where key = 'loss' and step < 3")
        con.execute("delete from params where key = 'p007'")
    # the target's files sit in ./mlruns (the store's default root), walked directly
    [lost] = (tmp_path / "mlruns").rglob("random.bin")
    lost.unlink()
    [cut] = (tmp_path / "mlruns").rglob("model.txt")
    cut.write_text("shorter")
    assert main(["verify", archive, "--against", dst]) == 3
    out = capsys.readouterr().out
    assert "metric 'loss' has 297 points in the target, 300 here" in out
    assert "param 'p007' is missing or differs" in out
    assert "artifact 'random.bin' is missing or has another size" in out
    assert "artifact 'deep/er/est/model.txt' is missing or has another size" in out
    # a second copy of a run (its bookkeeping tag on another target run): named, with the count
    target = MlflowClient(dst)
    some = target.search_runs(
        [e.experiment_id for e in target.search_experiments()], max_results=1
    )[0]
    twin = target.create_run(some.info.experiment_id).info.run_id
    target.set_tag(twin, SOURCE_RUN_TAG, some.data.tags[SOURCE_RUN_TAG])
    assert main(["verify", archive, "--against", dst]) == 3
    assert f"run {some.data.tags[SOURCE_RUN_TAG]}: 2 copies in the target" in (
        capsys.readouterr().out
    )


@pytest.mark.server
def test_database_uri_of_a_proxying_server_says_how_to_pack_it(
    source_server: MlflowServer, unique: str, tmp_path: Path
) -> None:
    """The server's own database, read directly: its runs' files are behind the server
    (mlflow-artifacts:/), so pack says to go through the server or leave files out."""
    client = MlflowClient(source_server.url)
    exp = client.create_experiment(f"{unique}-proxied")
    run = client.create_run(exp).info.run_id
    (tmp_path / "f.txt").write_text("x")
    client.log_artifact(run, str(tmp_path / "f.txt"))
    db = f"sqlite:///{source_server.db}"
    with pytest.raises(SourceError, match="behind a tracking server") as err:
        pack(tmp_path / "a.exim", tracking_uri=db, experiments=[f"{unique}-proxied"])
    assert "--no-artifacts" in str(err.value)
    report = pack(
        tmp_path / "a.exim", tracking_uri=db, experiments=[f"{unique}-proxied"], artifacts=False
    )
    assert report.counts["runs"] == 1


def test_log_batch_body_is_what_mlflow_client_sends() -> None:
    """Metric points over HTTP go as a request body built from the columns: the same JSON
    (after parsing) as MLflow's client makes from Metric objects, NaN and infinities included."""
    import pyarrow as pa
    from mlflow.entities import Metric
    from mlflow.protos.service_pb2 import LogBatch
    from mlflow.utils.proto_json_utils import message_to_json

    from exim_archive.log_batch import log_batch_body

    rows = [
        ("a", 0, T0, 0.1),
        ("a", 1, T0 + 1, float("nan")),
        ("ü", -5, 2**62, float("inf")),
        ("b", 2**40, 0, float("-inf")),
        ("b", 3, T0, -0.0),
        ("b", 4, T0, 1.7976931348623157e308),
    ]
    keys, steps, stamps, values = (list(c) for c in zip(*rows, strict=True))
    table = pa.table({"key": keys, "step": steps, "timestamp": stamps, "value": values})
    mine = json.loads(json.dumps(log_batch_body("r" * 32, table)))
    metrics = [Metric(k, v, t, s).to_proto() for k, s, t, v in rows]
    theirs = json.loads(message_to_json(LogBatch(run_id="r" * 32, metrics=metrics)))
    assert repr(mine) == repr(theirs)
    assert log_batch_body("r", table.slice(0, 1))["metrics"] == [
        {"key": "a", "value": 0.1, "timestamp": T0, "step": 0}
    ]
