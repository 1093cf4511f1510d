"""--artifacts-destination: a database URI whose server serves its artifacts (mlflow-artifacts:/
URIs) is packed from and unpacked into directly, the files read from and written to the server's
own --artifacts-destination folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import MlflowServer
from mlflow import MlflowClient
from workload import seed_rich

from exim_archive import SourceError, pack, unpack
from exim_archive.bundle_reader import ArchiveReader
from exim_archive.proof import check_against


def _artifact_rows(archive: Path) -> list[tuple[str, str, int, str]]:
    reader = ArchiveReader(archive)
    try:
        return sorted((a.run_id, a.path, a.size, a.sha256) for a in reader.iter_artifacts())
    finally:
        reader.close()


def test_pack_reads_served_artifacts_from_the_destination(
    tmp_path: Path, source_server: MlflowServer, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server's database packed directly: its mlflow-artifacts:/ files are read from the
    server's --artifacts-destination folder, the same files the server itself hands out."""
    names = seed_rich(source_server.url, unique)
    db = f"sqlite:///{source_server.db}"
    over_http = pack(tmp_path / "http.exim", tracking_uri=source_server.url, experiments=names)
    with pytest.raises(SourceError) as err:
        pack(tmp_path / "db.exim", tracking_uri=db, experiments=names)
    assert "--artifacts-destination" in str(err.value)
    direct = pack(
        tmp_path / "db.exim",
        tracking_uri=db,
        experiments=names,
        artifacts_destination=str(source_server.artifacts),
    )
    assert direct.counts == over_http.counts and direct.counts["artifacts"] == 4
    assert _artifact_rows(tmp_path / "db.exim") == _artifact_rows(tmp_path / "http.exim")
    # the same through MLflow's store (the SQL path turned off), given as a file: URI
    monkeypatch.setenv("EXIM_NO_SQL_FAST_PATH", "1")
    again = pack(
        tmp_path / "db2.exim",
        tracking_uri=db,
        experiments=names,
        artifacts_destination=source_server.artifacts.as_uri(),
    )
    assert again.counts == direct.counts
    assert _artifact_rows(tmp_path / "db2.exim") == _artifact_rows(tmp_path / "http.exim")


def test_unpack_writes_where_the_server_serves_them(
    tmp_path: Path, source_server: MlflowServer, fresh_server: MlflowServer, unique: str
) -> None:
    """Unpacked into a server's database directly, new experiments get the server's own
    mlflow-artifacts:/<id> locations and the files land in its destination: the server then
    hands out every file, which the proof through its http:// URI checks byte for byte."""
    names = seed_rich(source_server.url, unique)
    archive = tmp_path / "a.exim"
    pack(archive, tracking_uri=source_server.url, experiments=names)
    db = f"sqlite:///{fresh_server.db}"
    report = unpack(archive, tracking_uri=db, artifacts_destination=str(fresh_server.artifacts))
    assert report.runs_created == 5 and report.artifacts == 4
    client = MlflowClient(tracking_uri=fresh_server.url)
    exp = client.get_experiment_by_name(names[0])
    assert exp is not None and exp.artifact_location == f"mlflow-artifacts:/{exp.experiment_id}"
    files = sorted(p for p in fresh_server.artifacts.rglob("*") if p.is_file())
    assert len(files) == 4
    proof = check_against(archive, tracking_uri=fresh_server.url)
    assert proof.ok, proof.problems
    again = unpack(archive, tracking_uri=db, artifacts_destination=str(fresh_server.artifacts))
    assert again.runs_created == 0


def test_which_runs_files_are_read_in_place(tmp_path: Path) -> None:
    """pack lists these runs' files on its own thread (no download); the rest go to its pool."""
    from exim_archive.artifact_roots import ArtifactRoots
    from exim_archive.records import RunRecord

    def run(uri: str | None) -> RunRecord:
        return RunRecord("r", "0", None, None, "FINISHED", 1, 2, "active", uri)

    served = "mlflow-artifacts:/1/r/artifacts"
    with_destination, without = ArtifactRoots(str(tmp_path)), ArtifactRoots(None)
    assert with_destination.in_place(run(served))
    assert not without.in_place(run(served))  # run_files raises: at its turn in the pool
    for roots in (with_destination, without):
        assert roots.in_place(run(str(tmp_path / "1" / "r")))
        assert roots.in_place(run(f"file://{tmp_path}/1/r"))
        assert roots.in_place(run(None)) and roots.in_place(run(""))
        assert not roots.in_place(run("s3://bucket/1/r/artifacts"))
    assert not ArtifactRoots("s3://bucket/root").in_place(run(served))
