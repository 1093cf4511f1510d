"""The manifest: the archive's table of contents, and the one place the format version is read.

``manifest.json`` is canonical JSON (sorted keys, no insignificant white space, UTF-8, one
trailing newline). ``manifest.sha256`` holds its SHA-256 in ``sha256sum`` format; that digest is
the archive's identity. :func:`parse_manifest` reads ``format_version`` first and picks the parser
for its major version from :data:`_PARSERS`; a newer minor version is read leniently.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .container import check_member_name, show_name
from .errors import ArchiveFormatError, UnsupportedVersionError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "KNOWN_FEATURES",
    "MANIFEST_DIGEST_MEMBER",
    "MANIFEST_MEMBER",
    "Manifest",
    "MemberEntry",
    "TableEntry",
    "canonical_json",
    "digest_line",
    "parse_digest_line",
    "parse_manifest",
]

FORMAT_NAME = "exim-archive"
FORMAT_VERSION = "1.1"
MANIFEST_MEMBER = "manifest.json"
MANIFEST_DIGEST_MEMBER = "manifest.sha256"
MAX_MANIFEST_BYTES = 256 * 1024 * 1024

KNOWN_FEATURES: frozenset[str] = frozenset()
"""Features this reader understands. Format 1.0 defines none; newer writers may add some."""

_VERSION_RE = re.compile(r"(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})")
_SHA_RE = re.compile(r"[0-9a-f]{64}")


def canonical_json(value: Any) -> bytes:
    """The one JSON encoding the archive uses: same value, same bytes."""
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return (text + "\n").encode("utf-8")


def digest_line(manifest_bytes: bytes) -> bytes:
    """The content of ``manifest.sha256``: ``<hex>  manifest.json``, as ``sha256sum`` writes it."""
    return f"{hashlib.sha256(manifest_bytes).hexdigest()}  {MANIFEST_MEMBER}\n".encode("ascii")


def parse_digest_line(data: bytes) -> str:
    """The hex digest in a ``manifest.sha256`` member, or an error saying what is wrong.

    The member is exactly what :func:`digest_line` writes: 64 lowercase hex digits, two spaces,
    ``manifest.json`` and one newline.
    """
    digest = data[:64].decode("ascii", "replace")
    if data != f"{digest}  {MANIFEST_MEMBER}\n".encode() or not _SHA_RE.fullmatch(digest):
        raise ArchiveFormatError(
            "is not '<sha256>  manifest.json' and a newline",
            where=f"member {MANIFEST_DIGEST_MEMBER}",
            hint="the archive is damaged; re-copy it",
        )
    return digest


@dataclass(frozen=True)
class MemberEntry:
    """One member the manifest lists, with the size and SHA-256 of its stored bytes."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class TableEntry:
    """One table: its members (in order), row count and schema version."""

    name: str
    members: tuple[str, ...]
    rows: int
    schema_version: str


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` says, typed."""

    format_version: str
    created_at: str
    producer: Mapping[str, str]
    source: Mapping[str, Any]
    selection: Mapping[str, Any]
    counts: Mapping[str, int]
    members: tuple[MemberEntry, ...]
    tables: Mapping[str, TableEntry]
    features: tuple[tuple[str, bool], ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def major(self) -> int:
        return int(self.format_version.split(".")[0])

    def member(self, path: str) -> MemberEntry | None:
        for entry in self.members:
            if entry.path == path:
                return entry
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "created_at": self.created_at,
            "producer": dict(self.producer),
            "source": dict(self.source),
            "selection": dict(self.selection),
            "counts": dict(self.counts),
            "features": [{"name": n, "must_understand": m} for n, m in self.features],
            "members": [{"path": m.path, "size": m.size, "sha256": m.sha256} for m in self.members],
            "tables": {
                name: {
                    "members": list(t.members),
                    "rows": t.rows,
                    "schema_version": t.schema_version,
                }
                for name, t in sorted(self.tables.items())
            },
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _fail(message: str) -> ArchiveFormatError:
    return ArchiveFormatError(
        message, where=f"member {MANIFEST_MEMBER}", hint="the archive is damaged or not ours"
    )


def _get(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise _fail(f"{where}: field {_show(key)} is missing")
    value = obj[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise _fail(f"{where}: field {_show(key)} has the wrong type ({type(value).__name__})")
    return value


def _count(obj: Mapping[str, Any], key: str, where: str) -> int:
    value: int = _get(obj, key, int, where)
    if value < 0:
        raise _fail(f"{where}: field {_show(key)} is negative")
    return value


def _check_path(path: str, where: str) -> None:
    problem = check_member_name(path)
    if problem:
        raise _fail(f"{where}: {problem}")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (parsers differ on which one wins)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {show_name(key)} appears twice in one object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_v1(doc: Mapping[str, Any], version: str) -> Manifest:
    members = []
    for i, raw in enumerate(_get(doc, "members", list, "manifest")):
        where = f"members[{i}]"
        if not isinstance(raw, dict):
            raise _fail(f"{where} is not an object")
        sha = _get(raw, "sha256", str, where)
        if not _SHA_RE.fullmatch(sha):
            raise _fail(f"{where}: sha256 is not 64 lowercase hex digits")
        path: str = _get(raw, "path", str, where)
        _check_path(path, where)
        members.append(MemberEntry(path, _count(raw, "size", where), sha))
    tables = {}
    for name, raw in _get(doc, "tables", dict, "manifest").items():
        where = f"tables.{show_name(name)}"
        if not isinstance(raw, dict):
            raise _fail(f"{where} is not an object")
        parts = _get(raw, "members", list, where)
        if not all(isinstance(p, str) for p in parts):
            raise _fail(f"{where}: members must be strings")
        for part in parts:
            _check_path(part, where)
        tables[name] = TableEntry(
            name, tuple(parts), _count(raw, "rows", where), _get(raw, "schema_version", str, where)
        )
    features = []
    for i, raw in enumerate(_get(doc, "features", list, "manifest")):
        where = f"features[{i}]"
        if not isinstance(raw, dict):
            raise _fail(f"{where} is not an object")
        features.append((_get(raw, "name", str, where), _get(raw, "must_understand", bool, where)))
    counts = _get(doc, "counts", dict, "manifest")
    for key in counts:
        _count(counts, key, "counts")
    return Manifest(
        format_version=version,
        created_at=_get(doc, "created_at", str, "manifest"),
        producer=_get(doc, "producer", dict, "manifest"),
        source=_get(doc, "source", dict, "manifest"),
        selection=_get(doc, "selection", dict, "manifest"),
        counts=counts,
        members=tuple(members),
        tables=tables,
        features=tuple(features),
        extra={k: v for k, v in doc.items() if k not in _V1_FIELDS},
    )


_V1_FIELDS = frozenset(
    [
        "format",
        "format_version",
        "created_at",
        "producer",
        "source",
        "selection",
        "counts",
        "features",
        "members",
        "tables",
    ]
)

_PARSERS: dict[int, Callable[[Mapping[str, Any], str], Manifest]] = {1: _parse_v1}
"""Major format version -> parser. The only place a version is dispatched on."""


def parse_manifest(data: bytes) -> Manifest:
    """Parse ``manifest.json``: the version first, then the parser for that major version."""
    try:
        doc = json.loads(
            data.decode("utf-8"), object_pairs_hook=_object, parse_constant=_no_constant
        )
    except (ValueError, RecursionError, MemoryError) as exc:  # UnicodeDecodeError is a ValueError
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise _fail(f"is not valid UTF-8 JSON ({reason})") from None
    if not isinstance(doc, dict):
        raise _fail("is not a JSON object")
    if doc.get("format") != FORMAT_NAME:
        raise _fail(f"field 'format' is {_show(doc.get('format'))}, expected {FORMAT_NAME!r}")
    version = doc.get("format_version")
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise _fail(f"field 'format_version' is {_show(version)}, expected MAJOR.MINOR")
    major = int(version.split(".")[0])
    parser = _PARSERS.get(major)
    if parser is None:
        readable = ", ".join(f"{m}.x" for m in sorted(_PARSERS))
        raise UnsupportedVersionError(
            f"format version {version} is not supported by this exim-archive, "
            f"which reads {readable} (writes {FORMAT_VERSION})",
            where=f"member {MANIFEST_MEMBER}",
            hint="upgrade exim-archive (pip install -U exim-archive) to read it",
        )
    manifest = parser(doc, version)
    unknown = [name for name, must in manifest.features if must and name not in KNOWN_FEATURES]
    if unknown:
        raise UnsupportedVersionError(
            f"needs feature(s) {', '.join(show_name(n) for n in sorted(unknown))} that this "
            "exim-archive does not "
            "understand",
            where=f"member {MANIFEST_MEMBER}",
            hint="upgrade exim-archive to read it",
        )
    return manifest
