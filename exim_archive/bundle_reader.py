"""The bundle reader: one archive in, records and metric batches out.

Opening reads ``manifest.json`` first (version dispatch lives in :mod:`.manifest`) and checks it
against ``manifest.sha256``. Tables are read straight out of the archive, one row group at a time
for metrics. No Parquet byte is parsed before the member's SHA-256 was checked against the manifest
(once per reader; the hashed buffer is the parsed one), and a footer that declares more than a
writer of the format ever writes is refused before any data is decoded. Artifact bytes are capped
at their declared size while they are decompressed; :mod:`.verify` checks everything else, and
``unpack`` runs it before it writes.

Every failure is an :class:`~.errors.ArchiveFormatError` naming the file and member: pyarrow,
zstandard and OS errors are translated here, never let through.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

from . import tables as T
from .container import Container, open_container, show_name
from .errors import ArchiveFormatError
from .manifest import (
    MANIFEST_DIGEST_MEMBER,
    MANIFEST_MEMBER,
    MAX_MANIFEST_BYTES,
    Manifest,
    MemberEntry,
    parse_digest_line,
    parse_manifest,
)
from .records import ArtifactRecord, DatasetInputRecord, ExperimentRecord, RunRecord
from .run_order import RunOrdered, in_run_order

__all__ = ["HELD_RUN_ROWS", "ArchiveReader", "RunPoints", "artifact_path_problem", "schema_problem"]

RUNS_AT_A_TIME = 1000
"""Runs :meth:`ArchiveReader.iter_runs` turns into Python objects at a time."""
BATCH_ROWS = 8192
"""Rows :meth:`ArchiveReader.iter_batches` decodes at a time."""
_RUN_ID_ONLY = pa.schema([T.METRICS.schema.field("run_id")])
_PARQUET_ERRORS = (
    pa.ArrowException,
    OSError,
    ValueError,  # UnicodeDecodeError included
    IndexError,
    KeyError,
    TypeError,
    OverflowError,
    NotImplementedError,
    MemoryError,
)
_ZSTD_ERRORS = (zstandard.ZstdError, OSError, ValueError, MemoryError)
_COUNTS = pa.schema([("run_id", pa.string()), ("rows", pa.int64())])

MAX_ROW_GROUP_ROWS = 1 << 22
"""Rows in one Parquet row group; the writer writes 65,536."""
MAX_ROW_GROUP_BYTES = 1 << 31
"""Uncompressed bytes one Parquet row group may declare (2 GiB): read one at a time."""
MAX_ROW_GROUPS = 1 << 20

_DRIVE = re.compile(r"[A-Za-z]:")


def artifact_path_problem(path: str) -> str | None:
    """Why an artifact path could escape or break a destination folder, or None."""
    if not path or len(path.encode("utf-8", "surrogatepass")) > 4096:
        return "is empty or longer than 4096 bytes"
    if "\x00" in path or "\\" in path or any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "contains a NUL, backslash or control character"
    if path.startswith("/") or _DRIVE.match(path):
        return "is absolute"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return "has an empty, '.' or '..' component"
        if len(part.encode("utf-8", "surrogatepass")) > 255:
            return "has a component longer than 255 bytes"
    return None


HELD_RUN_ROWS = 200_000
"""A run with more metric points than this is handed to unpack as row group references."""


@dataclass(frozen=True)
class _Segment:
    member: str
    group: int
    offset: int
    length: int


def _points_only(table: pa.Table) -> pa.Table:
    """The ``metrics`` columns but ``run_id``, with ``key`` dictionary-encoded: 28 bytes a
    point rather than ~70."""
    table = table.drop_columns(["run_id"])
    return table.set_column(0, "key", pc.dictionary_encode(table.column("key")))


class RunPoints:
    """One run's metric points: the ``metrics`` columns but ``run_id`` (``key``
    dictionary-encoded), held decoded or as references to the row groups that hold them."""

    def __init__(
        self,
        num_rows: int,
        *,
        table: pa.Table | None = None,
        parts: tuple[ArchiveReader, tuple[_Segment, ...]] | None = None,
    ) -> None:
        self.num_rows = num_rows
        self._table = table
        self._parts = parts

    def slices(self, rows: int) -> Iterator[pa.Table]:
        """The points in archive order, as tables of ``rows`` points (the last may be shorter);
        a referenced run decodes one row group at a time."""
        if self._table is not None:
            for offset in range(0, self._table.num_rows, rows):
                yield self._table.slice(offset, rows)
            return
        assert self._parts is not None
        reader, segments = self._parts

        def pieces() -> Iterator[pa.Table]:
            opened: dict[str, pq.ParquetFile] = {}
            for s in segments:
                if s.member not in opened:
                    opened.clear()
                    opened[s.member] = reader.parquet_file(T.METRICS, s.member)
                group = reader.metric_group(s.member, opened[s.member], s.group)
                yield _points_only(group.slice(s.offset, s.length))

        yield from _slices(pieces(), rows)


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
            try:
                declared = parse_digest_line(self.container.read(MANIFEST_DIGEST_MEMBER, 4096))
                actual = hashlib.sha256(raw).hexdigest()
                if actual != declared:
                    raise ArchiveFormatError(
                        "does not match manifest.sha256",
                        where=f"member {MANIFEST_MEMBER}",
                        hint="the archive was damaged in transit; re-copy it",
                    )
                self.manifest: Manifest = parse_manifest(raw)
            except ArchiveFormatError as exc:
                # the manifest module does not know the file: put it in front, keep the class
                raise type(exc)(
                    exc.message,
                    where=f"{self.path}: {exc.where}" if exc.where else self.path,
                    hint=exc.hint,
                ) from None
            self.digest = actual
        except BaseException:
            self.container.close()
            raise
        self._listed: dict[str, MemberEntry] = {m.path: m for m in self.manifest.members}
        self._verified: set[str] = set()

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

    def listed(self, member: str) -> MemberEntry:
        """The manifest's entry for a member that must be in the archive, or an error."""
        where = self.container.where(member)
        entry = self._listed.get(member)
        if entry is None:
            raise ArchiveFormatError(
                "is not listed in manifest.json", where=where, hint="refusing to read it"
            )
        if not self.container.has(member):
            raise ArchiveFormatError(
                "is listed in manifest.json but missing", where=where, hint="re-copy the archive"
            )
        if self.container.size(member) != entry.size:
            raise ArchiveFormatError(
                f"is {self.container.size(member)} bytes, manifest.json says {entry.size}",
                where=where,
                hint="the archive is damaged; re-copy it",
            )
        return entry

    def note_verified(self, member: str) -> None:
        """Record that ``member``'s bytes were checked against the manifest (by ``verify``)."""
        self._verified.add(member)

    def checked_buffer(self, member: str) -> pa.Buffer:
        """The member's bytes, checked against the manifest's size and SHA-256 before use."""
        entry = self.listed(member)
        buf = self.container.arrow_buffer(member)
        if member not in self._verified:
            if hashlib.sha256(memoryview(buf)).hexdigest() != entry.sha256:
                raise ArchiveFormatError(
                    "sha256 does not match manifest.json (damaged in transit?)",
                    where=self.container.where(member),
                    hint="re-copy the archive",
                )
            self._verified.add(member)
        return buf

    def parquet_file(self, spec: T.TableSpec, member: str) -> pq.ParquetFile:
        """Open one Parquet member and check its footer and that it has the spec's schema."""
        where = self.container.where(member)
        buf = self.checked_buffer(member)
        try:
            pf = pq.ParquetFile(pa.BufferReader(buf))
            schema = pf.schema_arrow
            problem = schema_problem(spec, schema) or _footer_problem(pf.metadata)
        except _PARQUET_ERRORS as exc:
            raise ArchiveFormatError(
                f"is not a readable Parquet file ({_reason(exc)})",
                where=where,
                hint="re-copy the archive",
            ) from None
        if problem:
            raise ArchiveFormatError(
                problem, where=where, hint="refusing a damaged or hostile file"
            )
        return pf

    def absent_by_version(self, spec: T.TableSpec) -> bool:
        """True for a table newer than the archive's format (a 1.0 archive has no traces)."""
        return spec.name not in self.manifest.tables and _version(spec.since) > _version(
            self.manifest.format_version
        )

    def read_table(self, spec: T.TableSpec) -> pa.Table:
        """A whole (small) table, checked against its schema; empty if the archive's format
        predates the table."""
        if self.absent_by_version(spec):
            return spec.schema.empty_table()
        parts = []
        for member in self.table_members(spec.name):
            parts.append(self._decoded(member, self.parquet_file(spec, member).read, spec.schema))
        if not parts:
            return spec.schema.empty_table()
        return pa.concat_tables(parts)

    def iter_metric_batches(self) -> Iterator[pa.RecordBatch]:
        """Metric points in archive order, one row group at a time."""
        for member in self.table_members(T.METRICS.name):
            pf = self.parquet_file(T.METRICS, member)
            for i in range(pf.num_row_groups):
                yield from self.metric_group(member, pf, i).to_batches()

    def metric_group(self, member: str, pf: pq.ParquetFile, i: int) -> pa.Table:
        """Row group ``i`` of a metrics member, checked and cast to the table's schema."""
        return self._decoded(
            member, partial(pf.read_row_group, i), T.METRICS.schema, f"row group {i}"
        )

    def _decoded(
        self, member: str, read: Callable[[], pa.Table], schema: pa.Schema, part: str = ""
    ) -> pa.Table:
        """``read()``, rows of ``member``, checked and cast to ``schema``; an
        :class:`ArchiveFormatError` naming the member (and ``part`` of it) if they cannot be."""
        try:
            table = read()
            table.validate(full=True)
            return table.cast(schema)
        except _PARQUET_ERRORS as exc:
            raise ArchiveFormatError(
                f"{part + ' ' if part else ''}cannot be decoded ({_reason(exc)})",
                where=self.container.where(member),
            ) from None

    def iter_batches(
        self, spec: T.TableSpec, rows: int | None = None, columns: list[str] | None = None
    ) -> Iterator[pa.Table]:
        """A table's rows in archive order, up to ``rows`` (:data:`BATCH_ROWS`) at a time, each
        checked and cast to the table's schema (none if the archive's format predates the
        table); only ``columns`` if given. A row group is decoded a batch at a time: a
        65,536-row group of runs' text (their source JSON) takes tens of MB decoded whole."""
        if self.absent_by_version(spec):
            return
        schema = spec.schema
        if columns is not None:
            schema = pa.schema([spec.schema.field(name) for name in columns])
        for member in self.table_members(spec.name):
            batches = self.parquet_file(spec, member).iter_batches(
                batch_size=rows or BATCH_ROWS, columns=columns, use_threads=False
            )
            while True:
                try:  # decoding happens in next(): inside the check
                    table = self._decoded(member, partial(_next_table, batches), schema)
                except StopIteration:  # the member's rows are done
                    break
                yield table

    def in_run_order(self, spec: T.TableSpec) -> RunOrdered:
        """A run table's rows, handed out a chunk of runs at a time (:mod:`.run_order`)."""
        return RunOrdered(self._checked_order(spec, self.iter_batches(spec)), spec.schema)

    def _checked_order(self, spec: T.TableSpec, groups: Iterator[pa.Table]) -> Iterator[pa.Table]:
        members = self.table_members(spec.name)
        where = self.container.where(members[0]) if len(members) == 1 else self.path
        return in_run_order(groups, spec.name, where)

    def metric_counts(self) -> RunOrdered:
        """``(run_id, rows)``: the points each run holds, in run id order (only the ``run_id``
        column of ``metrics`` is decoded), handed out a chunk of runs at a time."""

        def counts() -> Iterator[pa.Table]:
            ids: list[str] = []
            rows: list[int] = []
            for run_id, segment in self._metric_segments():
                if ids and ids[-1] == run_id:
                    rows[-1] += segment.length
                    continue
                ids.append(run_id)
                rows.append(segment.length)
                if len(ids) >= RUNS_AT_A_TIME:
                    yield pa.table({"run_id": ids[:-1], "rows": rows[:-1]}, _COUNTS)
                    ids, rows = ids[-1:], rows[-1:]
            if ids:
                yield pa.table({"run_id": ids, "rows": rows}, _COUNTS)

        return RunOrdered(self._checked_order(T.METRICS, counts()), _COUNTS)

    def _metric_segments(self) -> Iterator[tuple[str, _Segment]]:
        """``(run_id, segment)`` for each stretch of one run's rows in a row group, in archive
        order: only the ``run_id`` column is decoded."""
        for member in self.table_members(T.METRICS.name):
            pf = self.parquet_file(T.METRICS, member)
            for i in range(pf.num_row_groups):
                column = self._decoded(
                    member,
                    partial(pf.read_row_group, i, columns=["run_id"]),
                    _RUN_ID_ONLY,
                    f"row group {i}",
                ).column(0)
                runs = pc.run_end_encode(column.combine_chunks())
                ends = runs.run_ends.to_pylist()
                ids = runs.values.to_pylist()
                start = 0
                for run_id, end in zip(ids, ends, strict=True):
                    yield run_id, _Segment(member, i, start, end - start)
                    start = end

    def iter_run_metrics(self) -> Iterator[tuple[str, RunPoints]]:
        """``(run_id, points)`` for each run with metrics, in archive (run_id) order.

        A run of at most :data:`HELD_RUN_ROWS` points comes decoded; a longer one as row group
        references that :meth:`RunPoints.slices` decodes one group at a time, on whichever
        thread asks, so a history of millions of points is never held whole."""
        current: str | None = None
        segments: list[_Segment] = []
        cache: dict[tuple[str, int], pa.Table] = {}
        opened: dict[str, pq.ParquetFile] = {}

        def group(member: str, i: int) -> pa.Table:
            if (member, i) not in cache:
                cache.clear()  # runs come in order: a group is needed again only right away
                if member not in opened:
                    opened.clear()
                    opened[member] = self.parquet_file(T.METRICS, member)
                cache[member, i] = _points_only(self.metric_group(member, opened[member], i))
            return cache[member, i]

        def finished() -> RunPoints:
            rows = sum(s.length for s in segments)
            if rows > HELD_RUN_ROWS:
                return RunPoints(rows, parts=(self, tuple(segments)))
            pieces = [group(s.member, s.group).slice(s.offset, s.length) for s in segments]
            return RunPoints(rows, table=pa.concat_tables(pieces))

        for run_id, segment in self._metric_segments():
            if run_id != current:
                if current is not None:
                    yield current, finished()
                current, segments = run_id, []
            segments.append(segment)
        if current is not None:
            yield current, finished()

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
        return [run for chunk in self.iter_runs() for run in chunk]

    def iter_runs(self, chunk: int | None = None) -> Iterator[list[RunRecord]]:
        """The runs in archive (run id) order, ``chunk`` at a time. Every run table is read a
        batch of rows at a time and merged by run id (:mod:`.run_order`); only one chunk's rows
        become Python objects, so a caller that lets each chunk go holds one chunk's runs and a
        batch per table, whatever the number of runs."""
        for runs, _ in self.iter_runs_with_artifacts(chunk):
            yield runs

    def iter_runs_with_artifacts(
        self, chunk: int | None = None
    ) -> Iterator[tuple[list[RunRecord], dict[str, list[ArtifactRecord]]]]:
        """:meth:`iter_runs`, each chunk with its runs' artifact records by run id."""
        chunk = chunk or RUNS_AT_A_TIME
        sides = [
            self.in_run_order(spec)
            for spec in (
                T.RUN_PARAMS,
                T.RUN_TAGS,
                T.DATASET_INPUT_TAGS,
                T.DATASET_INPUTS,
                T.ARTIFACTS,
            )
        ]
        counts = self.metric_counts()
        for rows in _slices(self._checked_order(T.RUNS, self.iter_batches(T.RUNS)), chunk):
            ids = rows.column("run_id").combine_chunks()
            params, tags, input_tags, inputs, artifacts = (side.of(ids) for side in sides)
            points = counts.of(ids)
            found: dict[str, list[ArtifactRecord]] = defaultdict(list)
            for row in artifacts.to_pylist():
                found[row["run_id"]].append(ArtifactRecord(**row))
            records = _run_records(rows, params, tags, input_tags, inputs, points)
            yield records, found

    def dangling_run_references(self, key: str) -> list[tuple[str, str]]:
        """``(run id, value)`` of the runs whose tag ``key`` names a run that is not in the
        archive (an empty value names none), in run id order; from the tables, no records,
        a batch at a time: what is kept is the run ids and the tags ``key`` names."""
        named = []
        for tags in self.iter_batches(T.RUN_TAGS, columns=["run_id", "key", "value"]):
            wanted = pc.and_(pc.equal(tags["key"], key), pc.not_equal(tags["value"], ""))
            named.append(tags.filter(wanted).select(["run_id", "value"]))
        found = pa.concat_tables(named) if named else None
        if found is None or not found.num_rows:
            return []
        ids = [
            chunk for b in self.iter_batches(T.RUNS, columns=["run_id"]) for chunk in b[0].chunks
        ]
        in_archive = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
        dangling = found.filter(pc.invert(pc.is_in(found.column("value"), value_set=in_archive)))
        return list(
            zip(
                dangling.column("run_id").to_pylist(),
                dangling.column("value").to_pylist(),
                strict=True,
            )
        )

    def iter_artifacts(self) -> Iterator[ArtifactRecord]:
        """The runs' files in archive order (by run, then path), read a batch at a time."""
        for batch in self.iter_batches(T.ARTIFACTS):
            for row in batch.to_pylist():
                yield ArtifactRecord(**row)

    def model_artifacts(self) -> list[ArtifactRecord]:
        """The logged models' files, as records whose ``run_id`` holds the model id."""
        return [
            ArtifactRecord(row["model_id"], *(row[c] for c in T.ARTIFACTS.schema.names[1:]))
            for row in self.read_table(T.LOGGED_MODEL_ARTIFACTS).to_pylist()
        ]

    def family_rows(self) -> dict[str, list[dict[str, Any]]]:
        """Every table format 1.1 added, as row dicts (empty lists for a 1.0 archive)."""
        return {
            spec.name: self.read_table(spec).to_pylist()
            for spec in T.TABLES.values()
            if spec.since != "1.0"
        }

    # -- artifact bytes -----------------------------------------------------------------------

    def iter_artifact_bytes(self, record: ArtifactRecord) -> Iterator[bytes]:
        """The artifact's original bytes, decompressed with a hard cap at its declared size."""
        where = self.container.where(record.member)
        if record.member not in self._listed or not self.container.has(record.member):
            raise ArchiveFormatError(
                "is referenced by the artifacts table but not in the archive",
                where=where,
                hint="the archive is damaged or hostile",
            )
        if record.compression == "none":
            chunks = self.container.iter_chunks(record.member)
        elif record.compression == "zstd":
            chunks = self._zstd_chunks(record.member, where)
        else:
            raise ArchiveFormatError(
                f"has unknown compression {show_name(record.compression)}", where=where
            )
        produced = 0
        for chunk in chunks:
            produced += len(chunk)
            if produced > record.size:
                raise ArchiveFormatError(
                    f"expands past its declared size of {record.size} bytes",
                    where=where,
                    hint="refusing a damaged or hostile archive",
                )
            yield chunk

    def _zstd_chunks(self, member: str, where: str) -> Iterator[bytes]:
        try:
            reader: Any = zstandard.ZstdDecompressor().stream_reader(
                self.container.open(member), closefd=True
            )
        except _ZSTD_ERRORS as exc:
            raise ArchiveFormatError(f"cannot be read ({_reason(exc)})", where=where) from None
        try:
            while True:
                try:
                    chunk = reader.read(1 << 20)
                except _ZSTD_ERRORS as exc:
                    raise ArchiveFormatError(
                        f"is not valid zstd data ({_reason(exc)})",
                        where=where,
                        hint="the archive is damaged; re-copy it",
                    ) from None
                if not chunk:
                    return
                yield chunk
        finally:
            reader.close()

    def extract_artifact(self, record: ArtifactRecord, destination: Path) -> None:
        """Write one artifact file, checking its size and SHA-256 against the table. It is
        written beside ``destination`` under a temporary name and renamed only once it
        matches: a file that does not match is never left at ``destination``."""
        problem = artifact_path_problem(record.path)
        if problem:
            raise ArchiveFormatError(
                f"artifact {show_name(record.path)} of run {show_name(record.run_id)}: path "
                f"{problem}",
                where=self.container.where(record.member),
                hint="refusing a hostile archive",
            )
        digest = hashlib.sha256()
        size = 0
        part = destination.with_name(f".{destination.name}.exim-part")
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            if destination.is_dir():
                raise IsADirectoryError(errno.EISDIR, "Is a directory")
            with open(part, "wb") as out:
                try:
                    for chunk in self.iter_artifact_bytes(record):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                except BaseException:
                    part.unlink(missing_ok=True)
                    raise
        except (FileExistsError, IsADirectoryError, NotADirectoryError) as exc:
            raise ArchiveFormatError(
                f"artifact {show_name(record.path)} of run {show_name(record.run_id)} clashes "
                f"with another artifact of the run ({exc.strerror})",
                where=self.container.where(record.member),
                hint="refusing a hostile archive",
            ) from None
        if size != record.size or digest.hexdigest() != record.sha256:
            part.unlink(missing_ok=True)
            raise ArchiveFormatError(
                f"artifact {show_name(record.path)} of run {show_name(record.run_id)} does not "
                "match its size/sha256",
                where=self.container.where(record.member),
                hint="the archive is damaged; re-copy it",
            )
        os.replace(part, destination)


def schema_problem(spec: T.TableSpec, schema: pa.Schema) -> str | None:
    """Why ``schema`` is not the spec's schema for the table, or None."""
    meta = schema.metadata or {}
    table = meta.get(b"exim.table", b"").decode("utf-8", "replace")
    if table != spec.name:
        return f"says it holds table {table[:80]!r}, expected {spec.name!r}"
    version = meta.get(b"exim.schema_version", b"").decode("utf-8", "replace")
    if version.split(".")[0] != T.SCHEMA_VERSION.split(".")[0]:
        return f"has schema version {version[:20]!r}, this reader reads {T.SCHEMA_VERSION}"
    if schema.names != spec.schema.names:
        shown = [show_name(n) for n in schema.names[:20]]
        return f"has columns {shown}, the spec says {spec.schema.names}"
    for got, want in zip(schema, spec.schema, strict=True):
        if not got.type.equals(want.type):
            return f"column {got.name} has type {got.type}, the spec says {want.type}"
        if got.nullable and not want.nullable:
            return f"column {got.name} is nullable, the spec says it is not"
    return None


def _footer_problem(meta: pq.FileMetaData) -> str | None:
    """Why a Parquet footer declares more than a writer of the format writes, or None.

    Only row-group fields are read: pyarrow 25 aborts the whole process (an uncatchable C++
    exception) when ``RowGroupMetaData.column(j)`` meets damaged column statistics, while the
    readers raise a normal error for the same bytes.
    """
    if meta.num_row_groups > MAX_ROW_GROUPS:
        return f"declares {meta.num_row_groups} row groups, more than the {MAX_ROW_GROUPS} allowed"
    total = 0
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        if not 0 <= group.num_rows <= MAX_ROW_GROUP_ROWS:
            return f"row group {i} declares {group.num_rows} rows, outside 0..{MAX_ROW_GROUP_ROWS}"
        if not 0 <= group.total_byte_size <= MAX_ROW_GROUP_BYTES:
            return (
                f"row group {i} declares {group.total_byte_size} uncompressed bytes, outside "
                f"0..{MAX_ROW_GROUP_BYTES}"
            )
        total += group.num_rows
    if total != meta.num_rows:
        return f"declares {meta.num_rows} rows, its row groups hold {total}"
    return None


def _reason(exc: BaseException) -> str:
    """An exception as a short single-line reason."""
    if isinstance(exc, MemoryError):
        return "it needs more memory than is available"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def _next_table(batches: Iterator[pa.RecordBatch]) -> pa.Table:
    """The next batch of ``batches`` as a table (its decoding happens here)."""
    return pa.Table.from_batches([next(batches)])


def _slices(groups: Iterator[pa.Table], rows: int) -> Iterator[pa.Table]:
    """The rows of ``groups`` as tables of ``rows`` rows (the last may be shorter)."""
    pending: list[pa.Table] = []
    held = 0
    for group in groups:
        pending.append(group)
        held += group.num_rows
        while held >= rows:
            merged = pa.concat_tables(pending)
            yield merged.slice(0, rows)
            rest = merged.slice(rows)
            pending, held = ([rest] if rest.num_rows else []), rest.num_rows
    if held:
        yield pa.concat_tables(pending)


def _run_records(
    runs: pa.Table,
    params_table: pa.Table,
    tags_table: pa.Table,
    input_tags_table: pa.Table,
    inputs_table: pa.Table,
    points_table: pa.Table,
) -> list[RunRecord]:
    """Run records of the rows of ``runs``, with their rows of the other tables."""
    points = dict(
        zip(
            points_table.column("run_id").to_pylist(),
            points_table.column("rows").to_pylist(),
            strict=True,
        )
    )
    params = _grouped(params_table, "run_id")
    tags = _grouped(tags_table, "run_id")
    input_tags: dict[tuple[str, str, str], list[tuple[str, str]]] = defaultdict(list)
    for row in input_tags_table.to_pylist():
        ident = (row["run_id"], row["dataset_name"], row["dataset_digest"])
        input_tags[ident].append((row["key"], row["value"]))
    inputs: dict[str, list[DatasetInputRecord]] = defaultdict(list)
    for row in inputs_table.to_pylist():
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
            metric_points=points.get(row["run_id"], 0),
        )
        for row in runs.to_pylist()
    ]


def _grouped(table: pa.Table, column: str) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in table.to_pylist():
        out[row[column]].append((row["key"], row["value"]))
    return out
