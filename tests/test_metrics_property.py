"""Hypothesis round trips of metric histories: through the archive bit for bit, and through
real sqlite stores (pack, then unpack) point for point."""

from __future__ import annotations

import math
import shutil
import struct
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from mlflow.entities import Metric

from exim_archive import bundle_writer, pack, unpack
from exim_archive.bundle_reader import ArchiveReader
from exim_archive.bundle_writer import ArchiveWriter
from exim_archive.records import ExperimentRecord, RunRecord

KEYS = st.sampled_from(["loss", "acc", "métrique", "a/b c", "x-y.z"])
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 1.7976931348623157e308, float("nan")]),
)
POINT = st.tuples(KEYS, st.integers(-(2**62), 2**62), st.integers(0, 2**62), VALUES)
HISTORIES = st.dictionaries(
    st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    st.lists(POINT, max_size=60),
    min_size=1,
    max_size=4,
)


def _bits(v: float) -> bytes:
    return struct.pack("<d", v)


def _table(run_id: str, points: list[tuple[str, int, int, float]]) -> pa.Table:
    return pa.table(
        {
            "run_id": [run_id] * len(points),
            "key": [p[0] for p in points],
            "step": pa.array([p[1] for p in points], pa.int64()),
            "timestamp": pa.array([p[2] for p in points], pa.int64()),
            "value": pa.array([p[3] for p in points], pa.float64()),
        }
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(histories=HISTORIES)
def test_archive_keeps_every_point_bit_for_bit(
    tmp_path: Path, histories: dict[str, list[tuple[str, int, int, float]]]
) -> None:
    path = tmp_path / f"{uuid.uuid4().hex}.exim"
    _write(path, histories)
    with ArchiveReader(path) as reader:
        got = _points_read(reader)
    assert got == _points_of(histories)


def _write(path: Path, histories: dict[str, list[tuple[str, int, int, float]]]) -> None:
    """An archive of one experiment holding ``histories`` (run id -> points)."""
    writer = ArchiveWriter(
        path, created_at="2026-01-01T00:00:00Z", producer={}, source={}, selection={}
    )
    for run_id in sorted(histories):
        run = RunRecord(run_id, "1", None, None, "FINISHED", 0, 0, "active", None)
        writer.add_run(run, _table(run_id, histories[run_id]))
    writer.add_experiment(ExperimentRecord("1", "e", None, "active", None, None))
    writer.finish()


def _points_read(reader: ArchiveReader) -> list[tuple[str, str, int, int, bytes]]:
    return sorted(
        (r["run_id"], r["key"], r["step"], r["timestamp"], _bits(r["value"]))
        for b in reader.iter_metric_batches()
        for r in b.to_pylist()
    )


def _points_of(
    histories: dict[str, list[tuple[str, int, int, float]]],
) -> list[tuple[str, str, int, int, bytes]]:
    return sorted((rid, k, s, t, _bits(v)) for rid, pts in histories.items() for k, s, t, v in pts)


def _timestamp_encodings(path: Path, parts: list[str]) -> list[set[str]]:
    import zipfile

    with zipfile.ZipFile(path) as zf:
        out = []
        for part in parts:
            meta = pq.ParquetFile(pa.BufferReader(zf.read(part))).metadata
            for i in range(meta.num_row_groups):
                group = meta.row_group(i)
                names = [group.column(j).path_in_schema for j in range(group.num_columns)]
                out.append(set(group.column(names.index("timestamp")).encodings))
        return out


def test_each_part_takes_the_smaller_timestamp_encoding_and_keeps_every_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Part 0: many short runs whose keys share timestamps (plain wins under zstd); part 1: one
    long history with timestamps of its own (delta wins). Both read back bit for bit."""
    monkeypatch.setattr(bundle_writer, "ROW_GROUP_ROWS", 2_000)
    monkeypatch.setattr(bundle_writer, "METRIC_PART_ROWS", 4_000)
    rng = __import__("random").Random(7)
    histories: dict[str, list[tuple[str, int, int, float]]] = {}
    for r in range(100):  # 100 runs x 2 keys x 20 steps = 4,000 points: exactly part 0
        t0 = 1_790_000_000_000 + rng.randrange(7 * 86_400_000)
        stamps = [t0 + 1_000 * s + rng.randrange(300) for s in range(20)]
        histories[f"{r:032x}"] = [
            (k, s, stamps[s], rng.gauss(0, 1)) for k in ("acc", "loss") for s in range(20)
        ]
    stamp, long_history = 1_790_000_000_000, []
    for s in range(4_000):
        stamp += 900 + rng.randrange(300)
        long_history.append(("loss", s, stamp, rng.gauss(0, 1)))
    histories["f" * 32] = long_history
    path = tmp_path / "parts.exim"
    _write(path, histories)
    with ArchiveReader(path) as reader:
        parts = list(reader.table_members("metrics"))
        got = _points_read(reader)
    assert got == _points_of(histories)
    assert len(parts) == 2
    encodings = _timestamp_encodings(path, parts)
    assert len(encodings) == 4  # two row groups a part, each with its part's encoding
    assert "PLAIN" in encodings[0] and "DELTA_BINARY_PACKED" not in encodings[0]
    assert encodings[1] == encodings[0]
    assert "DELTA_BINARY_PACKED" in encodings[2] and encodings[3] == encodings[2]


SMALL_POINT = st.tuples(
    KEYS,
    st.integers(-(2**40), 2**40),
    st.integers(0, 2**41),
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False, width=64),
        st.sampled_from([float("nan"), float("inf"), float("-inf"), 5e-324]),
    ),
)


def _history(uri: str, run_id: str) -> list[tuple[str, int, int, str]]:
    c = MlflowClient(uri)
    run = c.get_run(run_id)
    return sorted(
        (k, m.step, m.timestamp, "nan" if math.isnan(m.value) else repr(m.value))
        for k in run.data.metrics
        for m in c.get_metric_history(run_id, k)
    )


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(points=st.lists(SMALL_POINT, min_size=1, max_size=80))
def test_store_round_trip_keeps_histories(
    tmp_path: Path, migrated_db: Path, points: list[tuple[str, int, int, float]]
) -> None:
    case = tmp_path / uuid.uuid4().hex
    case.mkdir()
    src, dst = case / "src.db", case / "dst.db"
    shutil.copyfile(migrated_db, src)
    shutil.copyfile(migrated_db, dst)
    src_uri, dst_uri = f"sqlite:///{src}", f"sqlite:///{dst}"
    c = MlflowClient(src_uri)
    exp = c.create_experiment("h", artifact_location=(case / "art").as_uri())
    run_id = c.create_run(exp, start_time=1).info.run_id
    c.log_batch(run_id, metrics=[Metric(k, v, t, s) for k, s, t, v in points])
    pack(case / "a.exim", tracking_uri=src_uri, experiments=["h"])
    report = unpack(case / "a.exim", tracking_uri=dst_uri)
    assert _history(dst_uri, report.id_map["runs"][run_id]) == _history(src_uri, run_id)
