#!/usr/bin/env python
"""The floor for packing from an ``http://`` server: the fastest complete read it offers.

Reads what ``exim-archive pack`` reads of the named experiments, with nothing else done: the
experiments by name; their runs (``runs/search``, up to 50,000 a page, deleted included); every
metric point through the UI's bulk endpoint (``get-history-bulk``, one call per key and up to
100 runs, batched so each reply stays under its silent 25,000-row cap, which makes the read
complete); every artifact file (``artifacts/list`` walked, then ``get-artifact``). History and
file calls overlap on ``--workers`` threads, one keep-alive session each. No MLflow import,
nothing written, no checks: the least any client must ask of the server. ``run_bench.py``
times this script as a whole (interpreter start-up included, as for the CLIs). Not a test.

    python bench/http_floor.py http://127.0.0.1:5000 "exp 0" "exp 1"
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

ROW_CAP = 25_000
MAX_RUNS = 100
_local = threading.local()


def session() -> requests.Session:
    if not hasattr(_local, "s"):
        _local.s = requests.Session()
    s: requests.Session = _local.s
    return s


def get(base: str, endpoint: str, **params: Any) -> Any:
    resp = session().get(base + endpoint, params=params, timeout=120)
    resp.raise_for_status()
    return resp.json()


def runs_of(base: str, experiment_ids: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    token = None
    while True:
        body: dict[str, Any] = {
            "experiment_ids": experiment_ids,
            "max_results": 50_000,
            "run_view_type": "ALL",
        }
        if token:
            body["page_token"] = token
        resp = session().post(base + "/api/2.0/mlflow/runs/search", json=body, timeout=300)
        resp.raise_for_status()
        page = resp.json()
        out += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            return out


def history_tasks(runs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(key, run ids) per bulk call: ≤100 runs and (by latest steps) under the row cap."""
    by_key: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for run in runs:
        for m in run.get("data", {}).get("metrics", []):
            by_key[m["key"]].append((run["info"]["run_id"], int(m.get("step", 0)) + 1))
    tasks = []
    for key, items in sorted(by_key.items()):
        batch: list[str] = []
        rows = 0
        for run_id, size in items:
            if batch and (len(batch) >= MAX_RUNS or rows + size >= ROW_CAP):
                tasks.append((key, batch))
                batch, rows = [], 0
            batch.append(run_id)
            rows += size
        tasks.append((key, batch))
    return tasks


def read_history(base: str, task: tuple[str, list[str]]) -> int:
    key, run_ids = task
    got = get(
        base,
        "/ajax-api/2.0/mlflow/metrics/get-history-bulk",
        run_id=run_ids,
        metric_key=key,
        max_results=ROW_CAP,
    )
    rows = len(got.get("metrics", []))
    if rows >= ROW_CAP:
        raise SystemExit(f"a bulk reply reached the {ROW_CAP}-row cap: batches too big")
    return rows


def read_artifacts(base: str, run_id: str, path: str = "") -> int:
    listing = get(base, "/api/2.0/mlflow/artifacts/list", run_id=run_id, path=path)
    total = 0
    for f in listing.get("files", []):
        if f.get("is_dir"):
            total += read_artifacts(base, run_id, f["path"])
        else:
            resp = session().get(
                base + "/get-artifact", params={"path": f["path"], "run_uuid": run_id}, timeout=300
            )
            resp.raise_for_status()
            total += len(resp.content)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="http://host:port of the tracking server")
    parser.add_argument("experiments", nargs="+", help="experiment names")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--json", help="also write the timings to this file")
    args = parser.parse_args()
    base = args.url.rstrip("/")

    started = time.perf_counter()
    ids = [
        get(base, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=name)["experiment"][
            "experiment_id"
        ]
        for name in args.experiments
    ]
    runs = runs_of(base, ids)
    listed = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:  # histories and files overlap
        reads = [pool.submit(read_history, base, t) for t in history_tasks(runs)]
        downloads = [pool.submit(read_artifacts, base, r["info"]["run_id"]) for r in runs]
        points = sum(f.result() for f in reads)
        files = sum(f.result() for f in downloads)
    done = time.perf_counter()
    report = {
        "runs": len(runs),
        "points": points,
        "artifact_bytes": files,
        "runs_s": listed - started,
        "reads_s": done - listed,
        "total_s": done - started,
    }
    print(json.dumps(report))
    if args.json:
        with open(args.json, "w") as out:
            out.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
