"""``verify``: prove an archive is whole and well-formed, using nothing but the file.

Checks, in order: the container (safe names, STORED members, no truncation), the manifest and its
digest, the format version, every member's size and SHA-256, every table's schema and row count,
primary keys, references between tables, artifact paths, and every artifact's decoded bytes.
Problems are collected rather than raised, so one run lists everything that is wrong.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from . import tables as T
from .bundle_reader import ArchiveReader
from .errors import ArchiveFormatError
from .manifest import MANIFEST_DIGEST_MEMBER, MANIFEST_MEMBER
from .progress import Progress

__all__ = ["VerifyReport", "artifact_path_problem", "verify"]

MAX_PROBLEMS = 100
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify`: ``ok`` when ``problems`` is empty."""

    archive: str
    digest: str | None
    format_version: str | None
    members_checked: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_failed(self) -> None:
        if self.problems:
            more = (
                f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
            )
            raise ArchiveFormatError(
                f"failed verification: {self.problems[0]}{more}",
                where=self.archive,
                hint="run 'exim-archive verify' for the full list; re-copy or re-pack the archive",
            )


def artifact_path_problem(path: str) -> str | None:
    """Why an artifact path could escape or break a destination folder, or None."""
    if not path or len(path.encode("utf-8", "surrogatepass")) > 4096:
        return "is empty or longer than 4096 bytes"
    if "\x00" in path or "\\" in path or any(ord(c) < 32 for c in path):
        return "contains a NUL, backslash or control character"
    if path.startswith("/") or _DRIVE.match(path):
        return "is absolute"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return "has an empty, '.' or '..' component"
        if len(part.encode("utf-8", "surrogatepass")) > 255:
            return "has a component longer than 255 bytes"
    return None


class _Problems(list[str]):
    def add(self, text: str) -> None:
        if len(self) < MAX_PROBLEMS:
            self.append(text)
        elif len(self) == MAX_PROBLEMS:
            self.append("... more problems not listed")


def verify(archive: str | os.PathLike[str], *, progress: bool | None = None) -> VerifyReport:
    """Check ``archive`` completely; returns a report listing every problem found."""
    path = os.fspath(archive)
    problems = _Problems()
    try:
        reader = ArchiveReader(path)
    except ArchiveFormatError as exc:
        return VerifyReport(path, None, None, 0, [str(exc)])
    with reader:
        checked = _check_members(reader, problems, progress)
        if not problems:
            _check_tables(reader, problems)
        return VerifyReport(
            path, reader.digest, reader.manifest.format_version, checked, list(problems)
        )


def _check_members(reader: ArchiveReader, problems: _Problems, progress: bool | None) -> int:
    container, manifest = reader.container, reader.manifest
    listed = [m.path for m in manifest.members]
    if len(set(listed)) != len(listed):
        problems.add("manifest.json lists a member twice")
    present = set(container.names()) - {MANIFEST_MEMBER, MANIFEST_DIGEST_MEMBER}
    for name in sorted(present - set(listed)):
        problems.add(f"member {name} is present but not listed in manifest.json")
    bar = Progress("verify", len(manifest.members), enabled=progress)
    checked = 0
    for entry in manifest.members:
        bar.advance()
        if not container.has(entry.path):
            problems.add(f"member {entry.path} is listed in manifest.json but missing")
            continue
        if container.size(entry.path) != entry.size:
            problems.add(
                f"member {entry.path} is {container.size(entry.path)} bytes, "
                f"manifest.json says {entry.size}"
            )
            continue
        digest = hashlib.sha256()
        for chunk in container.iter_chunks(entry.path):
            digest.update(chunk)
        if digest.hexdigest() != entry.sha256:
            problems.add(f"member {entry.path}: sha256 mismatch (damaged in transit?); re-copy it")
        checked += 1
    bar.close()
    return checked


def _check_tables(reader: ArchiveReader, problems: _Problems) -> None:
    manifest = reader.manifest
    listed = {m.path for m in manifest.members}
    loaded: dict[str, pa.Table] = {}
    for spec in T.TABLES.values():
        entry = manifest.tables.get(spec.name)
        if entry is None:
            problems.add(f"manifest.json lists no table {spec.name}")
            continue
        for member in entry.members:
            if member not in listed:
                problems.add(f"table {spec.name}: member {member} is not in the member list")
        try:
            if spec is T.METRICS:
                rows = sum(len(b) for b in reader.iter_metric_batches())
            else:
                loaded[spec.name] = reader.read_table(spec)
                rows = loaded[spec.name].num_rows
        except ArchiveFormatError as exc:
            problems.add(str(exc))
            continue
        if rows != entry.rows:
            problems.add(f"table {spec.name} has {rows} rows, manifest.json says {entry.rows}")
    if problems:
        return
    for spec in T.TABLES.values():
        if spec.primary_key and spec.name in loaded:
            _check_unique(spec, loaded[spec.name], problems)
    _check_references(reader, loaded, problems)
    _check_counts(reader, loaded, problems)
    _check_artifacts(reader, loaded["artifacts"], problems)


def _check_unique(spec: T.TableSpec, table: pa.Table, problems: _Problems) -> None:
    if table.num_rows == 0:
        return
    counts = table.group_by(list(spec.primary_key)).aggregate([([], "count_all")])
    dupes = counts.filter(pc.greater(counts["count_all"], 1))
    for row in dupes.slice(0, 5).to_pylist():
        key = ", ".join(f"{k}={row[k]!r}" for k in spec.primary_key)
        problems.add(f"table {spec.name}: key ({key}) appears {row['count_all']} times")


def _missing(values: pa.Array | pa.ChunkedArray, allowed: pa.Array) -> list[str]:
    unique = pc.unique(values)
    mask = pc.invert(pc.is_in(unique, value_set=allowed))
    return [str(v) for v in unique.filter(mask).to_pylist()[:5]]


def _check_references(
    reader: ArchiveReader, loaded: dict[str, pa.Table], problems: _Problems
) -> None:
    for spec in T.TABLES.values():
        for column, target, target_column in spec.references:
            allowed = pc.unique(loaded[target][target_column])
            if spec is T.METRICS:
                bad: set[str] = set()
                for batch in reader.iter_metric_batches():
                    bad.update(_missing(batch.column(column), allowed))
                missing = sorted(bad)[:5]
            else:
                missing = _missing(loaded[spec.name][column], allowed)
            for value in missing:
                problems.add(
                    f"table {spec.name}: {column} {value!r} is not in table {target} "
                    "(a row that belongs to nothing in the archive)"
                )


def _check_counts(reader: ArchiveReader, loaded: dict[str, pa.Table], problems: _Problems) -> None:
    counts = reader.manifest.counts
    expected: dict[str, Callable[[], int]] = {
        "experiments": lambda: loaded["experiments"].num_rows,
        "runs": lambda: loaded["runs"].num_rows,
        "params": lambda: loaded["run_params"].num_rows,
        "tags": lambda: loaded["run_tags"].num_rows,
        "artifacts": lambda: loaded["artifacts"].num_rows,
    }
    for name, actual in expected.items():
        if name in counts and counts[name] != actual():
            problems.add(f"manifest.json counts {counts[name]} {name}, the tables hold {actual()}")


def _check_artifacts(reader: ArchiveReader, table: pa.Table, problems: _Problems) -> None:
    listed = {m.path for m in reader.manifest.members}
    decoded: dict[str, tuple[int, str]] = {}
    for record in reader.artifacts():
        label = f"artifact {record.path!r} of run {record.run_id}"
        problem = artifact_path_problem(record.path)
        if problem:
            problems.add(f"{label}: path {problem}")
            continue
        if record.member not in listed:
            problems.add(f"{label}: member {record.member} is not in the archive")
            continue
        if record.compression not in ("none", "zstd"):
            problems.add(f"{label}: unknown compression {record.compression!r}")
            continue
        if record.member not in decoded:
            digest, size = hashlib.sha256(), 0
            try:
                for chunk in reader.iter_artifact_bytes(record):
                    digest.update(chunk)
                    size += len(chunk)
            except ArchiveFormatError as exc:
                problems.add(f"{label}: {exc}")
                continue
            decoded[record.member] = (size, digest.hexdigest())
        size, sha = decoded[record.member]
        if size != record.size or sha != record.sha256:
            problems.add(f"{label}: decoded bytes do not match its size/sha256")
