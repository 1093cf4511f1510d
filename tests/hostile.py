"""Build the hostile corpus: damaged, malicious and odd archives made from one good archive.

Everything here is a pure function of the good archive's bytes (no clock, no randomness beyond
fixed seeds), so the same golden archive always gives the same corpus. :func:`build_corpus`
returns every case; ``tests/make_hostile_corpus.py`` writes the ``commit=True`` ones to
``tests/data/hostile/`` and ``tests/test_hostile.py`` checks all of them.

A :class:`Case` says what must happen: ``ok=False`` (all but the lenient family) means verify must
report a problem or raise an :class:`~exim_archive.errors.ArchiveError`, and ``expect`` (when set)
is a piece of text that the error must contain, so each input ends in its *specific* error.
``fatal`` means the archive cannot even be opened for ``inspect`` (damaged container, manifest or
a table inspect reads); the other hostile cases are only caught by ``verify``'s full checks.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import stat
import struct
import tarfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

__all__ = [
    "Archive",
    "Case",
    "Layout",
    "build_corpus",
    "layout",
    "zip_members",
]

_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_MODE = 0o100644


@dataclass(frozen=True)
class Case:
    """One hostile input."""

    family: str
    name: str
    data: bytes
    expect: str | None = None
    """Text the error (or one of verify's problems) must contain."""
    fatal: bool = True
    """The archive cannot be opened or inspected at all (not just found wrong by verify)."""
    ok: bool = False
    """A lenient case: it must verify OK."""
    commit: bool = False
    """Part of the small committed corpus in tests/data/hostile/ (see :data:`COMMITTED`)."""

    @property
    def filename(self) -> str:
        return f"{self.family}--{self.name}.exim"


# -- ZIP layout and raw ZIP writing -----------------------------------------------------------


@dataclass(frozen=True)
class Member:
    name: str
    header: int
    data: int
    size: int
    central: int


@dataclass(frozen=True)
class Layout:
    members: tuple[Member, ...]
    cd_start: int
    eocd: int


def layout(data: bytes) -> Layout:
    """Where each member's local header, data and central entry are in a (valid) archive."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        cd_start = zf.start_dir
    members = []
    pos = cd_start
    for info in infos:
        raw = data[info.header_offset : info.header_offset + _LOCAL.size]
        fields = _LOCAL.unpack(raw)
        start = info.header_offset + _LOCAL.size + fields[9] + fields[10]
        members.append(Member(info.filename, info.header_offset, start, info.file_size, pos))
        c = _CENTRAL.unpack(data[pos : pos + _CENTRAL.size])
        pos += _CENTRAL.size + c[10] + c[11] + c[12]
    return Layout(tuple(members), cd_start, len(data) - 22)


def _info(name: str, **overrides: Any) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3
    info.external_attr = _MODE << 16
    for key, value in overrides.items():
        setattr(info, key, value)
    return info


def zip_members(
    members: list[tuple[str, bytes]] | list[tuple[str, bytes, dict[str, Any]]],
) -> bytes:
    """A ZIP written the way the bundle writer writes one; per-member ZipInfo overrides allowed."""
    buf = io.BytesIO()
    with (
        warnings.catch_warnings(),
        zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as zf,
    ):
        warnings.simplefilter("ignore")  # duplicate names are the point of some cases
        for item in members:
            name, data = item[0], item[1]
            overrides: dict[str, Any] = dict(item[2]) if len(item) > 2 else {}  # type: ignore[misc]
            compress = overrides.pop("compress_type", zipfile.ZIP_STORED)
            info = _info(name, **overrides)
            info.compress_type = compress
            zf.writestr(info, data)
    return buf.getvalue()


def _patch_entry(data: bytes, name: str, field: str, value: int) -> bytes:
    """Set a header field of member ``name`` in both its local and central header."""
    local_off = {"flags": 6, "method": 8, "crc": 14}
    central_off = {"flags": 8, "method": 10, "crc": 16, "made_by": 4, "internal": 36}
    fmt = {"flags": "<H", "method": "<H", "crc": "<I", "made_by": "<H", "internal": "<H"}[field]
    out = bytearray(data)
    for m in layout(data).members:
        if m.name == name:
            if field in local_off:
                struct.pack_into(fmt, out, m.header + local_off[field], value)
            struct.pack_into(fmt, out, m.central + central_off[field], value)
    return bytes(out)


def _patch_name(data: bytes, old: bytes, new: bytes) -> bytes:
    """Replace a member name (same length) in both headers."""
    assert len(old) == len(new) and data.count(old) == 2
    return data.replace(old, new)


# -- an editable copy of the good archive -------------------------------------------------------


class Archive:
    """The good archive's members, editable, and re-packed the way the writer packs them."""

    def __init__(self, data: bytes) -> None:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            self.members: dict[str, bytes] = {i.filename: zf.read(i) for i in zf.infolist()}
        self.manifest: dict[str, Any] = json.loads(self.members.pop("manifest.json"))
        self.members.pop("manifest.sha256")

    # manifest -----------------------------------------------------------------------------------

    def entry(self, path: str) -> dict[str, Any]:
        return next(m for m in self.manifest["members"] if m["path"] == path)

    def blob(self, compressed: bool) -> str:
        return next(
            n for n in self.members if n.startswith("blobs/") and n.endswith(".zst") == compressed
        )

    def set_member(self, path: str, data: bytes, *, listed: bool = True) -> None:
        """Put ``data`` at ``path`` and (when ``listed``) make the manifest agree with it."""
        self.members[path] = data
        if not listed:
            return
        entry = {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        entries = [m for m in self.manifest["members"] if m["path"] != path] + [entry]
        self.manifest["members"] = sorted(entries, key=lambda m: m["path"])

    # tables -------------------------------------------------------------------------------------

    def table(self, name: str) -> pa.Table:
        member = self.manifest["tables"][name]["members"][0]
        return pq.read_table(pa.BufferReader(self.members[member]))

    def set_table(
        self,
        name: str,
        table: pa.Table,
        *,
        metadata: dict[str, str] | None = None,
        rows: bool = True,
    ) -> None:
        """Replace table ``name`` (its first part) with ``table``; manifest kept consistent."""
        member = self.manifest["tables"][name]["members"][0]
        meta = {"exim.table": name, "exim.schema_version": "1.0"} if metadata is None else metadata
        buf = io.BytesIO()
        pq.write_table(table.replace_schema_metadata(meta), buf, compression="zstd")
        self.set_member(member, buf.getvalue())
        if rows:
            self.manifest["tables"][name]["rows"] = table.num_rows
            counts = {"runs": "runs", "experiments": "experiments", "artifacts": "artifacts"}
            if name in counts:
                self.manifest["counts"][counts[name]] = table.num_rows
            if name == "metrics":
                self.manifest["counts"]["metric_points"] = table.num_rows

    # bytes --------------------------------------------------------------------------------------

    def manifest_bytes(self) -> bytes:
        text = json.dumps(self.manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return (text + "\n").encode("utf-8")

    def build(self, manifest: bytes | None = None, digest: bytes | None = None) -> bytes:
        """The archive: ``manifest.sha256`` matches ``manifest.json`` unless ``digest`` is given."""
        raw = self.manifest_bytes() if manifest is None else manifest
        line = digest
        if line is None:
            line = f"{hashlib.sha256(raw).hexdigest()}  manifest.json\n".encode()
        items = [("manifest.json", raw), ("manifest.sha256", line)]
        items += sorted(self.members.items())
        return zip_members(items)


def _edit(good: bytes, change: Callable[[Archive], object]) -> bytes:
    archive = Archive(good)
    change(archive)
    return archive.build()


# -- families ---------------------------------------------------------------------------------


def _truncations(good: bytes) -> list[Case]:
    lay = layout(good)
    offsets: set[int] = {1, 21, lay.cd_start, (lay.cd_start + lay.eocd) // 2, lay.eocd}
    offsets.update({lay.eocd + 11, len(good) - 1})
    for m in lay.members:
        offsets.update({m.header, m.header + 15, m.data, m.data + m.size // 2, m.data + m.size})
    committed = {lay.eocd, lay.cd_start, lay.members[len(lay.members) // 2].data}
    return [
        Case(
            "truncate",
            f"at-{n:06d}",
            good[:n],
            "truncated",
            commit=n in committed,
        )
        for n in sorted(offsets)
        if 0 < n < len(good)
    ]


def _flip_offsets(good: bytes) -> list[tuple[int, str]]:
    lay = layout(good)
    picks: list[tuple[int, str]] = []
    for m in lay.members:
        for delta in (0, 6, 14, 22, 26, _LOCAL.size):
            picks.append((m.header + delta, f"local header of {m.name}"))
        if m.size:
            for at in (m.data, m.data + m.size // 2, m.data + m.size - 1):
                picks.append((at, f"data of {m.name}"))
        for delta in (0, 5, 8, 16, 28, 38, 42, _CENTRAL.size):
            picks.append((m.central + delta, f"central entry of {m.name}"))
    for delta in range(22):
        picks.append((lay.eocd + delta, "end-of-central-directory record"))
    return sorted(set(picks))


def _bit_flips(good: bytes) -> list[Case]:
    cases = []
    readable_by_inspect = ("tables/experiments.parquet", "tables/runs.parquet")
    for i, (offset, region) in enumerate(_flip_offsets(good)):
        bit = (offset * 7 + 3) % 8
        data = bytearray(good)
        data[offset] ^= 1 << bit
        inspect_sees = not region.startswith("data of") or region.endswith(
            ("manifest.json", "manifest.sha256", *readable_by_inspect)
        )
        cases.append(
            Case(
                "bitflip",
                f"at-{offset:06d}-bit{bit}",
                bytes(data),
                "sha256" if region.startswith("data of") else None,
                fatal=inspect_sees,
                commit=i % 100 == 0,
            )
        )
    return cases


def _not_archives(good: bytes) -> list[Case]:
    rng = random.Random(20260101)
    tar_buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as zf, tarfile.open(fileobj=tar_buf, mode="w") as tf:
        for info in zf.infolist()[:3]:
            payload = zf.read(info)
            tinfo = tarfile.TarInfo(info.filename)
            tinfo.size, tinfo.mtime, tinfo.mode = len(payload), 0, 0o644
            tf.addfile(tinfo, io.BytesIO(payload))
    unrelated = io.BytesIO()
    with zipfile.ZipFile(unrelated, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo("README.txt", _ZIP_TIME), "hello\n" * 50)
        zf.writestr(zipfile.ZipInfo("data/values.csv", _ZIP_TIME), "a,b\n1,2\n" * 50)
    empty_zip = io.BytesIO()
    zipfile.ZipFile(empty_zip, "w").close()
    no_manifest = zip_members(
        [("tables/runs.parquet", Archive(good).members["tables/runs.parquet"])]
    )
    return [
        Case("not-an-archive", "empty", b"", "empty"),
        Case("not-an-archive", "random-bytes", rng.randbytes(4096), "not a ZIP archive"),
        Case(
            "not-an-archive",
            "random-bytes-pk-start",
            b"PK\x03\x04" + rng.randbytes(300),
            "truncated",
        ),
        Case("not-an-archive", "tar", tar_buf.getvalue(), "not a ZIP archive"),
        Case("not-an-archive", "unrelated-zip", unrelated.getvalue(), "without manifest.json"),
        Case("not-an-archive", "empty-zip", empty_zip.getvalue(), "empty ZIP archive"),
        Case("not-an-archive", "zip-without-manifest", no_manifest, "without manifest.json"),
        Case("not-an-archive", "json-text", Archive(good).manifest_bytes(), "not a ZIP archive"),
    ]


def _with_extra(good: bytes, name: str, data: bytes = b"x", **overrides: Any) -> bytes:
    archive = Archive(good)
    items: list[tuple[str, bytes, dict[str, Any]]] = [
        ("manifest.json", archive.manifest_bytes(), {}),
        ("manifest.sha256", _digest(archive.manifest_bytes()), {}),
    ]
    items += [(n, d, {}) for n, d in sorted(archive.members.items())]
    items.append((name, data, overrides))
    return zip_members(items)


def _digest(manifest: bytes) -> bytes:
    return f"{hashlib.sha256(manifest).hexdigest()}  manifest.json\n".encode()


def _names(good: bytes) -> list[Case]:
    runs = "tables/runs.parquet"
    placeholder = "tables/runs.parquetX"
    nul = _patch_name(
        _with_extra(good, placeholder), placeholder.encode(), b"tables/runs.parquet\x00"
    )
    symlink = (stat.S_IFLNK | 0o777) << 16
    device = (stat.S_IFCHR | 0o600) << 16
    fifo = (stat.S_IFIFO | 0o600) << 16
    directory = (stat.S_IFDIR | 0o755) << 16
    archive = Archive(good)
    twin_run = archive.members[runs]
    cases = [
        Case("names", "dotdot", _with_extra(good, "../evil.txt"), "unsafe or invalid"),
        Case("names", "dotdot-inner", _with_extra(good, "blobs/../../evil"), "unsafe or invalid"),
        Case("names", "absolute", _with_extra(good, "/etc/evil"), "unsafe or invalid"),
        Case("names", "backslash", _with_extra(good, "blobs\\..\\evil"), "unsafe or invalid"),
        Case("names", "drive-letter", _with_extra(good, "c:/evil"), "unsafe or invalid"),
        Case("names", "drive-letter-relative", _with_extra(good, "c:evil"), "unsafe or invalid"),
        Case("names", "nul-byte", nul, "unsafe or invalid"),
        Case("names", "trailing-newline", _with_extra(good, "blobs/evil\n"), "unsafe or invalid"),
        Case("names", "dot-file", _with_extra(good, "tables/.hidden"), "unsafe or invalid"),
        Case("names", "dot-component", _with_extra(good, "tables/./x"), "unsafe or invalid"),
        Case("names", "empty-component", _with_extra(good, "tables//x"), "unsafe or invalid"),
        Case("names", "trailing-slash", _with_extra(good, "tables/x/"), "unsafe or invalid"),
        Case("names", "over-long", _with_extra(good, "blobs/" + "a" * 300), "longer than 255"),
        Case("names", "over-long-64k", _with_extra(good, "a" * 65535), "longer than 255"),
        Case("names", "case-twin", _with_extra(good, "tables/RUNS.parquet", twin_run), "unsafe"),
        Case(
            "names",
            "unicode-nfc-twin",
            _with_extra(_with_extra(good, "blobs/caf\u00e9"), "blobs/cafe\u0301", b"y"),
            "unsafe or invalid",
        ),
        Case(
            "names",
            "non-utf8",
            _patch_name(_with_extra(good, "blobs/zz"), b"blobs/zz", b"blobs/\xff\xfe"),
            "not valid",
        ),
        Case("names", "duplicate", _with_extra(good, runs, b"PAR1 other bytes"), "appears twice"),
        Case(
            "names",
            "duplicate-manifest",
            _with_extra(good, "manifest.json", b'{"format":"exim-archive"}\n'),
            "appears twice",
        ),
        Case(
            "names",
            "symlink",
            _with_extra(good, "blobs/link", b"/etc/passwd", external_attr=symlink),
            "symbolic link",
        ),
        Case(
            "names", "symlink-named-like-table", _replace_attr(good, runs, symlink), "symbolic link"
        ),
        Case(
            "names",
            "char-device",
            _with_extra(good, "blobs/dev", b"", external_attr=device),
            "character device",
        ),
        Case(
            "names", "fifo", _with_extra(good, "blobs/fifo", b"", external_attr=fifo), "named pipe"
        ),
        Case(
            "names",
            "directory-entry",
            _with_extra(good, "blobs/dir", b"", external_attr=directory),
            "is a directory",
        ),
        Case(
            "names",
            "setuid-mode",
            _replace_attr(good, runs, (stat.S_IFREG | 0o4755) << 16),
            "file attributes",
        ),
        Case(
            "names",
            "deflated",
            _with_extra(good, "blobs/packed", b"z" * 500, compress_type=zipfile.ZIP_DEFLATED),
            "not STORED",
        ),
        Case("names", "encrypted", _patch_entry(good, runs, "flags", 0x1), "encrypted"),
        Case("names", "data-descriptor", _patch_entry(good, runs, "flags", 0x8), "data descriptor"),
        Case(
            "names",
            "extra-field",
            _with_extra(good, "blobs/extra", b"x", extra=struct.pack("<HH4s", 0x5455, 4, b"abcd")),
            "extra field",
        ),
        Case(
            "names",
            "entry-comment",
            _with_extra(good, "blobs/c", b"x", comment=b"hello"),
            "comment",
        ),
        Case("names", "made-by-dos", _patch_entry(good, runs, "made_by", 20), "version made by"),
        Case(
            "names", "internal-attr", _patch_entry(good, runs, "internal", 1), "internal attributes"
        ),
        Case("names", "zip-comment", _zip_comment(good), "bytes after"),
        Case("names", "appended-bytes", good + b"\x00" * 100, "bytes after"),
        Case("names", "prepended-bytes", b"#!/bin/sh\nexit 0\n" + good, "bytes before"),
        Case("names", "overlapping-members", _overlap(good), "previous member ends"),
        Case("names", "wrong-entry-count", _eocd_count(good, -1), "central directory"),
        Case("names", "gap-before-directory", _gap(good), "between its last member"),
    ]
    return cases


def _replace_attr(good: bytes, name: str, external: int) -> bytes:
    out = bytearray(good)
    for m in layout(good).members:
        if m.name == name:
            struct.pack_into("<I", out, m.central + 38, external)
    return bytes(out)


def _zip_comment(good: bytes) -> bytes:
    out = bytearray(good)
    struct.pack_into("<H", out, len(good) - 2, 7)
    return bytes(out) + b"comment"


def _eocd_count(good: bytes, delta: int) -> bytes:
    out = bytearray(good)
    eocd = len(good) - 22
    count = struct.unpack_from("<H", out, eocd + 10)[0] + delta
    struct.pack_into("<HH", out, eocd + 8, count, count)
    return bytes(out)


def _overlap(good: bytes) -> bytes:
    """The second member's central entry points at the first member's local header."""
    lay = layout(good)
    out = bytearray(good)
    struct.pack_into("<I", out, lay.members[1].central + 42, lay.members[0].header)
    return bytes(out)


def _gap(good: bytes) -> bytes:
    """Eight junk bytes between the last member and the central directory, offsets fixed."""
    lay = layout(good)
    junk = b"JUNKJUNK"
    out = bytearray(good[: lay.cd_start] + junk + good[lay.cd_start :])
    eocd = len(out) - 22
    struct.pack_into("<I", out, eocd + 16, lay.cd_start + len(junk))
    return bytes(out)


def _manifest(good: bytes) -> list[Case]:
    def doc_edit(change: Callable[[dict[str, Any]], object]) -> bytes:
        return _edit(good, lambda a: change(a.manifest))

    def raw_manifest(raw: bytes) -> bytes:
        return Archive(good).build(manifest=raw)

    archive = Archive(good)
    blob = archive.blob(compressed=False)
    text = archive.manifest_bytes().decode()
    first_member = archive.manifest["members"][0]

    def drop_member(m: dict[str, Any]) -> None:
        m["members"] = [e for e in m["members"] if e["path"] != blob]

    def add_missing(m: dict[str, Any]) -> None:
        sha = hashlib.sha256(b"nothing").hexdigest()
        m["members"].append({"path": f"blobs/{sha}", "size": 7, "sha256": sha})
        m["members"].sort(key=lambda e: e["path"])

    def set_path(*keys: Any, value: Any) -> Callable[[dict[str, Any]], None]:
        def change(m: dict[str, Any]) -> None:
            target = m
            for key in keys[:-1]:
                target = target[key]
            target[keys[-1]] = value

        return change

    def delete(*keys: str) -> Callable[[dict[str, Any]], None]:
        def change(m: dict[str, Any]) -> None:
            target = m
            for key in keys[:-1]:
                target = target[key]
            del target[keys[-1]]

        return change

    def metrics_part_twice(m: dict[str, Any]) -> None:
        parts = m["tables"]["metrics"]["members"]
        m["tables"]["metrics"]["members"] = parts + parts
        m["tables"]["metrics"]["rows"] *= 2
        m["counts"]["metric_points"] *= 2

    def shared_member(m: dict[str, Any]) -> None:
        m["tables"]["run_tags"]["members"] = list(m["tables"]["run_params"]["members"])

    def unlisted_table_member(m: dict[str, Any]) -> None:
        m["tables"]["runs"]["members"] = ["tables/runs2.parquet"]

    def lists_itself(m: dict[str, Any]) -> None:
        m["members"].append({"path": "manifest.json", "size": 1, "sha256": "0" * 64})

    def unknown_must(m: dict[str, Any]) -> None:
        m["features"] = [{"name": "encrypted-blobs", "must_understand": True}]

    duplicate_key = text.replace(
        '"format_version":"1.1"', '"format_version":"1.1","format_version":"2.0"'
    )
    wrong_digest = f"{'0' * 64}  manifest.json\n".encode()
    real = hashlib.sha256(archive.manifest_bytes()).hexdigest()
    return [
        Case(
            "manifest",
            "lists-missing-member",
            doc_edit(add_missing),
            "listed in manifest.json but missing",
            fatal=False,
        ),
        Case(
            "manifest",
            "omits-present-member",
            doc_edit(drop_member),
            "not listed in manifest.json",
            fatal=False,
        ),
        Case(
            "manifest",
            "lies-about-size",
            doc_edit(
                lambda m: m["members"].__setitem__(
                    0, {**first_member, "size": first_member["size"] + 1}
                )
            ),
            "manifest.json says",
            fatal=False,
        ),
        Case(
            "manifest",
            "huge-member-size",
            doc_edit(lambda m: m["members"].__setitem__(0, {**first_member, "size": 10**15})),
            "manifest.json says",
            fatal=False,
        ),
        Case(
            "manifest",
            "wrong-member-sha256",
            doc_edit(lambda m: m["members"].__setitem__(0, {**first_member, "sha256": "1" * 64})),
            "sha256",
            fatal=False,
        ),
        Case(
            "manifest",
            "bad-digest",
            archive.build(digest=wrong_digest),
            "does not match manifest.sha256",
        ),
        Case(
            "manifest",
            "digest-uppercase",
            archive.build(digest=f"{real.upper()}  manifest.json\n".encode()),
            "<sha256>  manifest.json",
        ),
        Case(
            "manifest",
            "digest-no-newline",
            archive.build(digest=f"{real}  manifest.json".encode()),
            "<sha256>  manifest.json",
        ),
        Case(
            "manifest",
            "digest-other-file",
            archive.build(digest=f"{real}  other.json\n".encode()),
            "<sha256>  manifest.json",
        ),
        Case(
            "manifest",
            "edited-without-digest",
            archive.build(digest=_digest(archive.manifest_bytes().replace(b"2026", b"2025"))),
            "does not match manifest.sha256",
        ),
        Case(
            "manifest",
            "invalid-json",
            raw_manifest(text[: len(text) // 2].encode()),
            "not valid UTF-8 JSON",
        ),
        Case(
            "manifest",
            "not-utf8",
            raw_manifest(text.replace("exim-archive", "exim-\xe4rchive").encode("latin-1")),
            "not valid UTF-8 JSON",
        ),
        Case("manifest", "json-array", raw_manifest(b"[1, 2, 3]\n"), "not a JSON object"),
        Case(
            "manifest",
            "deeply-nested",
            raw_manifest(b"[" * 100_000 + b"]" * 100_000),
            "nested too deeply",
        ),
        Case(
            "manifest",
            "huge-integer",
            raw_manifest(text.replace('"runs":6', '"runs":' + "9" * 5000).encode()),
            "not valid UTF-8 JSON",
        ),
        Case(
            "manifest",
            "nan-constant",
            raw_manifest(text.replace('"runs":6', '"runs":NaN').encode()),
            "not valid UTF-8 JSON",
        ),
        Case("manifest", "duplicate-key", raw_manifest(duplicate_key.encode()), "appears twice"),
        Case(
            "manifest",
            "wrong-format-name",
            doc_edit(set_path("format", value="zip")),
            "field 'format'",
        ),
        Case("manifest", "version-missing", doc_edit(delete("format_version")), "format_version"),
        Case(
            "manifest",
            "version-number",
            doc_edit(set_path("format_version", value=1.0)),
            "format_version",
        ),
        Case(
            "manifest",
            "version-three-parts",
            doc_edit(set_path("format_version", value="1.0.0")),
            "format_version",
        ),
        Case(
            "manifest",
            "newer-major",
            doc_edit(set_path("format_version", value="2.0")),
            "format version 2.0 is not supported",
        ),
        Case("manifest", "unknown-must-understand", doc_edit(unknown_must), "encrypted-blobs"),
        Case(
            "manifest",
            "counts-string",
            doc_edit(set_path("counts", "runs", value="6")),
            "wrong type",
        ),
        Case(
            "manifest",
            "counts-negative",
            doc_edit(set_path("counts", "runs", value=-1)),
            "negative",
        ),
        Case("manifest", "members-object", doc_edit(set_path("members", value={})), "wrong type"),
        Case(
            "manifest",
            "member-size-bool",
            doc_edit(lambda m: m["members"].__setitem__(0, {**first_member, "size": True})),
            "wrong type",
        ),
        Case(
            "manifest",
            "member-sha-uppercase",
            doc_edit(
                lambda m: m["members"].__setitem__(
                    0, {**first_member, "sha256": first_member["sha256"].upper()}
                )
            ),
            "64 lowercase hex",
        ),
        Case(
            "manifest",
            "member-not-object",
            doc_edit(lambda m: m["members"].__setitem__(0, "x")),
            "not an object",
        ),
        Case(
            "manifest",
            "rows-bool",
            doc_edit(set_path("tables", "runs", "rows", value=True)),
            "wrong type",
        ),
        Case(
            "manifest", "features-string", doc_edit(set_path("features", value="x")), "wrong type"
        ),
        Case(
            "manifest", "created-at-number", doc_edit(set_path("created_at", value=5)), "wrong type"
        ),
        Case("manifest", "producer-missing", doc_edit(delete("producer")), "missing"),
        Case(
            "manifest",
            "member-path-dotdot",
            doc_edit(lambda m: m["members"].__setitem__(0, {**first_member, "path": "../evil"})),
            "unsafe or invalid",
        ),
        Case(
            "manifest",
            "table-member-absolute",
            doc_edit(set_path("tables", "runs", "members", value=["/etc/passwd"])),
            "unsafe or invalid",
        ),
        Case(
            "manifest",
            "table-member-unlisted",
            doc_edit(unlisted_table_member),
            "not in the member list",
        ),
        Case(
            "manifest",
            "table-part-twice",
            doc_edit(metrics_part_twice),
            "again to metrics",
            fatal=False,
        ),
        Case(
            "manifest",
            "member-in-two-tables",
            doc_edit(shared_member),
            "belongs to table",
            fatal=False,
        ),
        Case("manifest", "lists-itself", doc_edit(lists_itself), "lists itself", fatal=False),
        Case(
            "manifest",
            "huge-declared-rows",
            doc_edit(set_path("tables", "metrics", "rows", value=10**15)),
            "manifest.json says 1000000000000000",
            fatal=False,
        ),
        Case(
            "manifest",
            "huge-declared-counts",
            doc_edit(set_path("counts", "runs", value=10**18)),
            "counts 1000000000000000000 runs",
            fatal=False,
        ),
        Case(
            "manifest",
            "table-missing",
            doc_edit(lambda m: m["tables"].pop("runs")),
            "lists no table runs",
        ),
        Case(
            "manifest",
            "no-digest-member",
            _without(good, "manifest.sha256"),
            "has no manifest.sha256",
        ),
    ]


def _without(good: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(good)) as zf:
        items = [(i.filename, zf.read(i)) for i in zf.infolist() if i.filename != name]
    return zip_members(items)


def _footer_rows(data: bytes, rows: int, new_rows: int) -> bytes:
    """Rewrite every i64 ``rows`` in a Parquet footer (thrift compact) to ``new_rows``."""

    def varint(value: int) -> bytes:
        zz = (value << 1) ^ (value >> 63)
        out = bytearray()
        while True:
            byte = zz & 0x7F
            zz >>= 7
            if zz:
                out.append(byte | 0x80)
            else:
                out.append(byte)
                return bytes(out)

    footer_len = struct.unpack("<I", data[-8:-4])[0]
    footer = data[-8 - footer_len : -8]
    old, new = varint(rows), varint(new_rows)
    patched = bytearray()
    i = 0
    while i < len(footer):
        if footer[i : i + len(old)] == old and i and footer[i - 1] & 0x0F == 6:
            patched += new
            i += len(old)
        else:
            patched.append(footer[i])
            i += 1
    body = data[: -8 - footer_len]
    return body + bytes(patched) + struct.pack("<I", len(patched)) + b"PAR1"


def _tables(good: bytes) -> list[Case]:
    base = Archive(good)
    runs = base.table("runs")
    metrics = base.table("metrics")
    artifacts = base.table("artifacts")
    experiments = base.table("experiments")

    def with_table(name: str, table: pa.Table, **kw: Any) -> bytes:
        return _edit(good, lambda a: a.set_table(name, table, **kw))

    def set_column(table: pa.Table, column: str, values: list[Any]) -> pa.Table:
        index = table.schema.get_field_index(column)
        field = table.schema.field(column)
        return table.set_column(index, field, pa.array(values, field.type))

    def artifact_path(path: str) -> bytes:
        paths = artifacts.column("path").to_pylist()
        return with_table("artifacts", set_column(artifacts, "path", [path, *paths[1:]]))

    ghost = "f" * 32
    orphan_metrics = set_column(
        metrics, "run_id", [*metrics.column("run_id").to_pylist()[:-1], ghost]
    )
    unsorted = pa.concat_tables(
        [metrics.slice(metrics.num_rows - 1), metrics.slice(0, metrics.num_rows - 1)]
    )
    # every run table is read a chunk of runs at a time, merged by run id (exim_archive.run_order)
    runs_unsorted = pa.concat_tables([runs.slice(1), runs.slice(0, 1)])
    tags = base.table("run_tags")
    tags_unsorted = pa.concat_tables(
        [tags.slice(tags.num_rows - 1), tags.slice(0, tags.num_rows - 1)]
    )
    dup_runs = pa.concat_tables([runs, runs.slice(0, 1)])
    params = base.table("run_params")
    dup_param = pa.concat_tables([params.slice(0, 1), params])  # in order, the twin next to it
    orphan_param = pa.concat_tables([params, set_column(params.slice(0, 1), "run_id", ["f" * 32])])
    first_run = runs.column("run_id")[0].as_py()
    dup_experiment_name = set_column(
        experiments, "name", [experiments.column("name")[0].as_py()] * experiments.num_rows
    )

    # an artifact whose file is also the folder of another artifact of the same run
    row = artifacts.slice(0, 1).to_pylist()[0]
    clash = pa.concat_tables(
        [
            artifacts,
            pa.Table.from_pylist(
                [{**row, "path": row["path"] + "/inner.txt"}], schema=artifacts.schema
            ),
        ]
    ).sort_by([("run_id", "ascending"), ("path", "ascending")])

    # schema mischief
    extra_column = runs.append_column("evil", pa.array(["x"] * runs.num_rows))
    wrong_type = runs.set_column(
        runs.schema.get_field_index("start_time"),
        pa.field("start_time", pa.string()),
        pa.array([str(v) for v in runs.column("start_time").to_pylist()]),
    )
    nullable = pa.table(
        runs.columns, schema=pa.schema([f.with_nullable(True) for f in runs.schema])
    )
    reordered = runs.select(list(reversed(runs.column_names)))

    # invalid UTF-8 inside a string value, with the hash kept right
    plain = io.BytesIO()
    marked = set_column(runs, "run_name", ["zq-marker-zq"] * runs.num_rows)
    pq.write_table(
        marked.replace_schema_metadata({"exim.table": "runs", "exim.schema_version": "1.0"}),
        plain,
        compression="none",
        use_dictionary=False,
        write_statistics=False,
    )
    bad_utf8 = plain.getvalue().replace(b"zq-marker-zq", b"zq-\xff\xfe\xfd-er-zq")

    # a Parquet footer that declares far more rows than the data holds
    footer = io.BytesIO()
    pq.write_table(
        metrics.replace_schema_metadata({"exim.table": "metrics", "exim.schema_version": "1.0"}),
        footer,
        compression="zstd",
    )
    huge_rows = _footer_rows(footer.getvalue(), metrics.num_rows, 1 << 40)

    def both_forms(a: Archive) -> None:
        zst = a.blob(compressed=True)
        original = zstandard.ZstdDecompressor().decompress(a.members[zst])
        a.set_member(zst[: -len(".zst")], original)

    def raw_table_member(table: str, data: bytes) -> bytes:
        def change(a: Archive) -> None:
            a.set_member(a.manifest["tables"][table]["members"][0], data)

        return _edit(good, change)

    return [
        Case(
            "tables",
            "metric-for-unknown-run",
            with_table("metrics", orphan_metrics),
            "is not in table runs",
            fatal=False,
        ),
        Case(
            "tables",
            "metrics-unsorted",
            with_table("metrics", unsorted),
            "not sorted by run_id",
            fatal=False,
        ),
        Case(
            "tables",
            "runs-unsorted",
            with_table("runs", runs_unsorted),
            "rows are not sorted by (run_id)",
            fatal=False,
        ),
        Case(
            "tables",
            "run-tags-unsorted",
            with_table("run_tags", tags_unsorted),
            "rows are not sorted by (run_id, key)",
            fatal=False,
        ),
        Case(
            "tables",
            "duplicate-run",
            with_table("runs", dup_runs),
            f"run_id={first_run!r}",
            fatal=False,
        ),
        Case(
            "tables",
            "duplicate-param",
            with_table("run_params", dup_param),
            "appears more than once",
            fatal=False,
        ),
        Case(
            "tables",
            "param-of-unknown-run",
            with_table("run_params", orphan_param),
            f"run_id {'f' * 32!r} is not in table runs",
            fatal=False,
        ),
        Case(
            "tables",
            "duplicate-experiment-name",
            with_table("experiments", dup_experiment_name),
            "appears 3 times",
            fatal=False,
        ),
        Case(
            "tables",
            "run-of-unknown-experiment",
            with_table("runs", set_column(runs, "experiment_id", ["999"] * runs.num_rows)),
            "is not in table experiments",
            fatal=False,
        ),
        Case(
            "tables",
            "run-status-unknown",
            with_table("runs", set_column(runs, "status", ["PWNED"] * runs.num_rows)),
            "PWNED",
            fatal=False,
        ),
        Case(
            "tables",
            "lifecycle-unknown",
            with_table(
                "experiments",
                set_column(experiments, "lifecycle_stage", ["gone"] * experiments.num_rows),
            ),
            "gone",
            fatal=False,
        ),
        Case(
            "tables",
            "artifact-path-dotdot",
            artifact_path("../../etc/cron.d/evil"),
            "'..' component",
            fatal=False,
        ),
        Case(
            "tables",
            "artifact-path-absolute",
            artifact_path("/etc/passwd"),
            "is absolute",
            fatal=False,
        ),
        Case(
            "tables",
            "artifact-path-drive",
            artifact_path("C:/Windows/evil.dll"),
            "is absolute",
            fatal=False,
        ),
        Case(
            "tables",
            "artifact-path-backslash",
            artifact_path("..\\..\\evil"),
            "backslash",
            fatal=False,
        ),
        Case("tables", "artifact-path-nul", artifact_path("a\x00b"), "NUL", fatal=False),
        Case("tables", "artifact-path-empty", artifact_path(""), "empty", fatal=False),
        Case(
            "tables",
            "artifact-file-and-folder",
            with_table("artifacts", clash),
            "both a file and the folder",
            fatal=False,
        ),
        Case(
            "tables",
            "artifact-member-not-blob",
            with_table(
                "artifacts",
                set_column(artifacts, "member", ["tables/runs.parquet"] * artifacts.num_rows),
            ),
            "is not blobs/",
            fatal=False,
        ),
        Case(
            "tables",
            "artifact-compression-unknown",
            with_table(
                "artifacts", set_column(artifacts, "compression", ["gzip"] * artifacts.num_rows)
            ),
            "gzip",
            fatal=False,
        ),
        Case(
            "tables",
            "artifact-size-negative",
            with_table("artifacts", set_column(artifacts, "size", [-1] * artifacts.num_rows)),
            "malformed",
            fatal=False,
        ),
        Case(
            "tables", "blob-in-both-forms", _edit(good, both_forms), "both compressed", fatal=False
        ),
        Case(
            "tables",
            "rows-disagree",
            _edit(good, lambda a: a.manifest["tables"]["runs"].__setitem__("rows", 7)),
            "has 6 rows, manifest.json says 7",
            fatal=False,
        ),
        Case("tables", "schema-extra-column", with_table("runs", extra_column), "has columns"),
        Case(
            "tables",
            "schema-wrong-type",
            with_table("runs", wrong_type),
            "column start_time has type string",
        ),
        Case("tables", "schema-nullable", with_table("runs", nullable), "is nullable"),
        Case("tables", "schema-reordered", with_table("runs", reordered), "has columns"),
        Case(
            "tables",
            "schema-wrong-table-metadata",
            with_table(
                "runs", runs, metadata={"exim.table": "experiments", "exim.schema_version": "1.0"}
            ),
            "expected 'runs'",
        ),
        Case(
            "tables", "schema-no-metadata", with_table("runs", runs, metadata={}), "expected 'runs'"
        ),
        Case(
            "tables",
            "schema-newer-version",
            with_table("runs", runs, metadata={"exim.table": "runs", "exim.schema_version": "2.0"}),
            "schema version",
        ),
        Case(
            "tables",
            "not-parquet",
            raw_table_member("runs", b"this is not parquet at all"),
            "not a readable Parquet file",
        ),
        Case("tables", "invalid-utf8-string", raw_table_member("runs", bad_utf8), "Invalid UTF8"),
        Case(
            "tables",
            "parquet-footer-huge-rows",
            raw_table_member("metrics", huge_rows),
            "declares",
            fatal=False,
        ),
    ]


def _bombs(good: bytes) -> list[Case]:
    base = Archive(good)
    zst = base.blob(compressed=True)
    declared = next(a["size"] for a in base.table("artifacts").to_pylist() if a["member"] == zst)
    bomb = zstandard.ZstdCompressor(level=3).compress(b"\x00" * (64 << 20))

    def frame_with_window() -> bytes:
        """A frame whose header asks for a 2 GiB window (patched: compressing with one would
        allocate it)."""
        cobj = zstandard.ZstdCompressor(level=1, write_content_size=False).compressobj()
        frame = bytearray(cobj.compress(b"x" * 100) + cobj.flush())
        assert frame[:4] == b"\x28\xb5\x2f\xfd" and not frame[4] & 0x20  # a window descriptor
        frame[5] = 21 << 3  # window log 10 + 21 = 31
        return bytes(frame)

    def set_blob(data: bytes) -> Callable[[Archive], None]:
        return lambda a: a.set_member(zst, data)

    garbage_tail = base.members[zst] + b"trailing garbage"
    return [
        Case(
            "bomb",
            "zstd-expands-past-declared",
            _edit(good, set_blob(bomb)),
            f"expands past its declared size of {declared}",
            fatal=False,
        ),
        Case(
            "bomb",
            "zstd-huge-window",
            _edit(good, set_blob(frame_with_window())),
            "not valid zstd data",
            fatal=False,
        ),
        Case(
            "bomb",
            "zstd-garbage",
            _edit(good, set_blob(b"\x28\xb5\x2f\xfd" + b"\xff" * 64)),
            "not valid zstd data",
            fatal=False,
        ),
        Case(
            "bomb",
            "zstd-trailing-garbage",
            _edit(good, set_blob(garbage_tail)),
            "zstd",
            fatal=False,
        ),
        Case(
            "bomb",
            "zstd-truncated",
            _edit(good, set_blob(base.members[zst][:-10])),
            "do not match",
            fatal=False,
        ),
    ]


def _lenient(good: bytes) -> list[Case]:
    def newer_minor(a: Archive) -> None:
        a.manifest["format_version"] = "1.7"
        a.manifest["features"] = [{"name": "shiny-future-thing", "must_understand": False}]
        a.manifest["future_field"] = {"anything": [1, 2, 3]}

    return [
        Case(
            "lenient",
            "newer-minor-optional-feature",
            _edit(good, newer_minor),
            ok=True,
            fatal=False,
        )
    ]


COMMITTED = frozenset(
    [
        "not-an-archive--empty",
        "not-an-archive--random-bytes",
        "not-an-archive--tar",
        "not-an-archive--unrelated-zip",
        "not-an-archive--empty-zip",
        "names--dotdot",
        "names--absolute",
        "names--backslash",
        "names--drive-letter",
        "names--nul-byte",
        "names--over-long",
        "names--case-twin",
        "names--unicode-nfc-twin",
        "names--duplicate",
        "names--symlink",
        "names--char-device",
        "names--deflated",
        "names--zip-comment",
        "names--overlapping-members",
        "manifest--lists-missing-member",
        "manifest--omits-present-member",
        "manifest--lies-about-size",
        "manifest--bad-digest",
        "manifest--invalid-json",
        "manifest--counts-string",
        "manifest--newer-major",
        "manifest--unknown-must-understand",
        "manifest--duplicate-key",
        "manifest--huge-declared-rows",
        "tables--metric-for-unknown-run",
        "tables--duplicate-run",
        "tables--artifact-path-dotdot",
        "tables--artifact-path-absolute",
        "tables--schema-extra-column",
        "tables--schema-wrong-type",
        "tables--schema-wrong-table-metadata",
        "tables--invalid-utf8-string",
        "tables--parquet-footer-huge-rows",
        "bomb--zstd-expands-past-declared",
        "bomb--zstd-huge-window",
        "lenient--newer-minor-optional-feature",
    ]
)
"""The structural cases committed to tests/data/hostile/ (with a few sweep points)."""


def build_corpus(good: bytes) -> list[Case]:
    """Every case, in a fixed order; names are unique."""
    cases = [
        *_not_archives(good),
        *_truncations(good),
        *_bit_flips(good),
        *_names(good),
        *_manifest(good),
        *_tables(good),
        *_bombs(good),
        *_lenient(good),
    ]
    cases = [replace(c, commit=c.commit or c.filename[:-5] in COMMITTED) for c in cases]
    names = [c.filename for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    assert {n[:-5] for n in names} >= COMMITTED, "COMMITTED names a case that does not exist"
    return cases
