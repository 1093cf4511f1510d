"""The archive's tables are plain Parquet: DuckDB reads an extracted archive directly, and
``--experiment`` selections make independent archives that unpack in any order."""

from __future__ import annotations

import zipfile
from pathlib import Path

import duckdb
from conftest import NewStore
from workload import count_runs, seed_bulk, seed_rich, snapshot

from exim_archive import pack, unpack, verify
from exim_archive.bundle_reader import ArchiveReader


def test_duckdb_queries_an_extracted_archive(tmp_path: Path, new_sqlite: NewStore) -> None:
    src = new_sqlite("src")
    seed_rich(src, "dk", tmp_path / "art")
    archive = tmp_path / "a.exim"
    pack(archive, tracking_uri=src)
    folder = tmp_path / "extracted"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(folder)
    assert verify(folder).ok, "the extracted folder is a valid archive too"

    # The README's example, as written there.
    best = duckdb.sql(
        f"""
        SELECT r.run_name, min(m.value) AS best_loss
        FROM '{folder}/tables/metrics/*.parquet' m
        JOIN '{folder}/tables/runs.parquet' r USING (run_id)
        WHERE m.key = 'loss'
        GROUP BY r.run_name ORDER BY best_loss
        """
    ).fetchall()

    with ArchiveReader(archive) as reader:
        names = {r.run_id: r.run_name for r in reader.runs()}
        want: dict[str, float] = {}
        for batch in reader.iter_metric_batches():
            for row in batch.to_pylist():
                if row["key"] == "loss":
                    name = names[row["run_id"]]
                    want[name] = min(want.get(name, row["value"]), row["value"])
    assert dict(best) == want
    assert len(best) == 3


def test_independent_archives_unpack_in_any_order(tmp_path: Path, new_sqlite: NewStore) -> None:
    src = new_sqlite("src")
    seed_bulk(src, "part-a", runs=3, points=50, artifact_root=tmp_path / "art")
    seed_bulk(src, "part-b", runs=4, points=50, artifact_root=tmp_path / "art")
    pack(tmp_path / "a.exim", tracking_uri=src, experiments=["part-a"])
    pack(tmp_path / "b.exim", tracking_uri=src, experiments=["part-b"])
    one, two = new_sqlite("one"), new_sqlite("two")
    for archive in ("a.exim", "b.exim"):
        unpack(tmp_path / archive, tracking_uri=one)
    for archive in ("b.exim", "a.exim", "b.exim"):
        unpack(tmp_path / archive, tracking_uri=two)
    expected = snapshot(src, ["part-a", "part-b"])
    assert snapshot(one, ["part-a", "part-b"]) == expected
    assert snapshot(two, ["part-a", "part-b"]) == expected
    assert count_runs(one) == count_runs(two) == 7
