"""``inspect``: what an archive holds, from the file alone (no server, no full decode)."""

from __future__ import annotations

import os
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from . import tables as T
from .bundle_reader import ArchiveReader

__all__ = ["inspect_archive", "render_summary"]


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    try:
        moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):  # a time no calendar holds: show the number
        return f"{ms} ms"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def inspect_archive(archive: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON-ready summary of the archive: versions, source, counts, experiments, sizes."""
    path = os.fspath(archive)
    with ArchiveReader(path) as reader:
        m = reader.manifest
        sizes = {e.path: e.size for e in m.members}
        exps = reader.read_table(T.EXPERIMENTS).to_pylist()
        runs = reader.read_table(T.RUNS).select(["experiment_id", "start_time", "end_time"])
        per_exp = Counter(runs.column("experiment_id").to_pylist())
        starts = [t for t in runs.column("start_time").to_pylist() if t is not None]
        ends = [t for t in runs.column("end_time").to_pylist() if t is not None]
        first = min(starts) if starts else None
        last = max(ends + starts) if starts or ends else None
        blobs = [e for e in m.members if e.path.startswith("blobs/")]
        return {
            "archive": path,
            "bytes": os.path.getsize(path) if os.path.isfile(path) else sum(sizes.values()),
            "digest": reader.digest,
            "format_version": m.format_version,
            "producer": dict(m.producer),
            "source": dict(m.source),
            "created_at": m.created_at,
            "selection": dict(m.selection),
            "counts": dict(m.counts),
            "experiments": [
                {
                    "experiment_id": e["experiment_id"],
                    "name": e["name"],
                    "lifecycle_stage": e["lifecycle_stage"],
                    "runs": per_exp.get(e["experiment_id"], 0),
                }
                for e in exps
            ],
            "time_span": {
                "first_ms": first,
                "last_ms": last,
                "first": _iso(first),
                "last": _iso(last),
            },
            "tables": {
                name: {"rows": t.rows, "bytes": sum(sizes.get(p, 0) for p in t.members)}
                for name, t in sorted(m.tables.items())
            },
            "blobs": {"members": len(blobs), "bytes": sum(b.size for b in blobs)},
        }


def render_summary(info: dict[str, Any]) -> str:
    """The summary as text for a person."""
    c = info["counts"]
    lines = [
        f"archive      {info['archive']} ({info['bytes']:,} bytes)",
        f"format       exim-archive {info['format_version']}"
        f" (written by exim-archive {info['producer'].get('version', '?')},"
        f" mlflow {info['producer'].get('mlflow', '?')})",
        f"digest       sha256:{info['digest']}",
        f"source       {info['source'].get('tracking_uri', '?')}",
        f"packed at    {info['created_at']}",
        f"time span    {info['time_span']['first'] or '-'} .. {info['time_span']['last'] or '-'}",
        "counts       " + ", ".join(f"{k} {v:,}" for k, v in sorted(c.items())),
        "experiments",
    ]
    for e in info["experiments"]:
        state = " (deleted)" if e["lifecycle_stage"] == "deleted" else ""
        lines.append(f"  {e['experiment_id']:>6}  {e['name']}{state}: {e['runs']} runs")
    lines.append("tables")
    for name, t in info["tables"].items():
        lines.append(f"  {name:<30} {t['rows']:>12,} rows {t['bytes']:>14,} bytes")
    b = info["blobs"]
    lines.append(f"  {'artifact blobs':<30} {b['members']:>12,} files {b['bytes']:>13,} bytes")
    return "\n".join(lines)
