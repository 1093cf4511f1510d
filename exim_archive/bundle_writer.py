"""The bundle writer: records in, one archive file out.

Members are staged in a directory beside the destination, then written into a ZIP in one fixed
order (``manifest.json``, ``manifest.sha256``, then every other member sorted by name) with fixed
timestamps and modes, under a temporary name that is renamed onto the destination only when the
file is complete. Same records, same tool versions, same ``created_at``: same bytes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

from . import tables as T
from .artifact_roots import files_under
from .errors import UsageError
from .manifest import (
    FORMAT_VERSION,
    MANIFEST_DIGEST_MEMBER,
    MANIFEST_MEMBER,
    Manifest,
    MemberEntry,
    TableEntry,
    digest_line,
)
from .records import ArtifactRecord, ExperimentRecord, RunRecord

__all__ = ["FAMILY_COUNTS", "METRIC_PART_ROWS", "ROW_GROUP_ROWS", "ArchiveWriter"]

FAMILY_COUNTS = {
    "registered_models": "registered_models",
    "model_versions": "model_versions",
    "aliases": "registered_model_aliases",
    "logged_models": "logged_models",
    "logged_model_artifacts": "logged_model_artifacts",
    "traces": "traces",
    "spans": "spans",
    "assessments": "assessments",
    "evaluation_datasets": "evaluation_datasets",
    "evaluation_dataset_records": "evaluation_dataset_records",
}
"""manifest ``counts`` name -> the 1.1 table whose row count it is (prompts are counted apart:
they are the ``registered_models`` rows of kind ``prompt``, included in that count)."""

ROW_GROUP_ROWS = 65_536
RUNS_HELD = 1000
"""Runs the writer holds as Python records before it writes their rows to the run tables (what
a pack holds of its runs stays this many records and a row group per table, whatever the number
of runs)."""
METRIC_PART_ROWS = 64 * ROW_GROUP_ROWS
ZSTD_LEVEL = 3
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_COMPRESS_MIN_SIZE = 64
_COMPRESS_MAX_RATIO = 0.9
_IN_MEMORY_SIZE = 256 * 1024
"""Files up to this size are compressed in memory (zstandard's one-shot ``compress`` gives the
same frame as ``copy_stream`` at these sizes: a single block)."""
_HELD_BYTES = 64 * 1024 * 1024
"""Most bytes of small blobs held in memory until the archive is written; later ones are
staged as files (memory stays bounded whatever the number of runs)."""


def _keeps_compressed(size: int, packed_size: int) -> bool:
    """The format's rule for a blob's zstd form: only for files of at least 64 bytes whose
    frame is at most 90 % of the original size (spec/1.0/format.md)."""
    return size >= _COMPRESS_MIN_SIZE and packed_size <= size * _COMPRESS_MAX_RATIO


def _parquet_writer(
    path: Path, spec: T.TableSpec, timestamps: str = "DELTA_BINARY_PACKED"
) -> pq.ParquetWriter:
    """A writer with the format's settings (spec/1.0/format.md §6.2); ``timestamps`` is the
    encoding of a metrics part's ``timestamp`` column (:func:`_timestamp_encoding`)."""
    schema = spec.schema.with_metadata(
        {"exim.table": spec.name, "exim.schema_version": T.SCHEMA_VERSION}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {}
    if spec is T.METRICS:
        options = {
            "use_dictionary": ["run_id", "key"],
            "column_encoding": {
                "step": "DELTA_BINARY_PACKED",
                "timestamp": timestamps,
                "value": "BYTE_STREAM_SPLIT",
            },
        }
    return pq.ParquetWriter(
        str(path),
        schema,
        compression="zstd",
        compression_level=ZSTD_LEVEL,
        write_statistics=True,
        write_page_index=True,
        **options,
    )


def _timestamp_encoding(group: pa.Table) -> str:
    """``PLAIN`` if it makes the ``timestamp`` column of a part's first row group smaller
    under zstd than ``DELTA_BINARY_PACKED`` does, else ``DELTA_BINARY_PACKED``.

    Delta encoding suits one long history with timestamps of its own; it pays every time the
    timestamps jump back, at each new key and run, and cannot see that a run's keys repeat the
    same timestamps (MLflow logs a step's metrics together), which zstd finds in plain values:
    1,000 runs x 2 keys x 20 steps 3.0 -> 1.2 bytes a point; the benchmark's 40 x 10 x 500
    0.66 -> 0.31; one run of 200,000 points with timestamps of its own 1.2 (delta) vs 2.1."""
    column = group.select(["timestamp"])
    sizes: dict[str, int] = {}
    for encoding in ("DELTA_BINARY_PACKED", "PLAIN"):
        sink = pa.BufferOutputStream()
        pq.write_table(
            column,
            sink,
            compression="zstd",
            compression_level=ZSTD_LEVEL,
            use_dictionary=False,
            column_encoding={"timestamp": encoding},
            write_statistics=False,
        )
        sizes[encoding] = sink.tell()
    return "PLAIN" if sizes["PLAIN"] < sizes["DELTA_BINARY_PACKED"] else "DELTA_BINARY_PACKED"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _RowGroups:
    """Tables appended in order, written as row groups of exactly :data:`ROW_GROUP_ROWS` rows
    (the last may be shorter): the file's bytes do not depend on how the rows were split into
    appends, and at most one row group's rows wait in memory."""

    def __init__(self) -> None:
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.rows = 0

    def append(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        while self._pending_rows >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)
        if len(self._pending) == 1 and self._pending_rows < table.num_rows:
            # the rest of a long table: copy it out, so the whole table is not kept for it
            rest = self._pending[0]
            self._pending = [rest.take(pa.array(range(rest.num_rows), pa.int32()))]

    def _flush(self, rows: int) -> None:
        # slicing a chunked table is free: only the row group written is copied together
        merged = pa.concat_tables(self._pending)
        head = merged.slice(0, rows)
        tail = merged.slice(rows)
        self._pending = [tail] if tail.num_rows else []
        self._pending_rows = tail.num_rows
        self._write(head)

    def _write(self, group: pa.Table) -> None:
        """Write one row group; ``group`` may be in several chunks (combine them first, so how
        the rows came cannot reach the file)."""
        raise NotImplementedError

    def _finish(self) -> None:
        if self._pending_rows:
            self._flush(self._pending_rows)


class _TableWriter(_RowGroups):
    """One table's single member, written as its rows arrive (already in the table's order)."""

    def __init__(self, directory: Path, spec: T.TableSpec) -> None:
        super().__init__()
        self.spec = spec
        self._writer = _parquet_writer(directory / spec.member, spec)

    def _write(self, group: pa.Table) -> None:
        self._writer.write_table(group.combine_chunks(), row_group_size=ROW_GROUP_ROWS)

    def discard(self) -> None:
        """Close the file without finishing it (the caller removes it)."""
        self._pending = []
        self._writer.close()

    def close(self) -> TableEntry:
        self._finish()
        if not self.rows:  # an empty table is one empty row group, as a whole-table write makes
            self._writer.write_table(self.spec.schema.empty_table())
        self._writer.close()
        return TableEntry(self.spec.name, (self.spec.member,), self.rows, T.SCHEMA_VERSION)


class _MetricsWriter(_RowGroups):
    """Writes metric points in arrival order, as fixed-size row groups split into parts."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self._dir = directory
        self._writer: pq.ParquetWriter | None = None
        self._part_rows = 0
        self.parts: list[str] = []

    def _write(self, group: pa.Table) -> None:
        head = group.cast(T.METRICS.schema).combine_chunks()
        if self._writer is None or self._part_rows >= METRIC_PART_ROWS:
            self._open_part(head)
        assert self._writer is not None
        self._writer.write_table(head, row_group_size=ROW_GROUP_ROWS)
        self._part_rows += head.num_rows

    def _open_part(self, first: pa.Table | None) -> None:
        """A new part; its timestamp encoding chosen on its ``first`` row group (None: empty)."""
        if self._writer is not None:
            self._writer.close()
        name = f"tables/metrics/part-{len(self.parts):05d}.parquet"
        self.parts.append(name)
        encoding = "DELTA_BINARY_PACKED" if first is None else _timestamp_encoding(first)
        self._writer = _parquet_writer(self._dir.parent.parent / name, T.METRICS, encoding)
        self._part_rows = 0

    def close(self) -> None:
        self._finish()
        if self._writer is None:
            self._open_part(None)
        assert self._writer is not None
        self._writer.close()


SORT_WHOLE_ROWS = 1_000_000


def _sorted_by_key(table: pa.Table) -> Iterator[pa.Table]:
    """One run's points in the metrics table's order (run_id is the same on every row, so the
    order is the rest of the sort key). A long history is sorted one metric key at a time, so
    sorting copies a key's points, never the whole run's."""
    order = [(c, "ascending") for c in T.METRICS.sort_key if c != "run_id"]
    if table.num_rows <= SORT_WHOLE_ROWS:
        yield table.sort_by(order)
        return
    keys = table.column("key")
    for key in sorted(pc.unique(keys).to_pylist(), key=lambda k: k.encode("utf-8")):
        yield table.filter(pc.equal(keys, key)).sort_by(order)


def check_destination(destination: str | os.PathLike[str], overwrite: bool) -> Path:
    """The destination as a Path, or a UsageError if an archive cannot be written there."""
    path = Path(destination)
    if path.is_dir():
        raise UsageError("is a directory", where=str(path), hint="name a file")
    if path.exists() and not overwrite:
        raise UsageError("already exists", where=str(path), hint="pass --force to replace it")
    if not path.parent.is_dir():
        raise UsageError(
            "the folder does not exist",
            where=str(path.parent),
            hint="create it or pick another path",
        )
    return path


class ArchiveWriter:
    """Collects records, metric points and artifact files; ``finish`` writes the archive."""

    def __init__(
        self,
        destination: str | os.PathLike[str],
        *,
        created_at: str,
        producer: Mapping[str, str],
        source: Mapping[str, Any],
        selection: Mapping[str, Any],
        overwrite: bool = False,
    ) -> None:
        self.destination = Path(destination)
        if self.destination.is_dir():
            raise UsageError("is a directory", where=str(self.destination), hint="name a file")
        if self.destination.exists() and not overwrite:
            raise UsageError(
                "already exists", where=str(self.destination), hint="pass --force to replace it"
            )
        parent = self.destination.parent
        if not parent.is_dir():
            raise UsageError(
                "the folder does not exist",
                where=str(parent),
                hint="create it or pick another path",
            )
        tag = f"{os.getpid()}"
        self._staging = parent / f".{self.destination.name}.staging-{tag}"
        self._partial = parent / f".{self.destination.name}.partial-{tag}"
        shutil.rmtree(self._staging, ignore_errors=True)
        (self._staging / "blobs").mkdir(parents=True)
        self._created_at = created_at
        self._producer = dict(producer)
        self._source = dict(source)
        self._selection = dict(selection)
        self._experiments: list[ExperimentRecord] = []
        self._runs: list[RunRecord] = []
        """Runs added since the last :meth:`_flush_runs`."""
        self._run_tables = {spec.name: _TableWriter(self._staging, spec) for spec in _RUN_TABLES}
        """The run tables, written :data:`RUNS_HELD` runs at a time as runs arrive (in run id
        order, so each table's rows arrive in its order)."""
        self._last_run_id = ""
        self._run_count = 0
        self._deleted_runs = 0
        self._artifacts: list[ArtifactRecord] = []
        self._blobs: dict[str, tuple[str, str]] = {}
        self._held: dict[str, bytes] = {}
        """Small blob members kept in memory until :meth:`finish` (up to :data:`_HELD_BYTES`)."""
        self._held_bytes = 0
        self._rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        """Rows of the tables format 1.1 added (registry, logged models, traces, datasets)."""
        self._metrics = _MetricsWriter(self._staging / "tables" / "metrics")
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False)

    # -- adding content ---------------------------------------------------------------------

    def add_experiment(self, record: ExperimentRecord) -> None:
        self._experiments.append(record)

    def add_run(
        self, record: RunRecord, metrics: pa.Table | Iterable[pa.Table] | None = None
    ) -> None:
        """Add a run and its metric points; runs must come in ``run_id`` order. ``metrics`` is
        one table, or tables one metric key each in key (UTF-8 byte) order."""
        if self._run_count and record.run_id <= self._last_run_id:
            raise ValueError("runs must be added in increasing run_id order")
        self._last_run_id = record.run_id
        self._run_count += 1
        self._deleted_runs += record.deleted
        self._runs.append(record)
        if len(self._runs) >= RUNS_HELD:
            self._flush_runs()
        for part in [metrics] if isinstance(metrics, pa.Table) else metrics or []:
            self._add_points(part)

    def _add_points(self, metrics: pa.Table) -> None:
        if metrics.num_rows:
            table = metrics.select(T.METRICS.schema.names)
            if table.schema.field("run_id").type != T.RUN_ID_DICT:
                # pending points keep run ids dictionary-encoded until a row group is written
                table = table.set_column(0, "run_id", pc.dictionary_encode(table.column("run_id")))
            table = table.cast(T.METRIC_POINTS)
            for piece in _sorted_by_key(table):
                self._metrics.append(piece)

    def add_artifact(self, run_id: str, path: str, local_file: Path) -> ArtifactRecord:
        """Store one artifact file's bytes (deduplicated by content) and index it."""
        record = self._blob_record(run_id, path, local_file)
        self._artifacts.append(record)
        return record

    def add_model_artifact(self, model_id: str, path: str, local_file: Path) -> None:
        """Store one artifact file of a logged model (same blob store as the runs' files)."""
        rec = self._blob_record(model_id, path, local_file)
        self._rows[T.LOGGED_MODEL_ARTIFACTS.name].append(
            {
                "model_id": model_id,
                "path": rec.path,
                "size": rec.size,
                "sha256": rec.sha256,
                "member": rec.member,
                "compression": rec.compression,
            }
        )

    def add_rows(self, rows: Mapping[str, Iterable[dict[str, Any]]]) -> None:
        """Add rows to the tables of the families format 1.1 added; order does not matter."""
        for name, items in rows.items():
            if name not in T.TABLES or T.TABLES[name].since == "1.0":
                raise ValueError(f"add_rows is for the 1.1 family tables, not {name!r}")
            self._rows[name].extend(items)

    def _blob_record(self, owner: str, path: str, local_file: Path) -> ArtifactRecord:
        """A file up to :data:`_IN_MEMORY_SIZE` is read once (hash, size and blob from the same
        bytes); a larger one is hashed, then streamed into its blob."""
        data: bytes | None = None
        size = local_file.stat().st_size
        if size <= _IN_MEMORY_SIZE:
            data = local_file.read_bytes()
            sha, size = hashlib.sha256(data).hexdigest(), len(data)
        else:
            sha = _sha256_file(local_file)
        if sha not in self._blobs:
            self._blobs[sha] = (
                self._hold_blob(sha, data)
                if data is not None
                else self._store_blob(sha, size, local_file)
            )
        member, compression = self._blobs[sha]
        return ArtifactRecord(owner, path, size, sha, member, compression)

    def _hold_blob(self, sha: str, data: bytes) -> tuple[str, str]:
        """A small file's blob, compressed or not as decided in memory, and held there until
        the archive is written (within :data:`_HELD_BYTES`; staged as a file past that): a
        staging file, its re-read for the manifest and its copy into the archive cost ~1.5 ms
        a blob on this disk, whatever its size. zstandard's one-shot ``compress`` gives the
        same frame as ``copy_stream`` at these sizes (a single block): same bytes either way."""
        member, compression, payload = f"blobs/{sha}", "none", data
        packed = self._compressor.compress(data) if len(data) >= _COMPRESS_MIN_SIZE else data
        if _keeps_compressed(len(data), len(packed)):
            member, compression, payload = f"blobs/{sha}.zst", "zstd", packed
        if self._held_bytes + len(payload) <= _HELD_BYTES:
            self._held[member] = payload
            self._held_bytes += len(payload)
        else:
            (self._staging / member).write_bytes(payload)
        return member, compression

    def _store_blob(self, sha: str, size: int, local_file: Path) -> tuple[str, str]:
        """A large file's blob (over :data:`_IN_MEMORY_SIZE`), streamed through the compressor
        into a staging file, kept where :func:`_keeps_compressed`, else copied as it is."""
        raw_member = f"blobs/{sha}"
        member = raw_member + ".zst"
        target = self._staging / member
        with open(local_file, "rb") as src, open(target, "wb") as dst:
            self._compressor.copy_stream(src, dst, size=size)
        if _keeps_compressed(size, target.stat().st_size):
            return member, "zstd"
        target.unlink()
        shutil.copyfile(local_file, self._staging / raw_member)
        return raw_member, "none"

    # -- finishing ----------------------------------------------------------------------------

    def _flush_runs(self) -> None:
        """Write the runs held as records to the run tables. Runs come in run id order and each
        table's order starts with the run id, so sorting a chunk's rows puts them in place."""
        rows = _run_rows(self._runs)
        for spec in _RUN_TABLES:
            table = pa.Table.from_pylist(rows[spec.name], schema=spec.schema)
            self._run_tables[spec.name].append(
                table.sort_by([(c, "ascending") for c in spec.sort_key])
            )
        self._runs = []

    def _write_table(self, spec: T.TableSpec, rows: Iterable[dict[str, Any]]) -> TableEntry:
        return self._write_arrow(spec, pa.Table.from_pylist(list(rows), schema=spec.schema))

    def _write_arrow(self, spec: T.TableSpec, table: pa.Table) -> TableEntry:
        """Sort ``table`` by the table's key and write it; one chunk first, so its layout in
        memory (how many parts it came in) cannot reach the file."""
        if table.num_rows:
            table = table.combine_chunks().sort_by([(c, "ascending") for c in spec.sort_key])
        writer = _parquet_writer(self._staging / spec.member, spec)
        writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        writer.close()
        return TableEntry(spec.name, (spec.member,), table.num_rows, T.SCHEMA_VERSION)

    def _tables(self) -> dict[str, TableEntry]:
        exps = self._experiments
        self._flush_runs()
        entries = [
            self._write_table(
                T.EXPERIMENTS,
                (
                    {
                        "experiment_id": e.experiment_id,
                        "name": e.name,
                        "artifact_location": e.artifact_location,
                        "lifecycle_stage": e.lifecycle_stage,
                        "creation_time": e.creation_time,
                        "last_update_time": e.last_update_time,
                        "source_json": e.source_json,
                    }
                    for e in exps
                ),
            ),
            self._write_table(
                T.EXPERIMENT_TAGS,
                (
                    {"experiment_id": e.experiment_id, "key": k, "value": v}
                    for e in exps
                    for k, v in e.tags
                ),
            ),
            *(writer.close() for writer in self._run_tables.values()),
            self._write_table(
                T.ARTIFACTS,
                (
                    {
                        "run_id": a.run_id,
                        "path": a.path,
                        "size": a.size,
                        "sha256": a.sha256,
                        "member": a.member,
                        "compression": a.compression,
                    }
                    for a in self._artifacts
                ),
            ),
        ]
        entries.extend(
            self._write_table(spec, self._rows.get(spec.name, []))
            for spec in T.TABLES.values()
            if spec.since != "1.0"
        )
        self._metrics.close()
        entries.append(
            TableEntry("metrics", tuple(self._metrics.parts), self._metrics.rows, T.SCHEMA_VERSION)
        )
        return {e.name: e for e in entries}

    def _counts(self, tables: Mapping[str, TableEntry]) -> dict[str, int]:
        return {
            "experiments": len(self._experiments),
            "deleted_experiments": sum(e.deleted for e in self._experiments),
            "experiment_tags": tables["experiment_tags"].rows,
            "runs": self._run_count,
            "deleted_runs": self._deleted_runs,
            "params": tables["run_params"].rows,
            "tags": tables["run_tags"].rows,
            "dataset_inputs": tables["dataset_inputs"].rows,
            "metric_points": tables["metrics"].rows,
            "artifacts": len(self._artifacts),
            "artifact_bytes": sum(a.size for a in self._artifacts),
            **{name: tables[table].rows for name, table in FAMILY_COUNTS.items()},
            "prompts": sum(
                1 for r in self._rows.get("registered_models", []) if r["kind"] == "prompt"
            ),
        }

    def finish(self) -> tuple[Manifest, str]:
        """Write the archive and rename it into place; returns the manifest and its digest."""
        tables = self._tables()
        members = []
        for rel, path in files_under(self._staging):
            members.append(MemberEntry(rel, path.stat().st_size, _sha256_file(path)))
        for name, data in self._held.items():
            members.append(MemberEntry(name, len(data), hashlib.sha256(data).hexdigest()))
        members.sort(key=lambda m: m.path)
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            created_at=self._created_at,
            producer=self._producer,
            source=self._source,
            selection=self._selection,
            counts=self._counts(tables),
            members=tuple(members),
            tables=tables,
        )
        manifest_bytes = manifest.to_bytes()
        digest_bytes = digest_line(manifest_bytes)
        with zipfile.ZipFile(self._partial, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            _write_member(zf, MANIFEST_MEMBER, manifest_bytes)
            _write_member(zf, MANIFEST_DIGEST_MEMBER, digest_bytes)
            for entry in members:
                held = self._held.get(entry.path)
                if held is not None:
                    _write_member(zf, entry.path, held)
                else:
                    _copy_member(zf, entry, self._staging / entry.path)
        with open(self._partial, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(self._partial, self.destination)
        shutil.rmtree(self._staging, ignore_errors=True)
        return manifest, digest_bytes[:64].decode("ascii")

    def abort(self) -> None:
        """Remove everything this writer made; the destination is left untouched."""
        self._held.clear()
        for writer in self._run_tables.values():
            writer.discard()
        shutil.rmtree(self._staging, ignore_errors=True)
        self._partial.unlink(missing_ok=True)


_RUN_TABLES = (T.RUNS, T.RUN_PARAMS, T.RUN_TAGS, T.DATASET_INPUTS, T.DATASET_INPUT_TAGS)


def _run_rows(runs: list[RunRecord]) -> dict[str, list[dict[str, Any]]]:
    """The rows of :data:`_RUN_TABLES` that ``runs`` make, by table name."""
    return {
        T.RUNS.name: [
            {
                "run_id": r.run_id,
                "experiment_id": r.experiment_id,
                "run_name": r.run_name,
                "user_id": r.user_id,
                "status": r.status,
                "start_time": r.start_time,
                "end_time": r.end_time,
                "lifecycle_stage": r.lifecycle_stage,
                "artifact_uri": r.artifact_uri,
                "source_json": r.source_json,
            }
            for r in runs
        ],
        T.RUN_PARAMS.name: [
            {"run_id": r.run_id, "key": k, "value": v} for r in runs for k, v in r.params
        ],
        T.RUN_TAGS.name: [
            {"run_id": r.run_id, "key": k, "value": v} for r in runs for k, v in r.tags
        ],
        T.DATASET_INPUTS.name: [
            {
                "run_id": r.run_id,
                "dataset_name": d.name,
                "dataset_digest": d.digest,
                "source_type": d.source_type,
                "source": d.source,
                "schema": d.schema,
                "profile": d.profile,
            }
            for r in runs
            for d in r.inputs
        ],
        T.DATASET_INPUT_TAGS.name: [
            {
                "run_id": r.run_id,
                "dataset_name": d.name,
                "dataset_digest": d.digest,
                "key": k,
                "value": v,
            }
            for r in runs
            for d in r.inputs
            for k, v in d.tags
        ],
    }


def _zip_info(name: str, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3
    info.external_attr = 0o100644 << 16
    info.file_size = size
    return info


def _write_member(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    with zf.open(_zip_info(name, len(data)), "w") as out:
        out.write(data)


def _copy_member(zf: zipfile.ZipFile, entry: MemberEntry, source: Path) -> None:
    with open(source, "rb") as src, zf.open(_zip_info(entry.path, entry.size), "w") as out:
        shutil.copyfileobj(src, out, 1 << 20)
