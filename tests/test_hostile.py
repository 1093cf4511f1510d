"""Hostile input: every damaged, malicious or foreign archive ends in one specific error.

For each case of :mod:`hostile` (built in memory from the committed golden archive) and each file
of the committed corpus ``tests/data/hostile/``:

* ``verify()`` reports problems or raises an :class:`ArchiveError` (never anything else), and the
  text holds the case's specific error;
* ``exim-archive verify`` exits non-zero with exactly one ``error:`` line and no traceback;
* ``exim-archive inspect`` fails the same way when the damage is in what it reads;
* for a representative subset, ``exim-archive unpack`` fails and the target is never touched
  (the sqlite file is not even created: unpack verifies before it connects).

Then the golden archive itself (it must keep verifying and reading), directories, and a Hypothesis
fuzz test of the reader. An alarm and a faulthandler deadline turn a hang into a failure.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostile import COMMITTED, Archive, Case, build_corpus, layout
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exim_archive import tables as T
from exim_archive.bundle_reader import ArchiveReader
from exim_archive.cli import main
from exim_archive.errors import ArchiveError, UsageError
from exim_archive.summary import inspect_archive
from exim_archive.verify import verify

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "data" / "golden" / "v1.1-sample.exim"
CORPUS = HERE / "data" / "hostile"
GOOD = GOLDEN.read_bytes()
CASES = build_corpus(GOOD)
BY_NAME = {c.filename[: -len(".exim")]: c for c in CASES}

PER_TEST_SECONDS = 60


@pytest.fixture(autouse=True)
def _deadline() -> Iterator[None]:
    """A hang fails the test: SIGALRM raises in Python code; faulthandler ends a stuck C call."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"the test ran longer than {PER_TEST_SECONDS} s: a hang?")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(PER_TEST_SECONDS)
    faulthandler.dump_traceback_later(PER_TEST_SECONDS * 2, exit=True)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


# -- helpers ----------------------------------------------------------------------------------


def verify_text(path: Path) -> str | None:
    """None when verify finds the archive OK, else all it says is wrong (raised or reported)."""
    try:
        report = verify(path)
    except UsageError:
        raise AssertionError(f"verify raised UsageError for an existing file {path}") from None
    except ArchiveError as exc:
        return str(exc)
    return None if report.ok else " | ".join(report.problems)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(list(argv))
    _, err = capsys.readouterr()
    return code, err.splitlines()


def assert_one_error(code: int, err: list[str], *, exit_code: int | None = None) -> str:
    """A failed command: non-zero exit, exactly one ``error:`` line, no traceback, no bug."""
    text = "\n".join(err)
    assert code != 0, text
    if exit_code is not None:
        assert code == exit_code, text
    assert "Traceback" not in text
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1, text
    assert "internal error" not in errors[0], text
    return errors[0]


def check_case(case: Case, path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = verify_text(path)
    code, err = run_cli(capsys, "verify", str(path))
    icode, ierr = run_cli(capsys, "inspect", str(path))
    if case.ok:
        assert text is None
        assert code == 0, err
        assert icode == 0, ierr
        return
    assert text is not None, f"{case.filename} verified OK"
    if case.expect:
        assert case.expect in text, text
    assert "\n" not in text
    assert_one_error(code, err, exit_code=3)
    if case.fatal or icode != 0:  # a non-fatal case may inspect fine, or fail cleanly
        assert_one_error(icode, ierr)


# -- the corpus, built in memory ------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.filename[:-5] for c in CASES])
def test_hostile_case(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / case.filename
    path.write_bytes(case.data)
    check_case(case, path, capsys)
    assert path.read_bytes() == case.data  # reading never writes to the archive


@pytest.mark.parametrize(
    "name",
    [
        "duplicate-param",
        "runs-unsorted",
        "param-of-unknown-run",
        "run-status-unknown",
        "artifact-file-and-folder",
        "metric-for-unknown-run",
        None,
    ],
)
def test_run_table_checks_hold_across_batches(
    name: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify reads tables of runs' rows a batch at a time (bundle_reader.BATCH_ROWS): with one
    row a batch, each row is still checked against the one before it, in the batch before, and
    a run's files against each other; the good archive (None) still verifies."""
    from exim_archive import bundle_reader

    monkeypatch.setattr(bundle_reader, "BATCH_ROWS", 1)
    path = tmp_path / "a.exim"
    if name is None:
        path.write_bytes(GOOD)
        assert verify_text(path) is None
        return
    case = next(c for c in CASES if c.family == "tables" and c.name == name)
    path.write_bytes(case.data)
    text = verify_text(path)
    assert text is not None and case.expect in text


def test_corpus_families() -> None:
    families = {c.family for c in CASES}
    assert families == {
        "not-an-archive",
        "truncate",
        "bitflip",
        "names",
        "manifest",
        "tables",
        "bomb",
        "lenient",
    }
    assert 500 <= sum(c.family == "bitflip" for c in CASES) <= 800  # 17 per member of 36, + EOCD
    assert build_corpus(GOOD) == CASES  # deterministic


def test_every_framing_byte_flip_is_caught(tmp_path: Path) -> None:
    """Beyond the sampled sweep: a flipped bit anywhere in the ZIP framing is refused."""
    lay = layout(GOOD)
    offsets = [o for m in lay.members for o in range(m.header, m.data)]
    offsets += list(range(lay.cd_start, len(GOOD)))
    path = tmp_path / "flip.exim"
    for offset in offsets:
        data = bytearray(GOOD)
        data[offset] ^= 1 << (offset % 8)
        path.write_bytes(data)
        with pytest.raises(ArchiveError):
            ArchiveReader(path).close()


# -- the committed corpus -----------------------------------------------------------------------


def _committed() -> list[Path]:
    return sorted(CORPUS.glob("*.exim"))


def test_committed_corpus_is_current() -> None:
    index = json.loads((CORPUS / "index.json").read_text())
    files = {p.name for p in _committed()}
    wanted = {c.filename for c in CASES if c.commit}
    hint = "run: python tests/make_hostile_corpus.py"
    assert files == wanted, hint
    assert set(index) == files, hint
    assert {n[:-5] for n in files} >= COMMITTED
    assert sum(p.stat().st_size for p in _committed()) < 4_000_000  # 51 cases of an 84 KB archive


@pytest.mark.parametrize("path", _committed(), ids=[p.stem for p in _committed()])
def test_committed_case(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entry = json.loads((CORPUS / "index.json").read_text())[path.name]
    family, name = path.stem.split("--", 1)
    case = Case(family, name, b"", entry["expect"], entry["fatal"], entry["ok"])
    copy = tmp_path / path.name  # error messages name the file; keep the repository clean
    shutil.copyfile(path, copy)
    check_case(case, copy, capsys)


# -- unpack writes nothing ----------------------------------------------------------------------

UNPACK_SUBSET = {
    "not-an-archive--tar": 3,
    "truncate--at-035423": 3,
    "bitflip--at-038989-bit6": 3,
    "names--dotdot": 3,
    "names--symlink": 3,
    "manifest--lies-about-size": 3,
    "manifest--bad-digest": 3,
    "manifest--newer-major": 4,
    "manifest--unknown-must-understand": 4,
    "tables--metric-for-unknown-run": 3,
    "tables--duplicate-run": 3,
    "tables--artifact-path-dotdot": 3,
    "tables--schema-wrong-type": 3,
    "bomb--zstd-expands-past-declared": 3,
}


@pytest.mark.parametrize("name", sorted(UNPACK_SUBSET))
def test_unpack_refuses_and_writes_nothing(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = BY_NAME[name]
    archive = tmp_path / "in" / case.filename
    archive.parent.mkdir()
    archive.write_bytes(case.data)
    target = tmp_path / "target"
    target.mkdir()
    db = target / "t.db"
    code, err = run_cli(capsys, "unpack", str(archive), "--tracking-uri", f"sqlite:///{db}")
    line = assert_one_error(code, err, exit_code=UNPACK_SUBSET[name])
    if case.expect:
        assert case.expect in line, line
    assert not db.exists(), "unpack touched the target before verifying"
    assert list(target.iterdir()) == []
    assert archive.read_bytes() == case.data


def test_unpack_refuses_missing_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "t.db"
    code, err = run_cli(
        capsys, "unpack", str(tmp_path / "nope.exim"), "--tracking-uri", f"sqlite:///{db}"
    )
    assert_one_error(code, err, exit_code=2)
    assert not db.exists()


# -- the golden archive -------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_golden_archive_verifies_inspects_and_reads(
    capsys: pytest.CaptureFixture[str], version: str
) -> None:
    """The golden archive of every released version (1.0's predates the 1.1 tables: they read
    as empty) keeps verifying and reading."""
    golden = HERE / "data" / "golden" / f"v{version}-sample.exim"
    expected = json.loads(golden.with_suffix(".json").read_text())
    report = verify(golden)
    assert report.ok, report.problems
    assert report.digest == expected["digest"]
    assert report.format_version == expected["format_version"]
    assert report.members_checked == expected["members"]
    info = inspect_archive(golden)
    assert info["counts"]["experiments"] == expected["experiments"]
    assert info["counts"]["runs"] == expected["runs"]
    assert info["counts"]["metric_points"] == expected["metric_points"]
    assert info["counts"]["artifacts"] == expected["artifacts"]
    with ArchiveReader(golden) as reader:
        assert len(reader.experiments()) == expected["experiments"]
        assert len(reader.runs()) == expected["runs"]
        assert sum(len(b) for b in reader.iter_metric_batches()) == expected["metric_points"]
        artifacts = list(reader.iter_artifacts())
        assert len(artifacts) == expected["artifacts"]
        for record in artifacts:
            data = b"".join(reader.iter_artifact_bytes(record))
            assert len(data) == record.size
            assert hashlib.sha256(data).hexdigest() == record.sha256
    code, err = run_cli(capsys, "verify", str(golden))
    assert code == 0, err
    code, err = run_cli(capsys, "inspect", str(golden))
    assert code == 0, err


def test_golden_archive_extracted_to_a_directory_verifies(tmp_path: Path) -> None:
    with zipfile.ZipFile(GOLDEN) as zf:
        zf.extractall(tmp_path / "x")
    report = verify(tmp_path / "x")
    assert report.ok, report.problems


def test_golden_archive_rebuilds_byte_for_byte() -> None:
    """The corpus builder re-packs exactly like the writer, so each case differs only on purpose."""
    assert Archive(GOOD).build() == GOOD


# -- directories and special files --------------------------------------------------------------


def _extracted(tmp_path: Path) -> Path:
    root = tmp_path / "x"
    with zipfile.ZipFile(GOLDEN) as zf:
        zf.extractall(root)
    return root


def _dir_case(tmp_path: Path, kind: str) -> Path:
    if kind == "empty-dir":
        (tmp_path / "x").mkdir()
        return tmp_path / "x"
    root = _extracted(tmp_path)
    if kind == "symlink":
        (root / "blobs" / "evil").symlink_to("/etc/passwd")
    elif kind == "symlinked-table":
        table = root / "tables" / "runs.parquet"
        table.rename(tmp_path / "elsewhere.parquet")
        table.symlink_to(tmp_path / "elsewhere.parquet")
    elif kind == "fifo":
        os.mkfifo(root / "blobs" / "pipe")
    elif kind == "bad-name":
        (root / "EVIL.txt").write_text("x")
    elif kind == "dot-file":
        (root / ".DS_Store").write_text("x")
    elif kind == "unlisted":
        (root / "blobs" / "extra").write_text("x")
    elif kind == "damaged-table":
        with open(root / "tables" / "runs.parquet", "r+b") as fh:
            fh.seek(100)
            fh.write(b"\x00\x00\x00")
    return root


DIR_CASES = {
    "empty-dir": "directory without manifest.json",
    "symlink": "not a regular file",
    "symlinked-table": "not a regular file",
    "fifo": "not a regular file",
    "bad-name": "unsafe or invalid",
    "dot-file": "unsafe or invalid",
    "unlisted": "not listed in manifest.json",
    "damaged-table": "sha256",
}


@pytest.mark.parametrize("kind", sorted(DIR_CASES))
def test_hostile_directory(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _dir_case(tmp_path, kind)
    text = verify_text(root)
    assert text is not None and DIR_CASES[kind] in text, text
    code, err = run_cli(capsys, "verify", str(root))
    assert_one_error(code, err, exit_code=3)
    db = tmp_path / "t.db"
    code, err = run_cli(capsys, "unpack", str(root), "--tracking-uri", f"sqlite:///{db}")
    assert_one_error(code, err)
    assert not db.exists()


def test_archive_path_that_is_a_fifo_is_refused_without_hanging(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "a.exim"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    with pytest.raises(UsageError, match="not a regular file"):
        verify(fifo)
    code, err = run_cli(capsys, "verify", str(fifo))
    assert_one_error(code, err, exit_code=2)


def test_missing_archive_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UsageError, match="no such file"):
        verify(tmp_path / "nope.exim")
    for command in ("verify", "inspect"):
        code, err = run_cli(capsys, command, str(tmp_path / "nope.exim"))
        assert_one_error(code, err, exit_code=2)


def test_extract_artifact_refuses_an_escaping_path(tmp_path: Path) -> None:
    """Defence in depth: the reader itself refuses to write outside, verify or not."""
    case = BY_NAME["tables--artifact-path-dotdot"]
    path = tmp_path / "a.exim"
    path.write_bytes(case.data)
    with ArchiveReader(path) as reader:
        record = next(a for a in reader.iter_artifacts() if a.path.startswith(".."))
        with pytest.raises(ArchiveError, match=re.escape("'..' component")):
            reader.extract_artifact(record, tmp_path / "scratch" / record.path)
    assert not (tmp_path / "scratch").exists()


# -- fuzzing ------------------------------------------------------------------------------------

_N = len(GOOD)
_MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, _N - 1), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, _N - 1), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("insert"), st.integers(0, _N), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, _N - 1), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.integers(0, _N - 1), st.just(0)),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, Any]]) -> bytes:
    out = bytearray(data)
    for kind, pos, arg in mutations:
        pos = min(pos, len(out))
        if kind == "flip" and pos < len(out):
            out[pos] ^= 1 << arg
        elif kind == "set":
            out[pos : pos + len(arg)] = arg
        elif kind == "insert":
            out[pos:pos] = arg
        elif kind == "delete":
            del out[pos : pos + arg]
        elif kind == "truncate":
            del out[pos:]
    return bytes(out)


def _exercise_reader(path: Path) -> None:
    """Everything a reader does; only ArchiveError (never UsageError) may come out."""
    try:
        with ArchiveReader(path) as reader:
            reader.experiments()
            reader.runs()
            artifacts = list(reader.iter_artifacts())
            for _, points in reader.iter_run_metrics():
                for _ in points.slices(1000):
                    pass
            for record in artifacts:
                for _ in reader.iter_artifact_bytes(record):
                    pass
    except UsageError:
        raise
    except ArchiveError:
        pass


_FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@_FUZZ
@given(mutations=st.lists(_MUTATION, min_size=1, max_size=4))
def test_fuzz_archive_bytes(fuzz_dir: Path, mutations: list[tuple[str, int, Any]]) -> None:
    """Random damage to the file: only ArchiveError, and a single change is always caught."""
    data = _mutate(GOOD, mutations)
    path = fuzz_dir / "fuzz.exim"
    if not data:
        return
    path.write_bytes(data)
    _exercise_reader(path)
    try:
        report = verify(path)
        ok = report.ok
    except UsageError:
        raise
    except ArchiveError:
        ok = False
    try:
        inspect_archive(path)
    except UsageError:
        raise
    except ArchiveError:
        pass
    if len(mutations) == 1 and data != GOOD:
        assert not ok, f"verify accepted a changed archive: {mutations}"


_MEMBERS = sorted(
    n
    for n in Archive(GOOD).members
    if n.startswith("tables/") or n.endswith(".zst")  # what a parser reads
)


@_FUZZ
@given(
    member=st.sampled_from(_MEMBERS),
    mutations=st.lists(_MUTATION, min_size=1, max_size=3),
)
def test_fuzz_members_behind_valid_hashes(
    fuzz_dir: Path, member: str, mutations: list[tuple[str, int, Any]]
) -> None:
    """Damage a Parquet or zstd member and re-seal the manifest, so the bytes reach pyarrow and
    zstandard: still nothing but ArchiveError may come out of the reader or verify."""
    archive = Archive(GOOD)
    original = archive.members[member]
    scaled = [(k, p * len(original) // _N, a) for k, p, a in mutations]
    archive.set_member(member, _mutate(original, scaled))
    path = fuzz_dir / "sealed.exim"
    path.write_bytes(archive.build())
    _exercise_reader(path)
    try:
        verify(path)
    except UsageError:
        raise
    except ArchiveError:
        pass


def test_fuzz_targets_cover_every_table() -> None:
    tables = {m for m in _MEMBERS if m.startswith("tables/")}
    assert len(tables) == len(T.TABLES)
