"""The bundle reader: one archive in, records and metric batches out.

Opening reads ``manifest.json`` first (version dispatch lives in :mod:`.manifest`) and checks it
against ``manifest.sha256``. Tables are read straight out of the archive, one row group at a time
for metrics; member hashes are checked by :mod:`.verify`, which ``unpack`` runs before it writes.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from . import tables as T
from .container import Container, open_container
from .errors import ArchiveFormatError
from .manifest import (
    MANIFEST_DIGEST_MEMBER,
    MANIFEST_MEMBER,
    MAX_MANIFEST_BYTES,
    Manifest,
    parse_digest_line,
    parse_manifest,
)
from .records import ArtifactRecord, DatasetInputRecord, ExperimentRecord, RunRecord

__all__ = ["ArchiveReader"]

_PARQUET_ERRORS = (pa.ArrowException, OSError, ValueError, IndexError, KeyError, TypeError)


class ArchiveReader:
    """Read access to one archive (file or extracted directory)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.container: Container = open_container(self.path)
        try:
            for needed in (MANIFEST_MEMBER, MANIFEST_DIGEST_MEMBER):
                if not self.container.has(needed):
                    raise ArchiveFormatError(
                        f"has no {needed}",
                        where=self.path,
                        hint="it is not an exim archive, or it is damaged",
                    )
            raw = self.container.read(MANIFEST_MEMBER, MAX_MANIFEST_BYTES)
            declared = parse_digest_line(self.container.read(MANIFEST_DIGEST_MEMBER, 4096))
            actual = hashlib.sha256(raw).hexdigest()
            if actual != declared:
                raise ArchiveFormatError(
                    "does not match manifest.sha256",
                    where=self.container.where(MANIFEST_MEMBER),
                    hint="the archive was damaged in transit; re-copy it",
                )
            self.digest = actual
            self.manifest: Manifest = parse_manifest(raw)
        except BaseException:
            self.container.close()
            raise

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tables -------------------------------------------------------------------------------

    def table_members(self, name: str) -> tuple[str, ...]:
        entry = self.manifest.tables.get(name)
        if entry is None:
            raise ArchiveFormatError(
                f"lists no table '{name}'", where=self.container.where(MANIFEST_MEMBER)
            )
        return entry.members

    def parquet_file(self, spec: T.TableSpec, member: str) -> pq.ParquetFile:
        """Open one Parquet member and check it has the spec's schema."""
        where = self.container.where(member)
        if not self.container.has(member):
            raise ArchiveFormatError(
                "is listed but missing", where=where, hint="re-copy the archive"
            )
        try:
            pf = pq.ParquetFile(self.container.arrow_file(member))
            schema = pf.schema_arrow
        except _PARQUET_ERRORS as exc:
            raise ArchiveFormatError(
                f"is not a readable Parquet file ({exc})", where=where, hint="re-copy the archive"
            ) from None
        problem = schema_problem(spec, schema)
        if problem:
            raise ArchiveFormatError(problem, where=where)
        return pf

    def read_table(self, spec: T.TableSpec) -> pa.Table:
        """A whole (small) table, checked against its schema."""
        parts = []
        for member in self.table_members(spec.name):
            pf = self.parquet_file(spec, member)
            try:
                parts.append(pf.read().cast(spec.schema))
            except _PARQUET_ERRORS as exc:
                raise ArchiveFormatError(
                    f"cannot be decoded ({exc})", where=self.container.where(member)
                ) from None
        if not parts:
            return spec.schema.empty_table()
        return pa.concat_tables(parts)

    def iter_metric_batches(self) -> Iterator[pa.RecordBatch]:
        """Metric points in archive order, one row group at a time."""
        for member in self.table_members(T.METRICS.name):
            pf = self.parquet_file(T.METRICS, member)
            try:
                for i in range(pf.num_row_groups):
                    yield from pf.read_row_group(i).cast(T.METRICS.schema).to_batches()
            except _PARQUET_ERRORS as exc:
                raise ArchiveFormatError(
                    f"cannot be decoded ({exc})", where=self.container.where(member)
                ) from None

    def iter_run_metrics(self) -> Iterator[tuple[str, pa.Table]]:
        """``(run_id, points)`` for each run with metrics, in archive (run_id) order."""
        current: str | None = None
        pending: list[pa.Table] = []
        for batch in self.iter_metric_batches():
            table = pa.Table.from_batches([batch])
            run_ids = table.column("run_id")
            start = 0
            values = run_ids.to_pylist()
            for i in range(1, len(values) + 1):
                if i == len(values) or values[i] != values[start]:
                    run_id = values[start]
                    chunk = table.slice(start, i - start)
                    if run_id != current:
                        if current is not None:
                            yield current, pa.concat_tables(pending)
                        current, pending = run_id, []
                    pending.append(chunk)
                    start = i
        if current is not None:
            yield current, pa.concat_tables(pending)

    # -- records ------------------------------------------------------------------------------

    def experiments(self) -> list[ExperimentRecord]:
        tags = _grouped(self.read_table(T.EXPERIMENT_TAGS), "experiment_id")
        return [
            ExperimentRecord(
                experiment_id=row["experiment_id"],
                name=row["name"],
                artifact_location=row["artifact_location"],
                lifecycle_stage=row["lifecycle_stage"],
                creation_time=row["creation_time"],
                last_update_time=row["last_update_time"],
                tags=tuple(tags.get(row["experiment_id"], ())),
                source_json=row["source_json"],
            )
            for row in self.read_table(T.EXPERIMENTS).to_pylist()
        ]

    def runs(self) -> list[RunRecord]:
        params = _grouped(self.read_table(T.RUN_PARAMS), "run_id")
        tags = _grouped(self.read_table(T.RUN_TAGS), "run_id")
        input_tags: dict[tuple[str, str, str], list[tuple[str, str]]] = defaultdict(list)
        for row in self.read_table(T.DATASET_INPUT_TAGS).to_pylist():
            ident = (row["run_id"], row["dataset_name"], row["dataset_digest"])
            input_tags[ident].append((row["key"], row["value"]))
        inputs: dict[str, list[DatasetInputRecord]] = defaultdict(list)
        for row in self.read_table(T.DATASET_INPUTS).to_pylist():
            ident = (row["run_id"], row["dataset_name"], row["dataset_digest"])
            inputs[row["run_id"]].append(
                DatasetInputRecord(
                    name=row["dataset_name"],
                    digest=row["dataset_digest"],
                    source_type=row["source_type"],
                    source=row["source"],
                    schema=row["schema"],
                    profile=row["profile"],
                    tags=tuple(input_tags.get(ident, ())),
                )
            )
        return [
            RunRecord(
                run_id=row["run_id"],
                experiment_id=row["experiment_id"],
                run_name=row["run_name"],
                user_id=row["user_id"],
                status=row["status"],
                start_time=row["start_time"],
                end_time=row["end_time"],
                lifecycle_stage=row["lifecycle_stage"],
                artifact_uri=row["artifact_uri"],
                params=tuple(params.get(row["run_id"], ())),
                tags=tuple(tags.get(row["run_id"], ())),
                inputs=tuple(inputs.get(row["run_id"], ())),
                source_json=row["source_json"],
            )
            for row in self.read_table(T.RUNS).to_pylist()
        ]

    def artifacts(self) -> list[ArtifactRecord]:
        return [ArtifactRecord(**row) for row in self.read_table(T.ARTIFACTS).to_pylist()]

    # -- artifact bytes -----------------------------------------------------------------------

    def iter_artifact_bytes(self, record: ArtifactRecord) -> Iterator[bytes]:
        """The artifact's original bytes, decompressed with a hard cap at its declared size."""
        where = self.container.where(record.member)
        if not self.container.has(record.member):
            raise ArchiveFormatError(
                "is referenced by the artifacts table but missing", where=where
            )
        if record.compression == "none":
            yield from self.container.iter_chunks(record.member)
            return
        if record.compression != "zstd":
            raise ArchiveFormatError(f"has unknown compression {record.compression!r}", where=where)
        reader = zstandard.ZstdDecompressor().stream_reader(
            self.container.open(record.member), closefd=True
        )
        produced = 0
        try:
            while True:
                try:
                    chunk = reader.read(1 << 20)
                except zstandard.ZstdError as exc:
                    raise ArchiveFormatError(
                        f"is not valid zstd data ({exc})", where=where
                    ) from None
                if not chunk:
                    break
                produced += len(chunk)
                if produced > record.size:
                    raise ArchiveFormatError(
                        f"expands past its declared size of {record.size} bytes",
                        where=where,
                        hint="refusing a damaged or hostile archive",
                    )
                yield chunk
        finally:
            reader.close()

    def extract_artifact(self, record: ArtifactRecord, destination: Path) -> None:
        """Write one artifact file, checking its size and SHA-256 against the table."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        with open(destination, "wb") as out:
            for chunk in self.iter_artifact_bytes(record):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        if size != record.size or digest.hexdigest() != record.sha256:
            raise ArchiveFormatError(
                f"artifact {record.path!r} of run {record.run_id} does not match its size/sha256",
                where=self.container.where(record.member),
                hint="the archive is damaged; re-copy it",
            )


def schema_problem(spec: T.TableSpec, schema: pa.Schema) -> str | None:
    """Why ``schema`` is not the spec's schema for the table, or None."""
    meta = schema.metadata or {}
    table = meta.get(b"exim.table", b"").decode("utf-8", "replace")
    if table != spec.name:
        return f"says it holds table {table!r}, expected {spec.name!r}"
    if schema.names != spec.schema.names:
        return f"has columns {schema.names}, the spec says {spec.schema.names}"
    for got, want in zip(schema, spec.schema, strict=True):
        if not got.type.equals(want.type):
            return f"column {got.name} has type {got.type}, the spec says {want.type}"
        if got.nullable and not want.nullable:
            return f"column {got.name} is nullable, the spec says it is not"
    return None


def _grouped(table: pa.Table, column: str) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in table.to_pylist():
        out[row[column]].append((row["key"], row["value"]))
    return out
