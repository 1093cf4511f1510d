"""``runs/log-batch`` request bodies for an HTTP target, made straight from the archive's
columns: MLflow's client spends ~10 ms of the shared CPU per 1,000 points on ``Metric`` objects,
protobuf and JSON, this ~1 ms. A run's params and tags may ride in its first body of points.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from . import tables as T

__all__ = [
    "METRICS_PER_BATCH",
    "PARAMS_PER_BATCH",
    "RIDER_CHARS",
    "TAGS_PER_BATCH",
    "Rider",
    "bodies",
    "log_batch_body",
    "rider",
    "text_size",
]

METRICS_PER_BATCH = 1000
PARAMS_PER_BATCH = 100
TAGS_PER_BATCH = 100
RIDER_CHARS = 200_000
"""Most characters of params and tags sent in one request with each other or with points: a
proxy in front of a server may refuse a body over 1 MB (nginx's default), which 100 params of
6,000 characters and 100 tags of 8,000 would pass (MLflow's client sends them so)."""
_NOT_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}

Rider = dict[str, list[dict[str, str]]]
"""The ``params`` and ``tags`` parts of a body."""


def log_batch_body(run_id: str, points: pa.Table) -> dict[str, Any]:
    """A ``runs/log-batch`` request body for metric points (``key``, ``step``, ``timestamp``,
    ``value`` columns) as MLflow's client sends it: NaN and infinities as proto JSON strings."""
    values: list[Any] = points.column("value").to_pylist()
    if not pc.all(pc.is_finite(points.column("value"))).as_py():
        values = [v if math.isfinite(v) else _NOT_FINITE[repr(v)] for v in values]
    metrics = [
        {"key": k, "value": v, "timestamp": t, "step": s}
        for k, v, t, s in zip(
            T.pylist(points.column("key")),
            values,
            points.column("timestamp").to_pylist(),
            points.column("step").to_pylist(),
            strict=True,
        )
    ]
    return {"run_id": run_id, "metrics": metrics}


def text_size(pairs: Iterable[tuple[str, str]]) -> int:
    """Characters of keys and values."""
    return sum(len(k) + len(v) for k, v in pairs)


def rider(params: Sequence[tuple[str, str]], tags: Mapping[str, str]) -> Rider | None:
    """Params and tags as body parts, if they can share a request with points: at most
    :data:`PARAMS_PER_BATCH` and :data:`TAGS_PER_BATCH`, and :data:`RIDER_CHARS` in all
    (1,000 points take ~80 KB). None when there are none, or too many to ride."""
    if not params and not tags:
        return None
    if len(params) > PARAMS_PER_BATCH or len(tags) > TAGS_PER_BATCH:
        return None
    if text_size(params) + text_size(tags.items()) > RIDER_CHARS:
        return None
    return {
        "params": [{"key": k, "value": v} for k, v in params],
        "tags": [{"key": k, "value": v} for k, v in sorted(tags.items())],
    }


def bodies(
    run_id: str, points: pa.Table, with_points: Rider | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(what it logs, body) for the points, :data:`METRICS_PER_BATCH` entities a body;
    ``with_points``' params and tags go in the first, in place of as many points."""
    offset = 0
    if with_points is not None:
        room = METRICS_PER_BATCH - len(with_points["params"]) - len(with_points["tags"])
        yield (
            "params, tags and metrics",
            {
                **log_batch_body(run_id, points.slice(0, room)),
                **with_points,
            },
        )
        offset = room
    for start in range(offset, points.num_rows, METRICS_PER_BATCH):
        yield "metrics", log_batch_body(run_id, points.slice(start, METRICS_PER_BATCH))
