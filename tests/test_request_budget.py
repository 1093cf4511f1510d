"""The requests unpack makes per run over HTTP, counted through a proxy.

A server of 10^5 small runs spends its time on requests, not on points (each ~10 ms of its CPU
whatever it carries), so the run-level requests are a budget: a change that adds a round trip
per run shows here. Per new run: one ``runs/create`` (tags included), the points' ``log-batch``
calls with the params and the parent tag riding in the first, one upload per file (no
``runs/get`` to find where: ``runs/create`` said), one ``runs/update`` and one ``delete-tag``
for the incomplete marker.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from conftest import MlflowServer, NewStore
from faultproxy import FaultProxy
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, ViewType

from exim_archive import pack, unpack

T0 = 1_700_000_000_000
RUNS = 3
POINTS = 1500  # two log-batch bodies: 1,000 less the params and tags, then the rest
FILES = 2


def _seed(uri: str, root: Path, staging: Path, name: str) -> None:
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment(name, artifact_location=root.as_uri())
    parent = None
    for r in range(RUNS):
        tags = {"team": "a"} if parent is None else {"mlflow.parentRunId": parent}
        run = c.create_run(exp, start_time=T0 + r, tags=tags).info.run_id
        parent = parent or run
        points = [Metric("loss", 1.0 / (s + 1), T0 + s, s) for s in range(POINTS)]
        params = [Param(f"p{i}", str(i)) for i in range(3)]
        c.log_batch(run, metrics=points[:1000], params=params)
        c.log_batch(run, metrics=points[1000:])
        files = staging / f"files-{r}"
        files.mkdir(parents=True)
        for f in range(FILES):
            (files / f"f{f}.txt").write_text(f"run {r} file {f}\n")
        c.log_artifacts(run, str(files))
        c.set_terminated(run, "FINISHED", end_time=T0 + 10_000)


def _routes(log: list[tuple[str, str, str | None]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for method, path, _fault in log:
        route = path.split("?", 1)[0]
        if "/mlflow-artifacts/artifacts/" in route:
            route = "artifacts"
        out[f"{method} {route}"] += 1
    return out


def test_unpack_over_http_makes_a_fixed_few_requests_per_run(
    tmp_path: Path, new_sqlite: NewStore, target_server: MlflowServer, unique: str
) -> None:
    source = new_sqlite("source")
    _seed(source, tmp_path / "artifacts", tmp_path / "staging", f"{unique} budget")
    archive = tmp_path / "a.exim"
    pack(archive, tracking_uri=source)

    with FaultProxy(target_server.url) as proxy:
        report = unpack(archive, tracking_uri=proxy.url, check=False)
        counts = _routes(proxy.requests())
    assert report.runs_created == RUNS and report.metric_points == RUNS * POINTS

    api = "/api/2.0/mlflow"
    assert counts[f"POST {api}/runs/create"] == RUNS
    assert counts[f"POST {api}/runs/log-batch"] == RUNS * 2  # params and parent tag in the first
    assert counts["PUT artifacts"] == RUNS * FILES
    assert counts[f"POST {api}/runs/update"] == RUNS
    assert counts[f"POST {api}/runs/delete-tag"] == RUNS
    assert counts[f"GET {api}/runs/get"] == 0, counts
    # the runs an earlier unpack made (one page), then runs waiting for a parent (spec/1.0/unpack.md
    # §7): one search per 100 of the server's experiments, after one listing of them
    experiments = len(MlflowClient(target_server.url).search_experiments(view_type=ViewType.ALL))
    assert counts[f"POST {api}/experiments/search"] == 2  # the client's first call; the listing
    assert counts[f"POST {api}/runs/search"] == 1 + math.ceil(experiments / 100)
    per_run = [r for r in counts if ("/runs/" in r and "/runs/search" not in r) or "artifacts" in r]
    run_level = sum(counts[r] for r in per_run)
    assert run_level == RUNS * (1 + 2 + FILES + 1 + 1), sorted(counts.items())

    # what they carried arrived: the proof, now without the proxy
    from exim_archive.proof import check_against

    proof = check_against(archive, tracking_uri=target_server.url)
    assert proof.ok, proof.problems


def test_params_and_tags_ride_only_when_few_and_small() -> None:
    import pyarrow as pa

    from exim_archive import log_batch
    from exim_archive import tables as T

    n = 2500
    points = pa.table(
        {
            "run_id": pa.array(["r"] * n),
            "key": pa.array(["m"] * n),
            "step": pa.array(range(n), pa.int64()),
            "timestamp": pa.array(range(n), pa.int64()),
            "value": pa.array([float(i) for i in range(n)]),
        }
    ).cast(T.METRIC_POINTS)
    params = [(f"p{i}", "v") for i in range(3)]
    rider = log_batch.rider(params, {"mlflow.parentRunId": "x"})
    assert rider is not None
    bodies = list(log_batch.bodies("r", points, rider))
    assert [what for what, _ in bodies] == ["params, tags and metrics", "metrics", "metrics"]
    first = bodies[0][1]
    assert len(first["metrics"]) + len(first["params"]) + len(first["tags"]) == 1000
    assert sum(len(b["metrics"]) for _, b in bodies) == n  # every point once, in order
    assert [m["step"] for _, b in bodies for m in b["metrics"]] == list(range(n))
    assert all("params" not in b for _, b in bodies[1:])

    assert log_batch.rider([], {}) is None
    assert log_batch.rider([(f"p{i}", "v") for i in range(101)], {}) is None  # over 100 params
    big = [(f"p{i}", "x" * 6000) for i in range(34)]  # 204,000+ characters
    assert log_batch.rider(big, {}) is None
    assert log_batch.rider(big[:33], {}) is not None
