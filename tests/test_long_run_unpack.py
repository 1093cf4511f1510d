"""Unpack hands a long run's points over as row group references, decoded slice by slice."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import NewStore
from mlflow import MlflowClient
from mlflow.entities import Metric

from exim_archive import bundle_reader, bundle_writer, pack, unpack
from exim_archive.bundle_reader import ArchiveReader


def _seed(uri: str) -> None:
    """Three runs: two of 2 x 400 points (a NaN, a repeated step) and one of 3 points."""
    c = MlflowClient(uri)
    exp = c.create_experiment("long")
    for r, n in enumerate((400, 3, 400)):
        run_id = c.create_run(exp, start_time=1 + r).info.run_id
        ms = [Metric(k, float(i % 11) / 7, 1000 + i, i // 2) for k in ("a", "ü") for i in range(n)]
        ms.append(Metric("a", float("nan"), 5000, 1))
        c.log_batch(run_id, metrics=ms)


def _points(reader: ArchiveReader, rows: int) -> dict[str, tuple[list[int], pa.Table]]:
    out = {}
    for run_id, points in reader.iter_run_metrics():
        pieces = list(points.slices(rows))
        table = pa.concat_tables(pieces).cast(
            pa.schema([("key", pa.string()), *list(pieces[0].schema)[1:]])
        )
        out[run_id] = ([p.num_rows for p in pieces], table)
    return out


@pytest.fixture
def small_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Row groups of 100 points and parts of 3 groups: runs straddle groups and parts."""
    monkeypatch.setattr(bundle_writer, "ROW_GROUP_ROWS", 100)
    monkeypatch.setattr(bundle_writer, "METRIC_PART_ROWS", 300)


def test_long_runs_read_by_reference_give_the_same_points(
    new_sqlite: NewStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_groups: None
) -> None:
    src = new_sqlite("src")
    _seed(src)
    pack(tmp_path / "a.exim", tracking_uri=src)
    with ArchiveReader(tmp_path / "a.exim") as reader:
        assert len(reader.table_members("metrics")) == 6  # 1,605 points, 300 a part
        held = _points(reader, 64)
        monkeypatch.setattr(bundle_reader, "HELD_RUN_ROWS", 500)
        kinds = {run_id: p._table is None for run_id, p in reader.iter_run_metrics()}
        referenced = _points(reader, 64)
    assert sorted(kinds.values()) == [False, True, True]  # 801 > 500 points: referenced
    assert referenced.keys() == held.keys()
    for run_id, (sizes, table) in referenced.items():
        assert repr(table.to_pylist()) == repr(held[run_id][1].to_pylist())  # NaN included
        assert all(n == 64 for n in sizes[:-1]) and 0 < sizes[-1] <= 64
        assert sum(sizes) == table.num_rows in (801, 7)


def test_unpack_of_long_runs_by_reference(
    new_sqlite: NewStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_groups: None
) -> None:
    """A run past HELD_RUN_ROWS is written slice by slice (50 points here), and the read-back
    proof finds every point in the target."""
    src = new_sqlite("src")
    _seed(src)
    pack(tmp_path / "a.exim", tracking_uri=src)
    monkeypatch.setattr(bundle_reader, "HELD_RUN_ROWS", 500)
    monkeypatch.setattr(sys.modules["exim_archive.unpack"], "METRIC_SLICE", 50)
    sizes: list[int] = []
    real = bundle_reader.RunPoints.slices

    def spy(self: bundle_reader.RunPoints, rows: int) -> Iterator[pa.Table]:
        for piece in real(self, rows):
            if self._table is None:
                sizes.append(piece.num_rows)
            yield piece

    monkeypatch.setattr(bundle_reader.RunPoints, "slices", spy)
    report = unpack(tmp_path / "a.exim", tracking_uri=new_sqlite("dst"), workers=2)
    assert sorted(sizes) == [1] * 2 + [50] * 32  # two referenced runs of 801 points
    assert report.metric_points == 2 * 801 + 7 and report.runs_checked == 3


def test_runs_to_fill_meet_their_points_in_one_merge() -> None:
    """``_Unpacker._with_metrics`` pairs each run to fill with its points and files, in run id
    order, skipping runs not to fill and points of other runs: one merge of two streams (it once
    re-sorted the runs left for every run with points: hours at 100,000 runs). The archive
    reader is a stand-in yielding runs in chunks and (run id, points) in run id order."""
    from types import SimpleNamespace

    from exim_archive.records import ArtifactRecord, RunRecord

    unpack_module = sys.modules["exim_archive.unpack"]
    runs = [
        RunRecord(i, "1", None, None, "FINISHED", None, None, "active", None)
        for i in ("a", "b", "c", "d", "e", "f", "g")
    ]
    art = ArtifactRecord("c", "x.txt", 1, "0" * 64, "blobs/x", "none")
    with_points = {"b": "pb", "c": "pc", "e": "pe", "g": "pg", "z": "pz"}
    reader = SimpleNamespace(
        iter_run_metrics=lambda: iter(sorted(with_points.items())),
        iter_runs_with_artifacts=lambda: iter([(runs[:3], {"c": [art]}), (runs[3:], {})]),
    )
    stub = SimpleNamespace(
        reader=reader, to_fill={"a", "b", "c", "d", "e", "f"}, report=SimpleNamespace(artifacts=0)
    )
    stub._runs_in = lambda wanted: unpack_module._Unpacker._runs_in(stub, wanted)
    targets = {"1": SimpleNamespace(existing={})}
    items = list(unpack_module._Unpacker._with_metrics(stub, targets))
    got = [(run.run_id, points, arts) for run, points, _, arts, _ in items]
    assert got == [
        ("a", None, []),
        ("b", "pb", []),
        ("c", "pc", [art]),
        ("d", None, []),
        ("e", "pe", []),
        ("f", None, []),
    ]
    assert stub.report.artifacts == 1
