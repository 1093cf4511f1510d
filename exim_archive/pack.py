"""``pack``: a tracking server in, one archive file out.

Runs are fetched by a bounded pool of workers (metric histories and artifact downloads overlap)
and handed to the bundle writer strictly in ``run_id`` order, so the bytes do not depend on the
pool size or on which call returns first.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from . import __version__
from .bundle_writer import ArchiveWriter, check_destination
from .pool import ordered_map
from .progress import Progress
from .records import RunRecord
from .source import MlflowSource
from .uri import resolve_tracking_uri

__all__ = ["PackReport", "pack"]


@dataclass(frozen=True)
class PackReport:
    """What ``pack`` wrote."""

    archive: str
    digest: str
    counts: dict[str, int]
    bytes: int
    seconds: float
    retries: int = 0
    warnings: list[str] = field(default_factory=list)


def _created_at() -> str:
    """Now in UTC, or ``SOURCE_DATE_EPOCH`` when set (reproducible archives)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (
        datetime.fromtimestamp(int(epoch), tz=timezone.utc)
        if epoch and epoch.isdigit()
        else datetime.now(timezone.utc)
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _producer() -> dict[str, str]:
    import mlflow
    import zstandard

    return {
        "name": "exim-archive",
        "version": __version__,
        "mlflow": mlflow.__version__,
        "pyarrow": pa.__version__,
        "zstandard": zstandard.__version__,
    }


CHUNK_POINTS = 2_000_000
CHUNK_RUNS = 500


def _chunks(runs: list[RunRecord]) -> Iterator[list[RunRecord]]:
    """Runs in order, in groups whose histories (by their latest steps) fit in memory at once."""
    chunk: list[RunRecord] = []
    points = 0
    for run in runs:
        size = sum(max(1, s + 1) for s in run.metric_last_steps)
        if chunk and (len(chunk) >= CHUNK_RUNS or points + size > CHUNK_POINTS):
            yield chunk
            chunk, points = [], 0
        chunk.append(run)
        points += size
    if chunk:
        yield chunk


def pack(
    archive: str | os.PathLike[str],
    *,
    tracking_uri: str | None = None,
    experiments: list[str] | None = None,
    artifacts: bool = True,
    overwrite: bool = False,
    workers: int = 8,
    progress: bool | None = None,
) -> PackReport:
    """Pack experiments (all, deleted included, when ``experiments`` is None) into ``archive``.

    The file appears only when complete (written under a temporary name, then renamed); an
    existing file is replaced only with ``overwrite``.
    """
    started = time.perf_counter()
    check_destination(archive, overwrite)
    source = MlflowSource(resolve_tracking_uri(tracking_uri))
    selected = source.experiments(experiments or None)
    runs = source.runs([e.experiment_id for e in selected])
    writer = ArchiveWriter(
        archive,
        created_at=_created_at(),
        producer=_producer(),
        source=source.describe(),
        selection={
            "experiments": list(experiments) if experiments else None,
            "experiment_ids": [e.experiment_id for e in selected],
            "artifacts": artifacts,
        },
        overwrite=overwrite,
    )
    try:
        for exp in selected:
            writer.add_experiment(exp)
        downloads = (
            Path(str(writer.destination.parent)) / f".{writer.destination.name}.dl-{os.getpid()}"
        )
        bar = Progress("pack", len(runs), enabled=progress)

        def fetch(run: RunRecord) -> tuple[RunRecord, list[tuple[str, Path]]]:
            files = source.download_artifacts(run, downloads / run.run_id) if artifacts else []
            return run, files

        for chunk in _chunks(runs):
            histories = source.metric_histories(chunk, workers)
            for run, files in ordered_map(fetch, chunk, workers):
                writer.add_run(run, histories.pop(run.run_id))
                for path, local in files:
                    writer.add_artifact(run.run_id, path, local)
                shutil.rmtree(downloads / run.run_id, ignore_errors=True)
                bar.advance()
        bar.close()
        shutil.rmtree(downloads, ignore_errors=True)
        manifest, digest = writer.finish()
    except BaseException:
        writer.abort()
        shutil.rmtree(
            Path(str(writer.destination.parent)) / f".{writer.destination.name}.dl-{os.getpid()}",
            ignore_errors=True,
        )
        raise
    return PackReport(
        archive=str(writer.destination),
        digest=digest,
        counts=dict(manifest.counts),
        bytes=writer.destination.stat().st_size,
        seconds=time.perf_counter() - started,
        retries=source.call.retries,
        warnings=list(source.notes),
    )
