"""The container: a ZIP file of STORED members, or a directory holding the same members.

This module owns member names and bytes, nothing about what they mean. It refuses anything a
writer of the format never produces before a byte is used, and gives random access to a member
without decompressing anything, since members are STORED.

The ZIP is read by its own strict parser, not :mod:`zipfile` (which tolerates prepended and
appended bytes, comments, wrong entry counts and disagreeing headers). Every byte of the file must
be accounted for, in this order and nothing else:

* one local header + data per member, back to back from offset 0;
* the central directory, one entry per member in the same order;
* ZIP64 end records (only when sizes, offsets or the count need them);
* the end-of-central-directory record, with no comment, as the last 22 bytes.

Each member is a regular file (unix mode ``0o100644``), STORED, not encrypted, without a data
descriptor, comment or extra fields other than ZIP64; its local and central headers agree on every
field they share. The framing fields a writer is free in are thus all checked, so a flipped bit
anywhere in the framing is found here and one in a member's bytes by its SHA-256 (``verify``).
"""

from __future__ import annotations

import io
import mmap
import os
import re
import stat
import struct
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

from .errors import ArchiveFormatError, UsageError

__all__ = ["MEMBER_NAME_RE", "Container", "check_member_name", "open_container", "show_name"]

MEMBER_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*(/[a-z0-9][a-z0-9_.-]*)*")
"""What a member name may be (matched whole): lowercase ASCII, ``/``-separated, no dot files."""
MAX_MEMBER_NAME = 255

_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_EOCD = struct.Struct("<4sHHHHIIH")
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_LOCAL_SIG = b"PK\x03\x04"
_CENTRAL_SIG = b"PK\x01\x02"
_EOCD_SIG = b"PK\x05\x06"
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_U16 = 0xFFFF
_U32 = 0xFFFFFFFF
_ZIP64_EXTRA = 0x0001
_FLAG_ENCRYPTED = 0x0001
_FLAG_DATA_DESCRIPTOR = 0x0008
_FLAG_UTF8 = 0x0800
_VERSIONS = (20, 45)
"""``version needed`` / ``version made by`` a writer of the format uses (45 with ZIP64)."""
_UNIX = 3
_MODE = 0o100644
_HINT_DAMAGED = "the file is truncated or damaged; re-copy it"
_HINT_HOSTILE = "refusing a damaged or hostile archive"


def show_name(name: str) -> str:
    """``name`` as it may appear in a one-line message: as is when safe, else quoted."""
    if MEMBER_NAME_RE.fullmatch(name) and len(name) <= MAX_MEMBER_NAME:
        return name
    return repr(name[:80]) + ("..." if len(name) > 80 else "")


def check_member_name(name: str) -> str | None:
    """Why ``name`` is not an allowed member name, or None if it is."""
    if len(name.encode("utf-8", "surrogatepass")) > MAX_MEMBER_NAME:
        return f"member name {show_name(name)} is longer than {MAX_MEMBER_NAME} bytes"
    if not MEMBER_NAME_RE.fullmatch(name):
        return (
            f"member name {show_name(name)} is unsafe or invalid (only lowercase a-z, 0-9, "
            "'_', '.', '-' and '/' separators are allowed, no '..', no absolute paths)"
        )
    return None


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


class _Names:
    """Member names seen so far: refuses duplicates and case / normalisation twins."""

    def __init__(self, location: str) -> None:
        self.location = location
        self._folded: dict[str, str] = {}

    def add(self, name: str) -> None:
        where = f"{self.location}: member {show_name(name)}"
        problem = check_member_name(name)
        if problem:
            raise ArchiveFormatError(problem, where=self.location, hint=_HINT_HOSTILE)
        key = _fold(name)
        twin = self._folded.get(key)
        if twin == name:
            raise ArchiveFormatError("appears twice", where=where, hint=_HINT_HOSTILE)
        if twin is not None:
            raise ArchiveFormatError(
                f"differs from member {show_name(twin)} only by case or Unicode normalisation",
                where=where,
                hint=_HINT_HOSTILE,
            )
        self._folded[key] = name


class Container:
    """Read access to the members of one archive, zip or directory."""

    def __init__(self, location: str, sizes: dict[str, int]) -> None:
        self.location = location
        self._sizes = sizes

    def names(self) -> list[str]:
        return sorted(self._sizes)

    def size(self, name: str) -> int:
        return self._sizes[name]

    def has(self, name: str) -> bool:
        return name in self._sizes

    def open(self, name: str) -> BinaryIO:  # pragma: no cover - overridden
        raise NotImplementedError

    def arrow_file(self, name: str) -> pa.NativeFile:  # pragma: no cover - overridden
        raise NotImplementedError

    def arrow_buffer(self, name: str) -> pa.Buffer:
        """The member's bytes as one Arrow buffer (memory-mapped, not copied)."""
        with self.arrow_file(name) as fh:
            return fh.read_buffer(self.size(name))

    def read(self, name: str, limit: int) -> bytes:
        """The whole member, refusing one larger than ``limit`` bytes."""
        size = self.size(name)
        if size > limit:
            raise ArchiveFormatError(
                f"is {size} bytes, more than the {limit} allowed",
                where=self.where(name),
                hint=_HINT_HOSTILE,
            )
        try:
            with self.open(name) as fh:
                # one byte past the size its header gives finds a member longer than that; a
                # buffer of ``limit`` bytes would be allocated, for nothing, on every read
                data = fh.read(size + 1)
        except OSError as exc:
            raise ArchiveFormatError(
                f"cannot be read ({exc.strerror or exc})", where=self.where(name)
            ) from None
        if len(data) != size:
            raise ArchiveFormatError(
                "is shorter than its header says"
                if len(data) < size
                else "changed while being read (longer than its size)",
                where=self.where(name),
                hint=_HINT_DAMAGED,
            )
        return data

    def iter_chunks(self, name: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        try:
            with self.open(name) as fh:
                while True:
                    data = fh.read(chunk)
                    if not data:
                        return
                    yield data
        except OSError as exc:
            raise ArchiveFormatError(
                f"cannot be read ({exc.strerror or exc})", where=self.where(name)
            ) from None

    def where(self, name: str) -> str:
        return f"{self.location}: member {show_name(name)}"

    def close(self) -> None:
        """Release the file handles."""

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Window(io.RawIOBase):
    """A read-only view of ``length`` bytes at ``offset`` of a file."""

    def __init__(self, path: str, offset: int, length: int) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._fh.seek(offset)
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._left)
        if n <= 0:
            return 0
        got = self._fh.readinto(memoryview(buffer)[:n])
        self._left -= got or 0
        return got or 0

    def close(self) -> None:
        self._fh.close()
        super().close()


@dataclass(frozen=True)
class _Entry:
    """What one central directory entry says, ZIP64 values resolved."""

    name: str
    raw_name: bytes
    made_by: int
    version: int
    flags: int
    method: int
    time: int
    date: int
    crc: int
    csize: int
    size: int
    offset: int
    external: int
    oddities: bool
    """A comment, a disk number or internal attributes: things the format never writes."""
    extra: bytes


def _zip64_values(extra: bytes, wanted: list[str], where: str) -> dict[str, int]:
    """Parse the extra field (only a ZIP64 record is allowed) into the ``wanted`` 64-bit values."""
    values: dict[str, int] = {}
    pos = 0
    seen = False
    while pos < len(extra):
        if pos + 4 > len(extra):
            raise ArchiveFormatError("has a truncated extra field", where=where, hint=_HINT_DAMAGED)
        kind, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        if len(body) != length:
            raise ArchiveFormatError("has a truncated extra field", where=where, hint=_HINT_DAMAGED)
        if kind != _ZIP64_EXTRA or seen:
            raise ArchiveFormatError(
                f"has an extra field of type {kind:#06x}, which the format never writes",
                where=where,
                hint=_HINT_HOSTILE,
            )
        seen = True
        if length != 8 * len(wanted):
            raise ArchiveFormatError(
                "has a ZIP64 extra field of the wrong length", where=where, hint=_HINT_DAMAGED
            )
        for i, key in enumerate(wanted):
            values[key] = struct.unpack_from("<Q", body, 8 * i)[0]
        pos += 4 + length
    if wanted and not seen:
        raise ArchiveFormatError(
            "needs a ZIP64 extra field that is missing", where=where, hint=_HINT_DAMAGED
        )
    return values


def _decode_name(raw: bytes, flags: int, location: str) -> str:
    try:
        return raw.decode("utf-8" if flags & _FLAG_UTF8 else "ascii")
    except UnicodeDecodeError:
        shown = raw[:80].decode("ascii", "backslashreplace")
        raise ArchiveFormatError(
            f"member name {shown!r} is not valid {'UTF-8' if flags & _FLAG_UTF8 else 'ASCII'}",
            where=location,
            hint=_HINT_HOSTILE,
        ) from None


class _ZipContainer(Container):
    def __init__(self, path: str) -> None:
        self._path = path
        self._offsets: dict[str, int] = {}
        self._map: pa.MemoryMappedFile | None = None
        self._whole: pa.Buffer | None = None
        try:
            with open(path, "rb") as fh:
                sizes = self._parse(fh, os.fstat(fh.fileno()).st_size)
        except OSError as exc:
            raise ArchiveFormatError(
                f"cannot be read ({exc.strerror or exc})", where=path, hint=_HINT_DAMAGED
            ) from None
        super().__init__(path, sizes)

    # -- the strict ZIP parser -------------------------------------------------------------------

    def _fail(self, message: str, hint: str = _HINT_DAMAGED) -> ArchiveFormatError:
        return ArchiveFormatError(message, where=self._path, hint=hint)

    def _parse(self, fh: BinaryIO, file_size: int) -> dict[str, int]:
        head = fh.read(4)
        tail_len = min(file_size, (1 << 16) + _EOCD.size + 4)
        fh.seek(file_size - tail_len)
        tail = fh.read(tail_len)
        if len(tail) != tail_len:
            raise self._fail("changed while it was being read")
        eocd_pos = file_size - _EOCD.size
        record = tail[-_EOCD.size :] if file_size >= _EOCD.size else b""
        at_end = len(record) == _EOCD.size and record[:4] == _EOCD_SIG
        found = tail.rfind(_EOCD_SIG)
        zip_like = _LOCAL_SIG.startswith(head) or (found >= 0 and head.startswith(b"PK"))
        if not at_end and not zip_like:
            raise self._fail(
                "is not a ZIP archive, so not an exim archive",
                hint="give the .exim file that 'exim-archive pack' wrote",
            )
        if not at_end:
            if found >= 0 and tail_len - found > _EOCD.size:
                raise self._fail(
                    f"has {tail_len - found - _EOCD.size} bytes after its end-of-central-directory "
                    "record (a ZIP comment or appended data)"
                )
            raise self._fail("has no end-of-central-directory record at its end")
        if head != _LOCAL_SIG:
            if head == _EOCD_SIG:
                raise self._fail(
                    "is an empty ZIP archive, so not an exim archive",
                    hint="give the .exim file that 'exim-archive pack' wrote",
                )
            raise self._fail(
                "has bytes before its first member (prepended data, or it is damaged)",
                hint=_HINT_HOSTILE,
            )
        _, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, comment = _EOCD.unpack(record)
        if comment:
            raise self._fail("has a damaged end-of-central-directory record (comment length)")
        if disk or cd_disk or n_disk != n_total:
            raise self._fail("is a multi-disk ZIP archive, or its end record is damaged")
        cd_end = eocd_pos
        loc_pos = eocd_pos - _ZIP64_LOCATOR.size
        if loc_pos >= 0 and tail[-_EOCD.size - _ZIP64_LOCATOR.size : -_EOCD.size].startswith(
            _ZIP64_LOCATOR_SIG
        ):
            n_total, cd_size, cd_offset, cd_end = self._zip64_end(
                fh, tail, loc_pos, (n_total, cd_size, cd_offset)
            )
        elif n_total == _U16 or cd_size == _U32 or cd_offset == _U32:
            raise self._fail("needs ZIP64 end records that are missing")
        if cd_offset + cd_size != cd_end or cd_size < n_total * _CENTRAL.size:
            raise self._fail(
                "has a central directory that does not fit its end record "
                "(truncated, damaged, or bytes were inserted)"
            )
        fh.seek(cd_offset)
        directory = fh.read(cd_size)
        if len(directory) != cd_size:
            raise self._fail("changed while it was being read")
        entries = self._central_entries(directory, n_total)
        if not any(e.name == "manifest.json" for e in entries):
            raise self._fail(
                "is a ZIP archive without manifest.json, so not an exim archive",
                hint="give the .exim file that 'exim-archive pack' wrote",
            )
        sizes: dict[str, int] = {}
        names = _Names(self._path)
        expected_offset = 0
        for entry in entries:
            where = f"{self._path}: member {show_name(entry.name)}"
            names.add(entry.name)
            entry = self._check_entry(entry, where)
            if entry.offset != expected_offset:
                raise ArchiveFormatError(
                    f"starts at byte {entry.offset}, but the previous member ends at byte "
                    f"{expected_offset} (bytes were inserted, removed or overlap)",
                    where=where,
                    hint=_HINT_HOSTILE,
                )
            data_offset = self._check_local(fh, entry, where, cd_offset)
            sizes[entry.name] = entry.size
            self._offsets[entry.name] = data_offset
            expected_offset = data_offset + entry.size
        if expected_offset != cd_offset:
            raise self._fail(
                f"has {cd_offset - expected_offset} bytes between its last member and its "
                "central directory",
                hint=_HINT_HOSTILE,
            )
        return sizes

    def _zip64_end(
        self, fh: BinaryIO, tail: bytes, loc_pos: int, fields32: tuple[int, int, int]
    ) -> tuple[int, int, int, int]:
        locator = tail[-_EOCD.size - _ZIP64_LOCATOR.size : -_EOCD.size]
        _, disk, z64_pos, disks = _ZIP64_LOCATOR.unpack(locator)
        if disk or disks != 1 or z64_pos != loc_pos - _ZIP64_EOCD.size:
            raise self._fail("has a damaged ZIP64 end locator")
        fh.seek(z64_pos)
        raw = fh.read(_ZIP64_EOCD.size)
        if len(raw) != _ZIP64_EOCD.size:
            raise self._fail("has a damaged ZIP64 end record")
        sig, rec_size, made_by, needed, disk, cd_disk, n_disk, n_total, cd_size, cd_offset = (
            _ZIP64_EOCD.unpack(raw)
        )
        if (
            sig != _ZIP64_EOCD_SIG
            or rec_size != _ZIP64_EOCD.size - 12
            or made_by & 0xFF not in _VERSIONS
            or needed not in _VERSIONS
            or disk
            or cd_disk
            or n_disk != n_total
        ):
            raise self._fail("has a damaged ZIP64 end record")
        for value32, value64, limit in zip(
            fields32, (n_total, cd_size, cd_offset), (_U16, _U32, _U32), strict=True
        ):
            if value32 != min(value64, limit):
                raise self._fail("has ZIP64 and classic end records that disagree")
        return n_total, cd_size, cd_offset, z64_pos

    def _central_entries(self, directory: bytes, count: int) -> list[_Entry]:
        entries = []
        pos = 0
        for index in range(count):
            if pos + _CENTRAL.size > len(directory):
                raise self._fail("has a central directory shorter than its entry count")
            (
                sig,
                made_by,
                needed,
                flags,
                method,
                time,
                date,
                crc,
                csize,
                usize,
                name_len,
                extra_len,
                comment_len,
                disk,
                internal,
                external,
                offset,
            ) = _CENTRAL.unpack_from(directory, pos)
            if sig != _CENTRAL_SIG:
                raise self._fail(f"has a damaged central directory (entry {index})")
            raw_name = directory[pos + _CENTRAL.size : pos + _CENTRAL.size + name_len]
            extra_start = pos + _CENTRAL.size + name_len
            extra = directory[extra_start : extra_start + extra_len]
            pos = extra_start + extra_len + comment_len
            if pos > len(directory):
                raise self._fail(f"has a damaged central directory (entry {index} overruns it)")
            name = _decode_name(raw_name, flags, self._path)
            entries.append(
                _Entry(
                    name,
                    raw_name,
                    made_by,
                    needed,
                    flags,
                    method,
                    time,
                    date,
                    crc,
                    csize,
                    usize,
                    offset,
                    external,
                    bool(comment_len or disk or internal),
                    extra,
                )
            )
        if pos != len(directory):
            raise self._fail(
                f"has {len(directory) - pos} bytes in its central directory after the last entry"
            )
        return entries

    @staticmethod
    def _check_entry(entry: _Entry, where: str) -> _Entry:
        """Refuse what a writer of the format never writes; resolve ZIP64 sizes and offset."""
        mode = entry.external >> 16
        kind = stat.S_IFMT(mode)
        if kind != stat.S_IFREG and (mode or entry.made_by >> 8 == _UNIX):
            what = {
                stat.S_IFLNK: "a symbolic link",
                stat.S_IFDIR: "a directory",
                stat.S_IFCHR: "a character device",
                stat.S_IFBLK: "a block device",
                stat.S_IFIFO: "a named pipe",
                stat.S_IFSOCK: "a socket",
            }.get(kind, f"not a regular file (mode {mode:#o})")
            raise ArchiveFormatError(f"is {what}", where=where, hint=_HINT_HOSTILE)
        if entry.flags & _FLAG_ENCRYPTED:
            raise ArchiveFormatError("is encrypted", where=where, hint=_HINT_HOSTILE)
        if entry.method != 0:
            raise ArchiveFormatError(
                f"is not STORED (compression method {entry.method}; exim archives never "
                "compress at the ZIP level)",
                where=where,
                hint="was the archive re-zipped? use the original file",
            )
        if entry.flags & _FLAG_DATA_DESCRIPTOR:
            raise ArchiveFormatError(
                "uses a data descriptor, which the format never writes",
                where=where,
                hint="was the archive re-zipped? use the original file",
            )
        fields = (("usize", entry.size), ("csize", entry.csize), ("offset", entry.offset))
        big = _zip64_values(entry.extra, [k for k, v in fields if v == _U32], where)
        size = big.get("usize", entry.size)
        csize = big.get("csize", entry.csize)
        offset = big.get("offset", entry.offset)
        problem = None
        if csize != size:
            problem = "has a stored size that differs from its size"
        elif entry.flags & ~_FLAG_UTF8:
            problem = f"has ZIP flags {entry.flags:#06x} the format never writes"
        elif entry.made_by >> 8 != _UNIX or entry.made_by & 0xFF not in _VERSIONS:
            problem = f"has a 'version made by' of {entry.made_by:#06x} the format never writes"
        elif entry.version not in _VERSIONS:
            problem = f"has a 'version needed' of {entry.version} the format never writes"
        elif entry.oddities:
            problem = "has a comment, a disk number or internal attributes"
        elif entry.external != _MODE << 16:
            problem = f"has file attributes {entry.external:#010x}, the format writes {_MODE:#o}"
        if problem:
            raise ArchiveFormatError(problem, where=where, hint=_HINT_HOSTILE)
        return replace(entry, size=size, csize=csize, offset=offset)

    def _check_local(self, fh: BinaryIO, entry: _Entry, where: str, cd_offset: int) -> int:
        fh.seek(entry.offset)
        raw = fh.read(_LOCAL.size)
        if len(raw) != _LOCAL.size or raw[:4] != _LOCAL_SIG:
            raise ArchiveFormatError(
                "local header is missing or damaged", where=where, hint=_HINT_DAMAGED
            )
        _, needed, flags, method, time, date, crc, csize, usize, name_len, extra_len = (
            _LOCAL.unpack(raw)
        )
        name = fh.read(name_len)
        extra = fh.read(extra_len)
        if name != entry.raw_name:
            raise ArchiveFormatError(
                "local header names another member", where=where, hint=_HINT_HOSTILE
            )
        wanted = [key for key, value in (("usize", usize), ("csize", csize)) if value == _U32]
        big = _zip64_values(extra, wanted, where)
        usize, csize = big.get("usize", usize), big.get("csize", csize)
        if (needed, flags, method, time, date, crc) != (
            entry.version,
            entry.flags,
            entry.method,
            entry.time,
            entry.date,
            entry.crc,
        ) or (usize, csize) != (entry.size, entry.size):
            raise ArchiveFormatError(
                "local header disagrees with the central directory",
                where=where,
                hint=_HINT_DAMAGED,
            )
        data_offset = int(entry.offset + _LOCAL.size + name_len + extra_len)
        if data_offset + entry.size > cd_offset:
            raise ArchiveFormatError(
                "runs into the central directory or past the end of the file",
                where=where,
                hint=_HINT_DAMAGED,
            )
        return data_offset

    # -- access ----------------------------------------------------------------------------------

    def open(self, name: str) -> BinaryIO:
        window = _Window(self._path, self._offsets[name], self._sizes[name])
        return io.BufferedReader(window, buffer_size=1 << 20)

    def arrow_buffer(self, name: str) -> pa.Buffer:
        if self._whole is None:
            self._map = pa.memory_map(self._path, "r")
            self._whole = self._map.read_buffer()
        return self._whole.slice(self._offsets[name], self._sizes[name])

    def arrow_file(self, name: str) -> pa.NativeFile:
        return pa.BufferReader(self.arrow_buffer(name))

    def close(self) -> None:
        self._whole = None
        if self._map is not None:
            self._map.close()
            self._map = None


def _open_nofollow(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    return os.fdopen(fd, "rb")


class _DirContainer(Container):
    def __init__(self, path: str) -> None:
        root = Path(path)
        sizes: dict[str, int] = {}
        names = _Names(path)
        try:
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                dirnames.sort()
                for entry in sorted(dirnames + filenames):
                    full = Path(dirpath) / entry
                    rel = full.relative_to(root).as_posix()
                    st = full.lstat()
                    if stat.S_ISDIR(st.st_mode):
                        problem = check_member_name(rel)
                        if problem:
                            raise ArchiveFormatError(problem, where=path, hint=_HINT_HOSTILE)
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        raise ArchiveFormatError(
                            "is not a regular file (link or device)",
                            where=f"{path}: member {show_name(rel)}",
                            hint=_HINT_HOSTILE,
                        )
                    names.add(rel)
                    sizes[rel] = st.st_size
        except OSError as exc:
            raise ArchiveFormatError(
                f"cannot be listed ({exc.strerror or exc})", where=path
            ) from None
        super().__init__(path, sizes)
        self._root = root

    def open(self, name: str) -> BinaryIO:
        return _open_nofollow(self._root / name)

    def arrow_buffer(self, name: str) -> pa.Buffer:
        try:
            with self.open(name) as fh:
                size = os.fstat(fh.fileno()).st_size
                if size != self._sizes[name]:
                    raise ArchiveFormatError(
                        "changed size while it was being read", where=self.where(name)
                    )
                if size == 0:
                    return pa.py_buffer(b"")
                return pa.py_buffer(mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ))
        except OSError as exc:
            raise ArchiveFormatError(
                f"cannot be read ({exc.strerror or exc})", where=self.where(name)
            ) from None

    def arrow_file(self, name: str) -> pa.NativeFile:
        return pa.BufferReader(self.arrow_buffer(name))


def open_container(path: str | os.PathLike[str]) -> Container:
    """Open an archive file (ZIP) or an extracted archive directory."""
    text = os.fspath(path)
    try:
        st = os.stat(text)
    except FileNotFoundError:
        raise UsageError(
            "no such file or directory", where=text, hint="check the archive path"
        ) from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise UsageError(f"cannot be read ({reason})", where=text) from None
    if stat.S_ISDIR(st.st_mode):
        if not os.path.isfile(os.path.join(text, "manifest.json")):
            raise ArchiveFormatError(
                "is a directory without manifest.json",
                where=text,
                hint="give the archive file, or a directory an archive was extracted into",
            )
        return _DirContainer(text)
    if not stat.S_ISREG(st.st_mode):
        raise UsageError("is not a regular file", where=text)
    if st.st_size == 0:
        raise ArchiveFormatError(
            "is empty (0 bytes)", where=text, hint="the copy failed; re-copy it"
        )
    return _ZipContainer(text)
