"""Artifact files into an archive: which files a local folder holds (``files_under``) and how
each becomes a blob (read once when small, streamed when large; compressed only when it saves a
tenth; held in memory or staged, with the same archive bytes either way)."""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path

import pytest
import zstandard

from exim_archive import bundle_writer
from exim_archive.artifact_roots import files_under
from exim_archive.bundle_reader import ArchiveReader
from exim_archive.bundle_writer import ArchiveWriter
from exim_archive.records import ExperimentRecord, RunRecord


def _rglob_files(folder: Path) -> list[tuple[str, Path]]:
    """The rule ``files_under`` keeps: ``Path.rglob`` on Python 3.11, files only."""
    return sorted((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file())


def test_files_under_lists_what_rglob_lists(tmp_path: Path) -> None:
    root = tmp_path / "run"
    for rel in ["a.txt", "b/c.bin", "b/d/e.json", "b/d/f g.txt", "z/ü.txt", ".hidden"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    (root / "empty").mkdir()
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "x.txt").write_text("x")
    (outside / "file.txt").write_text("f")
    (root / "b" / "to-file").symlink_to(outside / "file.txt")  # counts
    (root / "to-folder").symlink_to(outside)  # not entered
    (root / "broken").symlink_to(tmp_path / "missing")  # not a file
    os.mkfifo(root / "b" / "pipe")  # not a file

    got = files_under(root)
    assert got == _rglob_files(root)
    assert [rel for rel, _ in got] == [
        ".hidden",
        "a.txt",
        "b/c.bin",
        "b/d/e.json",
        "b/d/f g.txt",
        "b/to-file",
        "z/ü.txt",
    ]
    assert all(path.read_text() for _, path in got)
    assert files_under(tmp_path / "nowhere") == []


def _contents() -> dict[str, bytes]:
    rng = random.Random(7)
    return {
        "empty": b"",
        "tiny": b"x" * 10,
        "just-under": b"y" * 63,
        "smallest-compressed": b"z" * 64,
        "text": b"INFO step 1 loss 0.5\n" * 200,
        "noise": rng.randbytes(4096),
        "same-as-text": b"INFO step 1 loss 0.5\n" * 200,
        "largest-in-memory": b"abc" * (bundle_writer._IN_MEMORY_SIZE // 3),
        "large-text": b"line of a large log\n" * 20_000,
        "large-noise": rng.randbytes(300 * 1024),
    }


def _pack(tmp_path: Path, name: str) -> Path:
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    for rel, data in _contents().items():
        (files / rel).write_bytes(data)
    path = tmp_path / f"{name}.exim"
    writer = ArchiveWriter(
        path, created_at="2026-01-01T00:00:00Z", producer={}, source={}, selection={}
    )
    writer.add_experiment(ExperimentRecord("1", "e", None, "active", None, None))
    writer.add_run(RunRecord("r1", "1", None, None, "FINISHED", 0, 0, "active", None), None)
    for rel, file in files_under(files):
        writer.add_artifact("r1", rel, file)
    writer.finish()
    return path


def test_blobs_decided_as_the_format_says_and_read_back(tmp_path: Path) -> None:
    path = _pack(tmp_path, "a")
    contents = _contents()
    with ArchiveReader(path) as reader:
        records = {r.path: r for r in reader.iter_artifacts()}
        for rel, data in contents.items():
            got = b"".join(reader.iter_artifact_bytes(records[rel]))
            assert got == data, rel
    compression = {rel: r.compression for rel, r in records.items()}
    assert compression == {
        "empty": "none",
        "tiny": "none",
        "just-under": "none",  # under 64 bytes: never compressed
        "smallest-compressed": "zstd",
        "text": "zstd",
        "noise": "none",  # does not save a tenth
        "same-as-text": "zstd",
        "largest-in-memory": "zstd",
        "large-text": "zstd",
        "large-noise": "none",
    }
    assert records["text"].member == records["same-as-text"].member  # one blob per content
    with zipfile.ZipFile(path) as zf:
        blobs = [n for n in zf.namelist() if n.startswith("blobs/")]
        assert len(blobs) == len(contents) - 1
        small = zf.read(records["text"].member)
        assert zstandard.ZstdDecompressor().decompress(small) == contents["text"]


def test_blobs_held_or_staged_make_the_same_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("held", "staged"):
        (tmp_path / name).mkdir()
    held = _pack(tmp_path / "held", "a")
    monkeypatch.setattr(bundle_writer, "_HELD_BYTES", 100)  # nearly every small blob staged
    staged = _pack(tmp_path / "staged", "a")
    assert held.read_bytes() == staged.read_bytes()
