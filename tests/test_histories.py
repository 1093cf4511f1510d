"""Bulk metric-history reads are used where complete and abandoned where they could be cut."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import MlflowServer, NewStore
from faultproxy import Fault, FaultProxy, Request
from mlflow import MlflowClient
from mlflow.entities import Metric

from exim_archive import histories
from exim_archive.histories import BULK_ROW_CAP, HistoryReader
from exim_archive.source import MlflowSource


def _log(uri: str, name: str, runs: int, points: int, step_of: int | None) -> None:
    c = MlflowClient(uri)
    exp = c.create_experiment(name)
    for r in range(runs):
        run_id = c.create_run(exp, start_time=1).info.run_id
        ms = [
            Metric("m", float(i), 1000 + i, i if step_of is None else step_of)
            for i in range(points)
        ]
        for start in range(0, points, 1000):
            c.log_batch(run_id, metrics=ms[start : start + 1000])
        c.log_batch(run_id, metrics=[Metric("other", float(r), 1, 0)])


@pytest.mark.server
def test_http_bulk_cap_falls_back_per_run(source_server: MlflowServer, unique: str) -> None:
    # Every point at step 0: the size hint says 1 point per run, so both runs go into one bulk
    # call, whose 25,000-row cap would silently cut the 30,000 points.
    _log(source_server.url, f"{unique} capped", runs=2, points=15_000, step_of=0)
    source = MlflowSource(source_server.url)
    exp = source.experiments([f"{unique} capped"])
    runs = source.runs([e.experiment_id for e in exp])
    reader = HistoryReader(source, workers=2)
    tables = reader.read(runs)
    assert reader.fallbacks == 1 and reader.bulk_calls >= 1
    for run in runs:
        table = tables[run.run_id]
        assert table.filter(pc.equal(table["key"], "m")).num_rows == 15_000
    assert sum(t.num_rows for t in tables.values()) == 2 * 15_000 + 2 > BULK_ROW_CAP


@pytest.mark.server
@pytest.mark.parametrize("status", [404, 405, 501])
def test_server_without_the_bulk_endpoint_is_read_per_run(
    source_server: MlflowServer, unique: str, status: int
) -> None:
    # A proxy that passes only /api/ (or another REST implementation): the bulk endpoint is
    # missing, which is no error; every history is read per run instead, complete.
    _log(source_server.url, f"{unique} no bulk", runs=6, points=40, step_of=None)

    def rule(req: Request) -> Fault | None:
        missing = req.route.endswith("/get-history-bulk")
        return Fault.of(status, json_body=False) if missing else None

    with FaultProxy(source_server.url, rule) as proxy:
        source = MlflowSource(proxy.url)
        runs = source.runs([e.experiment_id for e in source.experiments([f"{unique} no bulk"])])
        reader = HistoryReader(source, workers=2)
        tables = reader.read(runs)
        bulk = proxy.requests("/get-history-bulk")
        per_run = proxy.requests("/metrics/get-history?")
    assert 1 <= len(bulk) <= 2, bulk  # at most one per worker before the reader stops asking
    assert reader.bulk_calls == 0 and len(per_run) == 6 * 2
    assert sorted(t.num_rows for t in tables.values()) == [41] * 6
    for table in tables.values():
        m = table.filter(pc.equal(table["key"], "m"))
        assert m["value"].to_pylist() == [float(i) for i in range(40)]


def test_database_bulk_reads_everything(
    new_sqlite: NewStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXIM_NO_SQL_FAST_PATH", "1")  # the store's bulk path, SQL's fallback
    uri = new_sqlite("src")
    _log(uri, "many", runs=120, points=30, step_of=None)
    source = MlflowSource(uri)
    runs = source.runs([e.experiment_id for e in source.experiments(["many"])])
    reader = HistoryReader(source, workers=4)
    tables = reader.read(runs)
    assert reader.fallbacks == 0 and reader.bulk_calls == 4  # 2 keys x ceil(120 / 100)
    assert sorted(t.num_rows for t in tables.values()) == [31] * 120


def _seed_long(uri: str, name: str) -> None:
    """Two runs whose keys hold repeats, NaN, +/-inf and unicode: 3 x 250 points plus a short
    key."""
    c = MlflowClient(uri)
    exp = c.create_experiment(name)
    for r in range(2):
        run_id = c.create_run(exp, start_time=1 + r).info.run_id
        ms = [
            Metric(k, float(i % 7) / 3, 1000 + i, i // 2)
            for k in ("a", "b", "ü")
            for i in range(250)
        ]
        ms.append(Metric("a", float("nan"), 5000, 3))
        ms.append(Metric("b", float("inf"), 5001, 4))
        ms.append(Metric("b", float("-inf"), 5002, 5))
        ms.append(Metric("short", 1.0, 1, 0))
        for start in range(0, len(ms), 1000):
            c.log_batch(run_id, metrics=ms[start : start + 1000])


@pytest.mark.parametrize("where", ["http", "store"])
def test_long_runs_are_paged_key_by_key_with_the_same_result(
    where: str,
    source_server: MlflowServer,
    new_sqlite: NewStore,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run past PAGED_RUN_POINTS is read one key at a time in get_metric_history pages (here
    70 points a page over 3 pages, against a server and MLflow's store in-process); the
    archive is the same, byte for byte, as the whole-run read gives."""
    from exim_archive import pack

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    if where == "http":
        uri = source_server.url
    else:
        monkeypatch.setenv("EXIM_NO_SQL_FAST_PATH", "1")
        uri = new_sqlite("src")
    _seed_long(uri, f"{unique} long")
    whole = pack(tmp_path / "whole.exim", tracking_uri=uri, experiments=[f"{unique} long"])
    calls: list[str] = []
    real = HistoryReader._by_key

    def spy(self: HistoryReader, run: object) -> object:
        calls.append(run.run_id)  # type: ignore[attr-defined]
        return real(self, run)  # type: ignore[arg-type]

    monkeypatch.setattr(HistoryReader, "_by_key", spy)
    monkeypatch.setattr(histories, "PAGED_RUN_POINTS", 100)
    monkeypatch.setattr(histories, "HISTORY_PAGE", 70)
    paged = pack(tmp_path / "paged.exim", tracking_uri=uri, experiments=[f"{unique} long"])
    assert len(calls) == 2 and paged.counts["metric_points"] == 2 * (750 + 4)
    assert paged.digest == whole.digest
    assert (tmp_path / "paged.exim").read_bytes() == (tmp_path / "whole.exim").read_bytes()


def test_a_point_given_twice_across_pages_rereads_the_key(
    new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offset paging can split a tie (a NaN and a 0.0 at one step and time) and give one of
    them twice: the key is read again in one call."""
    reader = HistoryReader(MlflowSource(new_sqlite("src")), workers=1)
    nan = float("nan")
    pages = {None: ([(0, 10, 1.0), (1, 20, nan)], "p2"), "p2": ([(1, 20, nan), (2, 30, 3.0)], None)}
    whole = [(0, 10, 1.0), (1, 20, 0.0), (1, 20, nan), (2, 30, 3.0)]
    calls: list[tuple[str | None, int | None]] = []

    def fake(
        self: HistoryReader, run_id: str, key: str, token: str | None, size: int | None = 1
    ) -> tuple[pa.Table, str | None]:
        calls.append((token, size))
        rows, after = (whole, None) if size is None else pages[token]
        steps, stamps, values = (list(c) for c in zip(*rows, strict=True))
        return histories._points_table(run_id, key, steps, stamps, values), after

    monkeypatch.setattr(HistoryReader, "_page", fake)
    table = reader._key_table("r", "m")
    assert calls == [(None, 1), ("p2", 1), (None, None)] and reader.fallbacks == 1
    assert repr(table.column("value").to_pylist()) == "[1.0, 0.0, nan, 3.0]"
    pages["p2"] = ([(1, 20, 0.0), (2, 30, 3.0)], None)  # no repeat: the pages are the history
    calls.clear()
    assert reader._key_table("r", "m").num_rows == 4 and len(calls) == 2


@pytest.mark.server
def test_history_pages_over_http(source_server: MlflowServer, unique: str) -> None:
    """The server's get-history endpoint: pages with a token, or the whole key in one call."""
    _log(source_server.url, f"{unique} paged", runs=1, points=250, step_of=None)
    source = MlflowSource(source_server.url)
    (run,) = source.runs([e.experiment_id for e in source.experiments([f"{unique} paged"])])
    reader = HistoryReader(source, workers=1)
    first, token = reader._page(run.run_id, "m", None, 100)
    assert first.num_rows == 100 and token
    second, token = reader._page(run.run_id, "m", token, 100)
    assert second.column("step").to_pylist() == list(range(100, 200)) and token
    whole, token = reader._page(run.run_id, "m", None, None)
    assert whole.num_rows == 250 and token is None
    assert reader._key_table(run.run_id, "m").equals(whole)
