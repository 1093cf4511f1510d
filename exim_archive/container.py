"""The container: a ZIP file of STORED members, or a directory holding the same members.

This module owns member names and bytes, nothing about what they mean. It refuses anything a
writer of the format never produces (compressed or encrypted entries, directory or link entries,
duplicate or unsafe names, members that run past the end of the file) before a byte is used,
and gives random access to a member without decompressing anything, since members are STORED.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

from .errors import ArchiveFormatError, UsageError

__all__ = ["MEMBER_NAME_RE", "Container", "check_member_name", "open_container"]

MEMBER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*(/[a-z0-9][a-z0-9_.-]*)*$")
MAX_MEMBER_NAME = 255
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_SIG = b"PK\x03\x04"


def check_member_name(name: str) -> str | None:
    """Why ``name`` is not an allowed member name, or None if it is."""
    if len(name.encode("utf-8", "surrogateescape")) > MAX_MEMBER_NAME:
        return f"member name longer than {MAX_MEMBER_NAME} bytes"
    if not MEMBER_NAME_RE.match(name):
        return f"unsafe or invalid member name {name[:80]!r}"
    return None


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

    def read(self, name: str, limit: int) -> bytes:
        """The whole member, refusing one larger than ``limit`` bytes."""
        if self.size(name) > limit:
            raise ArchiveFormatError(
                f"is {self.size(name)} bytes, more than the {limit} allowed",
                where=self.where(name),
                hint="the archive is damaged or hostile",
            )
        with self.open(name) as fh:
            return fh.read(limit + 1)[:limit]

    def iter_chunks(self, name: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        with self.open(name) as fh:
            while True:
                data = fh.read(chunk)
                if not data:
                    return
                yield data

    def where(self, name: str) -> str:
        return f"{self.location}: member {name}"

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


class _ZipContainer(Container):
    def __init__(self, path: str) -> None:
        self._path = path
        self._offsets: dict[str, int] = {}
        file_size = os.path.getsize(path)
        try:
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
            raise ArchiveFormatError(
                f"is not a readable ZIP archive ({exc})",
                where=path,
                hint="the file is truncated, damaged or not an exim archive",
            ) from None
        sizes: dict[str, int] = {}
        folded: dict[str, str] = {}
        with open(path, "rb") as fh:
            for info in infos:
                name = info.filename
                where = f"{path}: member {name[:80]!r}"
                problem = check_member_name(name)
                if problem:
                    raise ArchiveFormatError(problem, where=path, hint="refusing a hostile archive")
                if name in sizes:
                    raise ArchiveFormatError("appears twice", where=where, hint="refusing it")
                if name.casefold() in folded:
                    raise ArchiveFormatError(
                        "differs from another member only by case", where=where
                    )
                folded[name.casefold()] = name
                mode = info.external_attr >> 16
                if mode and not stat.S_ISREG(mode):
                    raise ArchiveFormatError("is not a regular file (link or device)", where=where)
                if info.flag_bits & 0x1:
                    raise ArchiveFormatError("is encrypted", where=where)
                if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                    raise ArchiveFormatError(
                        "is not STORED (exim archives never compress at the ZIP level)",
                        where=where,
                        hint="was the archive re-zipped? use the original file",
                    )
                offset = self._data_offset(fh, info, where)
                if offset + info.file_size > file_size:
                    raise ArchiveFormatError(
                        "runs past the end of the file", where=where, hint="the file is truncated"
                    )
                sizes[name] = info.file_size
                self._offsets[name] = offset
        super().__init__(path, sizes)
        self._map: pa.MemoryMappedFile | None = None

    @staticmethod
    def _data_offset(fh: BinaryIO, info: zipfile.ZipInfo, where: str) -> int:
        fh.seek(info.header_offset)
        raw = fh.read(_LOCAL_HEADER.size)
        if len(raw) != _LOCAL_HEADER.size or raw[:4] != _LOCAL_SIG:
            raise ArchiveFormatError("local header is missing or damaged", where=where)
        fields = _LOCAL_HEADER.unpack(raw)
        name_len, extra_len = fields[9], fields[10]
        name = fh.read(name_len)
        if name != info.orig_filename.encode("utf-8") and name != info.orig_filename.encode(
            "cp437", "replace"
        ):
            raise ArchiveFormatError("local header names another member", where=where)
        if fields[3] != zipfile.ZIP_STORED:
            raise ArchiveFormatError("local header says it is compressed", where=where)
        return int(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)

    def open(self, name: str) -> BinaryIO:
        window = _Window(self._path, self._offsets[name], self._sizes[name])
        return io.BufferedReader(window, buffer_size=1 << 20)

    def arrow_file(self, name: str) -> pa.NativeFile:
        if self._map is None:
            self._map = pa.memory_map(self._path, "r")
        self._map.seek(self._offsets[name])
        return pa.BufferReader(self._map.read_buffer(self._sizes[name]))

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


class _DirContainer(Container):
    def __init__(self, path: str) -> None:
        root = Path(path)
        sizes: dict[str, int] = {}
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            for entry in sorted(dirnames + filenames):
                full = Path(dirpath) / entry
                rel = full.relative_to(root).as_posix()
                st = full.lstat()
                if stat.S_ISDIR(st.st_mode):
                    continue
                if not stat.S_ISREG(st.st_mode):
                    raise ArchiveFormatError(
                        "is not a regular file (link or device)", where=f"{path}: member {rel!r}"
                    )
                problem = check_member_name(rel)
                if problem:
                    raise ArchiveFormatError(problem, where=path)
                sizes[rel] = st.st_size
        super().__init__(path, sizes)
        self._root = root

    def open(self, name: str) -> BinaryIO:
        return open(self._root / name, "rb")

    def arrow_file(self, name: str) -> pa.NativeFile:
        return pa.memory_map(str(self._root / name), "r")


def open_container(path: str | os.PathLike[str]) -> Container:
    """Open an archive file (ZIP) or an extracted archive directory."""
    text = os.fspath(path)
    try:
        st = os.stat(text)
    except FileNotFoundError:
        raise UsageError(
            "no such file or directory", where=text, hint="check the archive path"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot be read ({exc.strerror})", where=text) from None
    if stat.S_ISDIR(st.st_mode):
        if not os.path.exists(os.path.join(text, "manifest.json")):
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
