"""The command line as a user meets it: help everywhere, documented commands, one-line errors
with a non-zero exit and no traceback, atomic pack, same input same bytes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NewStore
from workload import seed_rich

from exim_archive.cli import app, main
from exim_archive.errors import SourceError
from exim_archive.pack import pack
from exim_archive.sql_source import SqlSource

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)  # type: ignore[union-attr]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exim_archive", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_there_are_the_commands_the_issue_names() -> None:
    assert {"pack", "unpack", "verify", "inspect"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_is_in_the_readme(command: str) -> None:
    proc = _run(command, "--help")
    assert proc.returncode == 0
    summary = proc.stdout.split("Usage:")[1].split("\n\n")[1].strip()
    assert len(summary) > 20, f"{command} has no real help text"
    readme = (ROOT / "README.md").read_text()
    assert re.search(rf"exim-archive {command}\b", readme), f"README never shows {command}"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["pack", "a.exim", "--bogus"], "No such option: --bogus (see '{prog} pack --help')"),
        (["pack"], "Missing argument 'ARCHIVE'. (see '{prog} pack --help')"),
        (["frob"], "No such command 'frob'. (see '{prog} --help')"),
        (["unpack", "a.exim", "--json=yes"], "Option '--json' does not take a value."),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(args: list[str], says: str) -> None:
    proc = _run(*args)
    line = _one_error_line(proc)
    says = says.format(prog="python -m exim_archive")  # the name it was run by
    assert proc.returncode == 2 and says in line and "internal error" not in line, line


def test_missing_archive(tmp_path: Path) -> None:
    for command in ("verify", "inspect", "unpack"):
        extra = ["--tracking-uri", f"sqlite:///{tmp_path / 't.db'}"] if command == "unpack" else []
        line = _one_error_line(_run(command, str(tmp_path / "nope.exim"), *extra))
        assert "nope.exim: no such file or directory" in line
    assert not (tmp_path / "t.db").exists()


def test_pack_never_creates_its_source(tmp_path: Path) -> None:
    """MLflow would make a store at a mistyped path (a sqlite file, a file store's folders)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (f"sqlite:///{tmp_path / 'typo.db'}", "no such database file"),
        (str(tmp_path / "typo"), "no such folder"),
        (empty.as_uri(), "not an MLflow file store"),
    ]
    for uri, says in cases:
        proc = _run("pack", str(tmp_path / "a.exim"), "--tracking-uri", uri)
        assert proc.returncode == 5 and says in _one_error_line(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    assert not any(empty.iterdir())


def test_verify_against_never_creates_the_target(tmp_path: Path, new_sqlite: NewStore) -> None:
    src = new_sqlite("src")
    seed_rich(src, "v", tmp_path / "art")
    pack(tmp_path / "a.exim", tracking_uri=src)
    for uri, says in [
        (f"sqlite:///{tmp_path / 'typo.db'}", "no such database file"),
        (str(tmp_path / "typo"), "no such folder"),
    ]:
        proc = _run("verify", str(tmp_path / "a.exim"), "--against", uri)
        assert proc.returncode == 6 and says in _one_error_line(proc)
    assert not (tmp_path / "typo.db").exists() and not (tmp_path / "typo").exists()


def test_not_an_archive(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello, not a zip\n")
    line = _one_error_line(_run("verify", str(bogus)))
    assert "notes.txt" in line and "ZIP" in line


def test_unreachable_server(tmp_path: Path) -> None:
    line = _one_error_line(
        _run("pack", str(tmp_path / "a.exim"), "--tracking-uri", "http://127.0.0.1:9")
    )
    assert "http://127.0.0.1:9: cannot reach the tracking server" in line
    assert not list(tmp_path.iterdir())


def test_no_tracking_uri(tmp_path: Path) -> None:
    env = {k: v for k, v in __import__("os").environ.items() if k != "MLFLOW_TRACKING_URI"}
    line = _one_error_line(_run("pack", str(tmp_path / "a.exim"), env=env))
    assert "--tracking-uri" in line


def test_unknown_experiment(tmp_path: Path, new_sqlite: NewStore) -> None:
    uri = new_sqlite("src")
    line = _one_error_line(
        _run("pack", str(tmp_path / "a.exim"), "--tracking-uri", uri, "-e", "nope")
    )
    assert "no experiment named or numbered 'nope'" in line
    assert not (tmp_path / "a.exim").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = _run("--debug", "verify", str(tmp_path / "nope.exim"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_failed_pack_leaves_no_file(
    tmp_path: Path, new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = new_sqlite("src")
    seed_rich(uri, "f", tmp_path / "art")
    calls = {"n": 0}
    real = SqlSource.download_artifacts  # a sqlite store is read with plain SQL

    def dying(self: SqlSource, run: object, destination: Path) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise SourceError("the server went away", where=uri)
        return real(self, run, destination)  # type: ignore[arg-type]

    monkeypatch.setattr(SqlSource, "download_artifacts", dying)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SourceError):
        pack(out / "a.exim", tracking_uri=uri)
    assert list(out.iterdir()) == [], "a failed pack left files behind"
    monkeypatch.setattr(SqlSource, "download_artifacts", real)
    pack(out / "a.exim", tracking_uri=uri)
    assert [p.name for p in out.iterdir()] == ["a.exim"]


def test_pack_refuses_to_overwrite_without_force(
    tmp_path: Path, new_sqlite: NewStore, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = new_sqlite("src")
    target = tmp_path / "a.exim"
    target.write_text("precious")
    assert main(["pack", str(target), "--tracking-uri", uri]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert target.read_text() == "precious"
    assert main(["pack", str(target), "--tracking-uri", uri, "--force"]) == 0
    assert main(["verify", str(target)]) == 0


def test_same_input_same_bytes(
    tmp_path: Path, new_sqlite: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = new_sqlite("src")
    seed_rich(uri, "d", tmp_path / "art")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    one = pack(tmp_path / "one.exim", tracking_uri=uri, workers=1)
    many = pack(tmp_path / "many.exim", tracking_uri=uri, workers=8)
    assert one.digest == many.digest
    assert (tmp_path / "one.exim").read_bytes() == (tmp_path / "many.exim").read_bytes()
    # runs read from the source, and held by the writer, two at a time: the same bytes
    from exim_archive import bundle_writer

    pack_module = sys.modules["exim_archive.pack"]
    monkeypatch.setattr(pack_module, "RUNS_AT_A_TIME", 2)
    monkeypatch.setattr(bundle_writer, "RUNS_HELD", 2)
    pairs = pack(tmp_path / "pairs.exim", tracking_uri=uri, workers=8)
    assert pairs.digest == one.digest and pairs.counts == one.counts
    assert (tmp_path / "pairs.exim").read_bytes() == (tmp_path / "one.exim").read_bytes()


def test_inspect_json_and_text(
    tmp_path: Path, new_sqlite: NewStore, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    uri = new_sqlite("src")
    names = seed_rich(uri, "n", tmp_path / "art")
    pack(tmp_path / "a.exim", tracking_uri=uri)
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "a.exim"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format_version"] == "1.1"
    assert info["counts"]["runs"] == 5 and info["counts"]["deleted_runs"] == 2
    assert {e["name"]: e["runs"] for e in info["experiments"]}[names[0]] == 4
    assert info["source"]["tracking_uri"] == uri
    assert info["time_span"]["first"] == "2026-01-01T00:00:00Z"
    assert main(["inspect", str(tmp_path / "a.exim")]) == 0
    text = capsys.readouterr().out
    assert names[0] in text and "metrics" in text and "(deleted)" in text


def test_commands_load_no_pandas_and_pandas_still_works_after(
    tmp_path: Path, new_sqlite: NewStore
) -> None:
    """pyarrow imports pandas at its first conversion (apache/arrow#34994); the CLI's process
    spares it (cli._arrow_without_pandas). pack and unpack through SQL, verify and inspect run
    in one process without pandas; Arrow's pandas conversions still work after them."""
    from workload import seed_bulk

    src, dst = new_sqlite("src"), new_sqlite("dst")
    seed_bulk(src, "bulk", 2, 20, tmp_path / "art")
    archive = str(tmp_path / "a.exim")
    commands = [
        ["pack", archive, "--tracking-uri", src],
        ["verify", archive],
        ["inspect", archive],
        ["unpack", archive, "--tracking-uri", dst],
    ]
    code = (
        "import sys; from exim_archive.cli import main\n"
        f"for argv in {commands!r}:\n"
        "    assert main(argv) == 0, argv\n"
        "    assert 'pandas' not in sys.modules, f'pandas imported by {argv[0]}'\n"
        "import pandas as pd, pyarrow as pa\n"
        "df = pd.DataFrame({'c': pd.Categorical(['x', 'y', 'x'])})\n"
        "assert pa.Table.from_pandas(df).schema.field('c').type.index_type == pa.int8()\n"
        "assert pa.table({'a': [1, 2]}).to_pandas()['a'].tolist() == [1, 2]\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    ("how", "chosen", "expect"),
    [("-m", None, "jemalloc"), ("script", None, "jemalloc"), ("-m", "system", "system")],
)
def test_the_command_runs_on_a_pool_that_gives_memory_back(
    tmp_path: Path, how: str, chosen: str | None, expect: str
) -> None:
    """The exim-archive command (the console script or python -m exim_archive) allocates Arrow
    memory from jemalloc, set to return freed pages at once (PyArrow's default, mimalloc, keeps
    them), unless ARROW_DEFAULT_MEMORY_POOL names a pool: then the user's choice stands.
    ``--version`` names the pool in use."""
    import os

    import pyarrow as pa

    if sys.platform != "linux":
        pytest.skip("the CLI picks jemalloc on Linux only, where it was measured")
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        pytest.skip("this pyarrow build has no jemalloc: the CLI keeps the default pool")
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if chosen is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = chosen
    script = Path(sys.executable).parent / "exim-archive"
    if how == "script" and not script.exists():
        pytest.skip(f"no console script beside {sys.executable} (package not installed)")
    command = [str(script)] if how == "script" else [sys.executable, "-m", "exim_archive"]
    done = subprocess.run(
        [*command, "--version"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith(f"memory pool {expect})"), done.stdout


def test_the_library_leaves_the_pool_alone(tmp_path: Path) -> None:
    """Importing exim_archive in another program changes nothing of pyarrow's."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    code = (
        "import os, exim_archive, pyarrow as pa\n"
        "assert 'ARROW_DEFAULT_MEMORY_POOL' not in os.environ\n"
        "print(pa.default_memory_pool().backend_name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == _pyarrow_default_pool()


def _pyarrow_default_pool() -> str:
    """pyarrow's own default pool in a fresh process."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    code = "import pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return done.stdout.split()[-1]
