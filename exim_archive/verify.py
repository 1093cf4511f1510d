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
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain

import pyarrow as pa
import pyarrow.compute as pc

from . import tables as T
from .bundle_reader import ArchiveReader, artifact_path_problem
from .bundle_writer import FAMILY_COUNTS
from .container import show_name
from .errors import ArchiveFormatError
from .manifest import MANIFEST_DIGEST_MEMBER, MANIFEST_MEMBER
from .progress import Progress
from .run_order import OutOfRunOrder, in_run_order

__all__ = ["VerifyReport", "artifact_path_problem", "verify"]

MAX_PROBLEMS = 100
_HOSTILE = "the archive is damaged or hostile; re-pack it from the source"
_SHA = re.compile(r"[0-9a-f]{64}")
_LIFECYCLE = ("active", "deleted")
_RUN_STATUS = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
_ALLOWED: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "experiments": (("lifecycle_stage", _LIFECYCLE),),
    "runs": (("lifecycle_stage", _LIFECYCLE), ("status", _RUN_STATUS)),
    "artifacts": (("compression", ("none", "zstd")),),
    "logged_model_artifacts": (("compression", ("none", "zstd")),),
    "registered_models": (("kind", ("model", "prompt")),),
    "model_versions": (
        ("run_scope", ("archive", "outside", "none")),
        ("model_scope", ("archive", "outside", "none")),
    ),
    "run_model_io": (("direction", ("input", "output")),),
}
"""Columns whose values MLflow (or the reader) accepts from a fixed set."""


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
        """Raise when there are problems: the opening error itself (class and exit code kept)
        when the archive could not even be opened, else one error summing up the problems."""
        if not self.problems:
            return
        if self.format_version is None:
            ArchiveReader(self.archive).close()  # raises the precise error, e.g. a newer version
        more = f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
        raise ArchiveFormatError(
            f"{self.problems[0]}{more}",
            hint="nothing was written; 'exim-archive verify' lists every problem",
        )


class _Problems(list[str]):
    def add(self, text: str) -> None:
        text = " ".join(text.split())
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
    checked = 0
    with reader:
        try:
            checked = _check_members(reader, problems, progress)
            if not problems:
                _check_tables(reader, problems)
        except ArchiveFormatError as exc:
            problems.add(str(exc))
        return VerifyReport(
            path, reader.digest, reader.manifest.format_version, checked, list(problems)
        )


def _check_members(reader: ArchiveReader, problems: _Problems, progress: bool | None) -> int:
    container, manifest = reader.container, reader.manifest
    about = container.where(MANIFEST_MEMBER)
    listed = [m.path for m in manifest.members]
    seen: set[str] = set()
    for name in listed:
        if name in seen:
            problems.add(f"{about}: lists member {show_name(name)} twice; {_HOSTILE}")
        if name in (MANIFEST_MEMBER, MANIFEST_DIGEST_MEMBER):
            problems.add(
                f"{about}: lists itself or {MANIFEST_DIGEST_MEMBER} as a member; {_HOSTILE}"
            )
        seen.add(name)
    present = set(container.names()) - {MANIFEST_MEMBER, MANIFEST_DIGEST_MEMBER}
    for name in sorted(present - seen):
        problems.add(
            f"{container.where(name)}: is present but not listed in manifest.json; "
            "refusing an archive with unaccounted content"
        )
    owner: dict[str, str] = {}
    for table in sorted(manifest.tables.values(), key=lambda t: t.name):
        for name in table.members:
            if name not in seen:
                problems.add(
                    f"{about}: table {show_name(table.name)} has member {show_name(name)}, "
                    f"which is not in the member list; {_HOSTILE}"
                )
            if name in owner:
                problems.add(
                    f"{about}: member {show_name(name)} belongs to table "
                    f"{show_name(owner[name])} and again to {show_name(table.name)}; {_HOSTILE}"
                )
            owner[name] = table.name
    bar = Progress("verify", len(manifest.members), enabled=progress)
    checked = 0
    for entry in manifest.members:
        bar.advance()
        where = container.where(entry.path)
        if not container.has(entry.path):
            problems.add(f"{where}: is listed in manifest.json but missing; re-copy the archive")
            continue
        if container.size(entry.path) != entry.size:
            problems.add(
                f"{where}: is {container.size(entry.path)} bytes, manifest.json says "
                f"{entry.size}; re-copy the archive"
            )
            continue
        digest = hashlib.sha256()
        for chunk in container.iter_chunks(entry.path):
            digest.update(chunk)
        if digest.hexdigest() != entry.sha256:
            problems.add(f"{where}: sha256 mismatch (damaged in transit?); re-copy the archive")
        else:
            reader.note_verified(entry.path)
        checked += 1
    bar.close()
    return checked


def _check_tables(reader: ArchiveReader, problems: _Problems) -> None:
    manifest = reader.manifest
    about = reader.container.where(MANIFEST_MEMBER)
    loaded: dict[str, pa.Table] = {}
    """Each table, whole; of a table of runs' rows (:func:`_streamed`), only what other tables'
    checks read (``runs``: run and experiment ids; the others: nothing)."""
    counted: dict[str, int] = {}
    scanned = _Problems()  # what the batch-at-a-time reads found: reported after step 4
    for spec in T.TABLES.values():
        entry = manifest.tables.get(spec.name)
        if entry is None and reader.absent_by_version(spec):
            loaded[spec.name] = spec.schema.empty_table()
            counted[spec.name] = 0
            continue
        if entry is None:
            problems.add(f"{about}: lists no table {spec.name}; {_HOSTILE}")
            continue
        try:
            if spec is T.METRICS:
                rows = _metric_rows(reader, loaded, problems, scanned)
            elif _streamed(spec):
                rows, kept = _scan_run_table(reader, spec, loaded, scanned)
                loaded[spec.name] = kept
                counted[spec.name] = rows
            else:
                loaded[spec.name] = reader.read_table(spec)
                rows = counted[spec.name] = loaded[spec.name].num_rows
        except ArchiveFormatError as exc:
            problems.add(str(exc))
            continue
        if rows != entry.rows:
            problems.add(
                f"{about}: table {spec.name} has {rows} rows, manifest.json says {entry.rows}; "
                f"{_HOSTILE}"
            )
    if problems:
        return
    for text in scanned:
        problems.add(text)
    for spec in T.TABLES.values():
        if spec.primary_key and spec.name in loaded and not _streamed(spec):
            _check_unique(reader, spec, loaded[spec.name], problems)
    _check_values(reader, loaded, problems)
    _check_references(reader, loaded, problems)
    _check_family_references(reader, loaded, problems)
    _check_counts(reader, counted, problems)
    if not problems:
        _check_artifacts(reader, problems)


def _streamed(spec: T.TableSpec) -> bool:
    """A table of runs' rows (maybe millions), checked a batch at a time: its sort key starts
    with ``run_id`` and is its primary key, so a repeated key would sit next to its twin."""
    return spec.sort_key[0] == "run_id" and spec.primary_key == spec.sort_key


def _scan_run_table(
    reader: ArchiveReader, spec: T.TableSpec, loaded: dict[str, pa.Table], problems: _Problems
) -> tuple[int, pa.Table]:
    """Every check of a :func:`_streamed` table, one batch of rows at a time: each row decodes;
    rows in sort key order and no key twice (each row against the one before); the values of
    :data:`_ALLOWED`; references to tables checked before (in ``loaded``). Memory stays one
    batch whatever the number of runs. Returns the row count and, of ``runs``, its run and
    experiment ids (which other tables' checks read)."""
    where = _table_where(reader, spec.name)
    keys = list(spec.sort_key)
    allowed = dict(_ALLOWED.get(spec.name, ()))
    bad: dict[str, set[str]] = defaultdict(set)
    targets = _reference_sets(spec, loaded)
    missing: dict[str, set[str]] = defaultdict(set)
    kept: list[pa.Table] = []
    rows = 0
    last: pa.Table | None = None  # the previous batch's last row, its sort key columns
    disorder = repeat = False
    for batch in reader.iter_batches(spec):
        if not batch.num_rows:
            continue
        rows += batch.num_rows
        for column, values in allowed.items():
            bad[column].update(v for v in pc.unique(batch[column]).to_pylist() if v not in values)
        _note_missing(batch, targets, missing)
        if spec is T.RUNS:
            kept.append(batch.select(["run_id", "experiment_id"]))
        key_rows = batch.select(keys)
        both = key_rows if last is None else pa.concat_tables([last, key_rows])
        last = key_rows.slice(key_rows.num_rows - 1)
        after, same = _against_previous(both.combine_chunks(), keys)
        if not disorder and after >= 0:
            disorder = True
            problems.add(
                f"{where}: rows are not sorted by ({', '.join(keys)}): "
                f"({_key_text(both, keys, after + 1)}) comes after "
                f"({_key_text(both, keys, after)}); {_HOSTILE}"
            )
        if not repeat and same >= 0:
            repeat = True
            problems.add(
                f"{where}: key ({_key_text(both, keys, same)}) appears more than once; {_HOSTILE}"
            )
    for column, values in allowed.items():
        for value in _not_allowed(bad[column], values):
            problems.add(_value_problem(where, column, value, values))
    _add_missing(where, targets, missing, problems)
    if spec is T.RUNS:
        schema = pa.schema([spec.schema.field("run_id"), spec.schema.field("experiment_id")])
        return rows, pa.concat_tables(kept) if kept else schema.empty_table()
    return rows, spec.schema.empty_table()


def _against_previous(table: pa.Table, keys: list[str]) -> tuple[int, int]:
    """The first row whose sort key is greater than the next row's, and the first row whose
    sort key equals the next row's (-1: none)."""
    n = table.num_rows
    if n < 2:
        return -1, -1
    greater: pa.Array | None = None
    equal: pa.Array | None = None
    for name in keys:
        before, now = table[name].slice(0, n - 1), table[name].slice(1)
        gt, eq = pc.greater(before, now), pc.equal(before, now)
        greater = gt if greater is None or equal is None else pc.or_(greater, pc.and_(equal, gt))
        equal = eq if equal is None else pc.and_(equal, eq)
    return int(pc.index(greater, True).as_py()), int(pc.index(equal, True).as_py())


def _key_text(table: pa.Table, keys: list[str], row: int) -> str:
    return ", ".join(f"{k}={_q(table[k][row].as_py())}" for k in keys)


def _metric_rows(
    reader: ArchiveReader, loaded: dict[str, pa.Table], problems: _Problems, scanned: _Problems
) -> int:
    """Count metric points, checking they come grouped by run in ``run_id`` order (counted up
    to and with the first row group out of order), and, in the same pass, that their runs are
    in ``runs``: those problems go to ``scanned`` (reported after step 4)."""
    rows = 0
    about = reader.container.where(MANIFEST_MEMBER)
    targets = _reference_sets(T.METRICS, loaded)
    missing: dict[str, set[str]] = defaultdict(set)

    def counted() -> Iterator[pa.RecordBatch]:
        nonlocal rows
        for batch in reader.iter_metric_batches():
            rows += len(batch)
            _note_missing(batch, targets, missing)
            yield batch

    try:
        for _ in in_run_order(counted(), T.METRICS.name, about):
            pass
    except OutOfRunOrder:
        problems.add(
            f"{about}: table metrics is not sorted by run_id (a run's points must come "
            f"together); {_HOSTILE}"
        )
    _add_missing(_table_where(reader, T.METRICS.name), targets, missing, scanned)
    return rows


def _reference_sets(
    spec: T.TableSpec, loaded: dict[str, pa.Table]
) -> dict[str, tuple[str, pa.Array]]:
    """Of each column of ``spec`` that references a table, that table and its values."""
    return {
        column: (target, pc.unique(loaded[target][target_column]))
        for column, target, target_column in spec.references
        if target in loaded  # else it failed to load, a problem already
    }


def _note_missing(
    batch: pa.RecordBatch,
    targets: dict[str, tuple[str, pa.Array]],
    missing: dict[str, set[str]],
) -> None:
    """Add to ``missing`` the values of ``batch`` its referenced tables lack (five a column
    are enough to report)."""
    for column, (_, value_set) in targets.items():
        if len(missing[column]) < 5:
            missing[column].update(_missing(batch.column(column), value_set))


def _add_missing(
    where: str,
    targets: dict[str, tuple[str, pa.Array]],
    missing: dict[str, set[str]],
    problems: _Problems,
) -> None:
    for column, (target, _) in targets.items():
        for value in sorted(missing[column])[:5]:
            problems.add(_reference_problem(where, column, value, target))


def _table_where(reader: ArchiveReader, name: str) -> str:
    members = reader.manifest.tables[name].members
    return reader.container.where(members[0]) if len(members) == 1 else f"table {name}"


def _check_unique(
    reader: ArchiveReader, spec: T.TableSpec, table: pa.Table, problems: _Problems
) -> None:
    if table.num_rows == 0:
        return
    counts = table.group_by(list(spec.primary_key)).aggregate([([], "count_all")])
    dupes = counts.filter(pc.greater(counts["count_all"], 1))
    for row in dupes.slice(0, 5).to_pylist():
        key = ", ".join(f"{k}={_q(row[k])}" for k in spec.primary_key)
        problems.add(
            f"{_table_where(reader, spec.name)}: key ({key}) appears {row['count_all']} times; "
            f"{_HOSTILE}"
        )


def _check_values(reader: ArchiveReader, loaded: dict[str, pa.Table], problems: _Problems) -> None:
    for name, columns in _ALLOWED.items():
        if _streamed(T.TABLES[name]):
            continue  # checked as it was read (_scan_run_table)
        for column, allowed in columns:
            values = pc.unique(loaded[name][column]).to_pylist()
            for value in _not_allowed(values, allowed):
                problems.add(_value_problem(_table_where(reader, name), column, value, allowed))
    names = loaded["experiments"]["name"]
    counts = pc.value_counts(names)
    for item in counts.filter(pc.greater(counts.field("counts"), 1)).to_pylist()[:5]:
        problems.add(
            f"{_table_where(reader, 'experiments')}: experiment name {_q(item['values'])} "
            f"appears {item['counts']} times (names are unique in MLflow); {_HOSTILE}"
        )


def _not_allowed(values: Iterable[str], allowed: tuple[str, ...]) -> list[str]:
    """The first five of ``values`` (unique) that are not ``allowed``."""
    return sorted(v for v in values if v not in allowed)[:5]


def _value_problem(where: str, column: str, value: str, allowed: tuple[str, ...]) -> str:
    return (
        f"{where}: column {column} holds {_q(value)}, not one of {', '.join(allowed)}; {_HOSTILE}"
    )


def _reference_problem(where: str, column: str, value: str, target: str) -> str:
    return (
        f"{where}: {column} {_q(value)} is not in table {target} (a row that belongs to nothing "
        f"in the archive); {_HOSTILE}"
    )


def _q(value: object) -> str:
    """A value from the archive, quoted and cut short for a one-line message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _missing(values: pa.Array | pa.ChunkedArray, allowed: pa.Array) -> list[str]:
    unique = pc.unique(values)
    mask = pc.invert(pc.is_in(unique, value_set=allowed))
    return [str(v) for v in unique.filter(mask).to_pylist()[:5]]


def _check_references(
    reader: ArchiveReader, loaded: dict[str, pa.Table], problems: _Problems
) -> None:
    for spec in T.TABLES.values():
        if _streamed(spec) or spec is T.METRICS:
            continue  # checked as it was read (_scan_run_table, _metric_rows)
        for column, target, target_column in spec.references:
            allowed = pc.unique(loaded[target][target_column])
            for value in _missing(loaded[spec.name][column], allowed):
                problems.add(
                    _reference_problem(_table_where(reader, spec.name), column, value, target)
                )


def _present(values: pa.ChunkedArray, column: pa.ChunkedArray) -> set[object]:
    """Those of ``values`` (a few) that ``column`` (maybe every run's) holds."""
    found = pc.is_in(values, value_set=pc.unique(column))
    return set(values.filter(found).to_pylist())


def _keys(table: pa.Table, columns: tuple[str, ...]) -> set[tuple[object, ...]]:
    return set(zip(*(table.column(c).to_pylist() for c in columns), strict=True))


def _check_family_references(
    reader: ArchiveReader, loaded: dict[str, pa.Table], problems: _Problems
) -> None:
    """The references of format 1.1 that one column cannot express: versions' runs and logged
    models (in the archive, or declared as outside the selection), aliases and version tags
    naming an existing version."""
    versions = loaded["model_versions"]
    known = {
        "run": _present(versions.column("run_id"), loaded["runs"].column("run_id")),
        "model": _present(versions.column("model_id"), loaded["logged_models"].column("model_id")),
    }
    where = _table_where(reader, "model_versions") if versions.num_rows else ""
    for row in versions.to_pylist():
        label = f"{where}: version {row['version']} of {_q(row['name'])}"
        for kind, column in (("run", "run_id"), ("model", "model_id")):
            scope, value = row[f"{kind}_scope"], row[column]
            if scope == "none" and value is not None:
                problems.add(f"{label}: {kind}_scope is none but {column} is set; {_HOSTILE}")
            elif scope == "outside" and value is None:
                problems.add(f"{label}: {kind}_scope is outside but {column} is empty; {_HOSTILE}")
            elif scope == "archive" and value not in known[kind]:
                problems.add(
                    f"{label}: {kind} {_q(value)} is not in the archive, and the version does "
                    f"not declare it as outside the selection; {_HOSTILE}"
                )
    numbered = _keys(versions, ("name", "version"))
    for name in ("registered_model_aliases", "model_version_tags"):
        table = loaded[name]
        for key in sorted(_keys(table, ("name", "version")) - numbered, key=str)[:5]:
            problems.add(
                f"{_table_where(reader, name)}: names version {key[1]} of {_q(key[0])}, "
                f"which is not in table model_versions; {_HOSTILE}"
            )


def _check_counts(reader: ArchiveReader, counted: dict[str, int], problems: _Problems) -> None:
    counts = reader.manifest.counts
    expected = {
        "experiments": counted["experiments"],
        "runs": counted["runs"],
        "params": counted["run_params"],
        "tags": counted["run_tags"],
        "artifacts": counted["artifacts"],
        **{name: counted[table] for name, table in FAMILY_COUNTS.items()},
    }
    about = reader.container.where(MANIFEST_MEMBER)
    for name, actual in expected.items():
        if name in counts and counts[name] != actual:
            problems.add(
                f"{about}: counts {counts[name]} {name}, the tables hold {actual}; {_HOSTILE}"
            )


def _check_artifacts(reader: ArchiveReader, problems: _Problems) -> None:
    listed = {m.path for m in reader.manifest.members}
    for name in sorted(listed):
        if name.startswith("blobs/") and name.endswith(".zst") and name[:-4] in listed:
            problems.add(
                f"{reader.container.where(name)}: is stored both compressed and as "
                f"{show_name(name[:-4])} (a content has one blob); {_HOSTILE}"
            )
    decoded: dict[str, tuple[int, str] | None] = {}
    """Of each blob read, its size and sha256 (None: unreadable)."""
    where = _table_where(reader, "artifacts")
    models = sorted(reader.model_artifacts(), key=lambda r: (r.run_id, r.path))
    owned = chain(
        (("artifacts", "run", r) for r in reader.iter_artifacts()),  # by run, then path
        (("logged_model_artifacts", "logged model", r) for r in models),
    )
    owner, paths = "", set[str]()  # one owner's paths at a time: its rows come together
    for table, kind, record in owned:
        if f"{kind} {record.run_id}" != owner:
            _check_folders(where, owner, paths, problems)
            owner, paths = f"{kind} {record.run_id}", set()
        what = f"artifact {_q(record.path)} of {kind} {_q(record.run_id)}"
        label = f"{_table_where(reader, table)}: {what}"
        problem = artifact_path_problem(record.path)
        if problem:
            problems.add(f"{label}: path {problem}; refusing a hostile archive")
            continue
        paths.add(record.path)
        if not _SHA.fullmatch(record.sha256) or record.size < 0:
            problems.add(f"{label}: sha256 or size is malformed; {_HOSTILE}")
            continue
        suffix = ".zst" if record.compression == "zstd" else ""
        if record.member != f"blobs/{record.sha256}{suffix}":
            problems.add(
                f"{label}: member {show_name(record.member)} is not blobs/<sha256>{suffix} "
                f"for its sha256; {_HOSTILE}"
            )
            continue
        if record.member not in listed:
            problems.add(
                f"{label}: member {show_name(record.member)} is not in the archive; {_HOSTILE}"
            )
            continue
        blob = reader.container.where(record.member)
        if record.member not in decoded:
            digest, size = hashlib.sha256(), 0
            try:
                for chunk in reader.iter_artifact_bytes(record):
                    digest.update(chunk)
                    size += len(chunk)
            except ArchiveFormatError as exc:
                hint = f"; {exc.hint}" if exc.hint else ""
                problems.add(f"{exc.where or blob}: {what}: {exc.message}{hint}")
                decoded[record.member] = None
                continue
            decoded[record.member] = (size, digest.hexdigest())
        result = decoded[record.member]
        if result is None:
            continue
        size, sha = result
        if size != record.size or sha != record.sha256:
            problems.add(
                f"{blob}: {what}: decoded bytes do not match its size/sha256 in the artifacts "
                "table; the archive is damaged, re-copy it"
            )
    _check_folders(where, owner, paths, problems)


def _check_folders(where: str, owner: str, paths: set[str], problems: _Problems) -> None:
    """A path of ``owner`` (``run <id>``, ``logged model <id>``) that is also the folder of
    another of its paths."""
    for path in sorted(paths):
        parts = path.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if folder in paths:
                problems.add(
                    f"{where}: artifact {_q(folder)} of {owner} is both a file "
                    f"and the folder of {_q(path)}; {_HOSTILE}"
                )
                break
