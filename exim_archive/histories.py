"""Metric histories out of a source, as fast as the source allows and never incomplete.

Four ways in, best first:

* database stores at a tested schema revision: plain SQL over all keys of ≤500 runs at once,
  streamed (see :mod:`.sql_metrics`; ``EXIM_NO_SQL_FAST_PATH=1`` turns it off);
* database stores in-process: the store's bulk query, one per key and ≤100 runs, no row cap;
* ``http(s)://`` servers: ``/ajax-api/2.0/mlflow/metrics/get-history-bulk`` (the UI's endpoint),
  ≤100 runs per call, which silently stops at 25,000 rows in all: batches are sized from each
  run's latest step so they stay under that, and a reply that reaches it is thrown away and read
  again per run;
* anything else, or after a bulk failure: ``get_metric_history`` per run and key (paged by MLflow).
  A server that does not offer the bulk endpoint (404, 405 or 501 on it: a proxy that passes
  only ``/api/``, another implementation of the REST API) is read this way from then on.

A run whose histories look longer than :data:`PAGED_RUN_POINTS` (by its latest steps) is read
lazily, one key at a time, in pages of :data:`HISTORY_PAGE` points (``get_metric_history`` with
``max_results`` and ``page_token``, which the server and MLflow's stores page by offset): memory
then holds one key's history as Arrow columns and one page as Python objects, never the run's.
Over HTTP a page's JSON goes straight into columns (MLflow's client would build a protobuf
message and a ``Metric`` object per point: ~4x the memory).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from . import tables as T
from .pool import ordered_map
from .records import RunRecord
from .sql_metrics import SqlMetrics, open_fast_path

if TYPE_CHECKING:
    from .source import MlflowSource

__all__ = ["BULK_ROW_CAP", "HISTORY_PAGE", "PAGED_RUN_POINTS", "HistoryReader"]

BULK_ROW_CAP = 25_000
BULK_MAX_RUNS = 100
_BULK_TARGET_ROWS = 20_000
_BULK_ENDPOINT = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
_HISTORY_ENDPOINT = "/api/2.0/mlflow/metrics/get-history"
_ABSENT = frozenset({404, 405, 501})
"""Statuses on the bulk endpoint that mean the server does not offer it: read per run instead
(an MLflow error there, such as an unknown run, is then reported by the per-run read)."""
HISTORY_PAGE = 100_000
"""Points per ``get_metric_history`` page when a long run is read key by key."""
PAGED_RUN_POINTS = 250_000
"""A run with more points than this (by its latest steps) is read key by key, in pages: a whole
history read at once costs ~400 bytes a point in MLflow's objects."""


class HistoryReader:
    """Reads the histories of a set of runs from one source."""

    def __init__(self, source: MlflowSource, workers: int) -> None:
        self.source = source
        self.workers = max(1, workers)
        store = source.client._tracking_client.store
        self._store_bulk = getattr(store, "get_metric_history_bulk", None)
        self._http = source.kind == "http"
        self.bulk_calls = 0
        self.fallbacks = 0
        self.sql_reads = 0
        self.note: str | None = None
        """Why direct SQL was not used on a database source (untested schema revision)."""
        self._sql: SqlMetrics | None = None
        if source.kind == "database":
            self._sql, self.note = open_fast_path(store, source.uri)

    def read(self, runs: list[RunRecord]) -> dict[str, pa.Table | Iterator[pa.Table]]:
        """Each run's points: a table, or (a long run) one table per key, lazily."""
        if self._sql is not None:
            self.sql_reads += 1
            return self.source.call(
                f"reading the metric points of {len(runs)} runs", partial(self._sql.read, runs)
            )
        long = {r.run_id for r in runs if r.size_hint > PAGED_RUN_POINTS}
        short = [r for r in runs if r.run_id not in long]
        points: dict[tuple[str, str], pa.Table] = {}
        tasks = list(self._tasks(short))
        for key, got in ordered_map(self._fetch, tasks, self.workers):
            for run_id, table in got.items():
                points[(run_id, key)] = table
        return {
            run.run_id: self._by_key(run) if run.run_id in long else _run_table(run, points)
            for run in runs
        }

    def _by_key(self, run: RunRecord) -> Iterator[pa.Table]:
        """A long run's points, one table per key in key (UTF-8 byte) order, read as the
        writer asks for them."""
        for key in sorted(run.metric_keys, key=lambda k: k.encode("utf-8")):
            yield self._key_table(run.run_id, key)

    def _key_table(self, run_id: str, key: str) -> pa.Table:
        """One key's whole history, read page by page.

        Pages come by offset in (timestamp, step, value) order, where a NaN (stored as 0 with a
        flag) and a 0.0 at the same step and time tie: a page boundary between them can give
        one twice and lose the other. A page that starts with the previous page's last point
        shows it (a store keeps each point once); the key is then read again in one call."""
        parts: list[pa.Table] = []
        token: str | None = None
        what = f"reading metric {key!r} of run {run_id}"
        while True:
            page, token = self.source.call(what, partial(self._page, run_id, key, token))
            if parts and page.num_rows and _same_point(parts[-1], page):
                self.fallbacks += 1
                whole, _ = self.source.call(what, partial(self._page, run_id, key, None, None))
                return whole
            parts.append(page)
            if not token:
                return pa.concat_tables(parts)

    def _page(
        self, run_id: str, key: str, token: str | None, size: int | None = HISTORY_PAGE
    ) -> tuple[pa.Table, str | None]:
        """One page of ``size`` points of a key's history (``None``: all of it) and the next
        page's token (None after the last)."""
        store = self.source.client._tracking_client.store
        if self.source.kind != "http":
            page = store.get_metric_history(run_id, key, max_results=size, page_token=token)
            steps, stamps, values = [], [], []
            for m in page:
                steps.append(int(m.step))
                stamps.append(int(m.timestamp))
                values.append(float(m.value))
            return _points_table(run_id, key, steps, stamps, values), getattr(page, "token", None)
        params: dict[str, Any] = {"run_id": run_id, "metric_key": key}
        if size is not None:
            params["max_results"] = size
        if token:
            params["page_token"] = token
        body = self._get_json(_HISTORY_ENDPOINT, params)
        assert body is not None  # no status is taken as absent here
        metrics = body.get("metrics", [])
        # proto JSON: int64 may come as strings, NaN and infinities as "NaN" / "Infinity"
        table = _points_table(
            run_id,
            key,
            [int(m.get("step", 0)) for m in metrics],
            [int(m.get("timestamp", 0)) for m in metrics],
            [float(m.get("value", 0.0)) for m in metrics],
        )
        return table, body.get("next_page_token") or None

    def counts(self, runs: list[RunRecord]) -> dict[str, dict[str, int]]:
        """Stored points per run and key: one grouped count on a database, the histories
        themselves elsewhere."""
        if self._sql is not None:
            sql = self._sql
            return self.source.call(
                f"counting the metric points of {len(runs)} runs",
                partial(sql.count, [r.run_id for r in runs]),
            )
        out: dict[str, dict[str, int]] = {}
        for run_id, points in self.read(runs).items():
            counts: dict[str, int] = {}
            for table in [points] if isinstance(points, pa.Table) else points:
                grouped = table.group_by("key").aggregate([([], "count_all")])
                keys, ns = grouped["key"].to_pylist(), grouped["count_all"].to_pylist()
                for key, n in zip(keys, ns, strict=True):
                    counts[key] = counts.get(key, 0) + n
            out[run_id] = counts
        return out

    def _tasks(self, runs: list[RunRecord]) -> Iterable[tuple[str, list[RunRecord]]]:
        by_key: dict[str, list[tuple[RunRecord, int]]] = defaultdict(list)
        for run in runs:
            steps = run.metric_last_steps or (0,) * len(run.metric_keys)
            for key, step in zip(run.metric_keys, steps, strict=False):
                by_key[key].append((run, max(1, step + 1)))
        bulk = self._http or self._store_bulk is not None
        for key in sorted(by_key):
            batch: list[RunRecord] = []
            rows = 0
            for run, estimate in by_key[key]:
                if not bulk:
                    yield key, [run]
                    continue
                if batch and (len(batch) >= BULK_MAX_RUNS or rows + estimate > _BULK_TARGET_ROWS):
                    yield key, batch
                    batch, rows = [], 0
                batch.append(run)
                rows += estimate
            if batch:
                yield key, batch

    def _fetch(self, task: tuple[str, list[RunRecord]]) -> tuple[str, dict[str, pa.Table]]:
        key, batch = task
        got: dict[str, pa.Table] | None = None
        if self._store_bulk is not None or (self._http and len(batch) > 1):
            got = self._bulk(key, batch)
        if got is None:
            got = {run.run_id: self._key_table(run.run_id, key) for run in batch}
        return key, got

    def _bulk(self, key: str, batch: list[RunRecord]) -> dict[str, pa.Table] | None:
        ids = [run.run_id for run in batch]
        what = f"reading metric {key!r} of {len(ids)} runs"
        rows: list[Any]
        if self._store_bulk is not None:
            rows = self.source.call(what, partial(self._store_bulk, ids, key, 2**62))
            self.bulk_calls += 1
            triples = ((r.run_id, int(r.step), int(r.timestamp), float(r.value)) for r in rows)
        else:
            reply = self.source.call(what, partial(self._http_bulk, ids, key))
            if reply is None:
                self._http = False
                return None
            rows = reply
            self.bulk_calls += 1
            if len(rows) >= BULK_ROW_CAP:  # the endpoint's silent cap: this reply may be cut
                self.fallbacks += 1
                return None
            triples = (
                (r["run_id"], int(r["step"]), int(r["timestamp"]), float(r["value"])) for r in rows
            )
        columns: dict[str, tuple[list[int], list[int], list[float]]] = {}
        for run_id, step, stamp, value in triples:
            if run_id not in columns:
                columns[run_id] = ([], [], [])
            steps, stamps, values = columns[run_id]
            steps.append(step)
            stamps.append(stamp)
            values.append(value)
        return {run_id: _points_table(run_id, key, *cols) for run_id, cols in columns.items()}

    def _http_bulk(self, run_ids: list[str], key: str) -> list[dict[str, Any]] | None:
        """The bulk endpoint's points, or None where the server does not offer it."""
        params = {"run_id": run_ids, "metric_key": key, "max_results": BULK_ROW_CAP}
        body = self._get_json(_BULK_ENDPOINT, params, absent=_ABSENT)
        if body is None:
            return None
        metrics: list[dict[str, Any]] = body.get("metrics", [])
        return metrics

    def _get_json(
        self, endpoint: str, params: dict[str, Any], absent: frozenset[int] = frozenset()
    ) -> dict[str, Any] | None:
        """One GET to the server, its JSON reply parsed (no MLflow objects); None for a status
        in ``absent``; any other status but 200 raises ``requests.HTTPError``, which the
        caller's retry rule classifies."""
        import requests
        from mlflow.utils.rest_utils import http_request

        store = self.source.client._tracking_client.store
        resp = http_request(
            store.get_host_creds(), endpoint, "GET", params=params, raise_on_status=False
        )
        if resp.status_code in absent:
            return None
        if resp.status_code != 200:
            raise requests.HTTPError(f"HTTP {resp.status_code} from {endpoint}", response=resp)
        body: dict[str, Any] = resp.json()
        return body


def _same_point(before: pa.Table, after: pa.Table) -> bool:
    """True if ``after`` starts with ``before``'s last point (NaN equal to NaN)."""
    last = before.slice(before.num_rows - 1).select(["step", "timestamp", "value"]).to_pylist()
    first = after.slice(0, 1).select(["step", "timestamp", "value"]).to_pylist()
    return repr(last) == repr(first)


def _run_table(run: RunRecord, points: dict[tuple[str, str], pa.Table]) -> pa.Table:
    """The run's points out of ``points`` (taken out of it), in the run's key order."""
    parts = [
        points.pop((run.run_id, key)) for key in run.metric_keys if (run.run_id, key) in points
    ]
    return pa.concat_tables(parts) if parts else T.METRIC_POINTS.empty_table()


def _points_table(
    run_id: str, key: str, steps: list[int], stamps: list[int], values: list[float]
) -> pa.Table:
    """Points of one run and key as a ``metrics`` table, the run id dictionary-encoded (4 bytes
    a point, not 36)."""
    n = len(steps)
    return pa.table(
        {
            "run_id": pa.DictionaryArray.from_arrays(
                pa.repeat(pa.scalar(0, pa.int32()), n), pa.array([run_id], pa.string())
            ),
            "key": pa.repeat(pa.scalar(key, pa.string()), n),
            "step": pa.array(steps, pa.int64()),
            "timestamp": pa.array(stamps, pa.int64()),
            "value": pa.array(values, pa.float64()),
        },
        schema=T.METRIC_POINTS,
    )
