"""No credential ever lands in an archive, a log line, an error message or a lineage tag; and
nothing read from an archive is ever executed or unpickled.

Secrets are planted everywhere a user may put one: user:password in the tracking URI (MLflow
really uses it: the fault proxy sees the Basic header), a token in the URI's query string,
MLFLOW_TRACKING_TOKEN and DATABRICKS_TOKEN in the environment, a password in a database URI.
Then every command runs through the CLI (with and without --debug) and everything it produced
is searched: stdout, stderr, the archive's bytes and every member decoded (zstd blobs
decompressed, parquet tables read back as text), and every tag and param unpack wrote.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import MlflowServer, NewStore
from faultproxy import RESET, Fault, FaultProxy, Request
from mlflow import MlflowClient
from mlflow.entities import ViewType
from workload import seed_bulk, seed_rich

from exim_archive import pack

PASSWORD = "S3cr3tPassw0rd"
QUERY_TOKEN = "qTokSECRET789"
TRACKING_TOKEN = "tok-SECRET-123"
DATABRICKS_TOKEN = "dapiSECRET"
DB_PASSWORD = "PgS3cretPw"
SECRETS = {
    "URI password": PASSWORD,
    "Basic credentials": base64.b64encode(f"alice:{PASSWORD}".encode()).decode(),
    "query token": QUERY_TOKEN,
    "MLFLOW_TRACKING_TOKEN": TRACKING_TOKEN,
    "DATABRICKS_TOKEN": DATABRICKS_TOKEN,
    "database password": DB_PASSWORD,
}
ENV = {
    **os.environ,
    "MLFLOW_TRACKING_TOKEN": TRACKING_TOKEN,
    "DATABRICKS_TOKEN": DATABRICKS_TOKEN,
    "EXIM_RETRY_ATTEMPTS": "2",
    "EXIM_RETRY_BACKOFF": "0.1",
}
# The CLI, with MLflow's own database-connection retries (10, about 100 s) cut to 2: an
# unreachable database then fails in seconds, with MLflow's warning line still printed.
_CLI = (
    "import sys, mlflow.store.db.utils as u; u.MAX_RETRY_COUNT = 2; "
    "from exim_archive.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CLI, *args], capture_output=True, text=True, env=ENV, timeout=180
    )


def _leaks(text: str | bytes) -> list[str]:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    return [name for name, secret in SECRETS.items() if secret.encode() in data]


def _archive_texts(path: Path) -> dict[str, bytes]:
    """The whole file, and every member raw and decoded."""
    out = {"<file>": path.read_bytes()}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            data = zf.read(name)
            out[name] = data
            if name.endswith(".zst"):
                reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
                out[f"{name} (decompressed)"] = reader.read()
            if name.endswith(".parquet"):
                table = pq.read_table(io.BytesIO(data))
                text = json.dumps(table.to_pylist(), default=str, ensure_ascii=False)
                meta = str(table.schema.metadata)
                out[f"{name} (rows)"] = (text + meta).encode()
    assert any(k.endswith("(rows)") for k in out) and "manifest.json" in out
    return out


def _target_texts(uri: str, names: list[str]) -> dict[str, str]:
    """Every tag and param of the experiments and their runs, as one text per object."""
    client = MlflowClient(tracking_uri=uri)
    out = {}
    for name in names:
        exp = client.get_experiment_by_name(name)
        assert exp is not None, name
        out[f"experiment {name}"] = json.dumps(exp.tags)
        for run in client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL):
            data = {"tags": run.data.tags, "params": run.data.params, "info": str(run.info)}
            out[f"run {run.info.run_id}"] = json.dumps(data)
    return out


def test_no_secret_in_archive_output_or_target(
    tmp_path: Path, source_server: MlflowServer, target_server: MlflowServer, unique: str
) -> None:
    names = seed_rich(source_server.url, unique)
    archive = str(tmp_path / "a.exim")
    selection = [arg for name in names for arg in ("--experiment", name)]
    outputs: dict[str, str] = {}

    with FaultProxy(source_server.url) as sp, FaultProxy(target_server.url) as tp:
        src = f"http://alice:{PASSWORD}@127.0.0.1:{sp.port}"
        dst = f"http://alice:{PASSWORD}@127.0.0.1:{tp.port}"
        commands = {
            "pack": ("pack", archive, "--tracking-uri", src, *selection),
            "pack --debug": ("--debug", "pack", archive, "--force", "--tracking-uri", src,
                             *selection, "--json"),
            "inspect": ("inspect", archive),
            "inspect --json": ("--debug", "inspect", archive, "--json"),
            "verify": ("verify", archive),
            "verify --json": ("verify", archive, "--json"),
            "unpack": ("unpack", archive, "--tracking-uri", dst, "--import-source-tags", "--json"),
            "unpack again": ("--debug", "unpack", archive, "--tracking-uri", dst,
                             "--import-source-tags"),
            "verify --against": ("verify", archive, "--against", dst),
        }  # fmt: skip
        for label, args in commands.items():
            proc = _cli(*args)
            assert proc.returncode == 0, f"{label}: {proc.stderr}"
            outputs[f"{label} stdout"] = proc.stdout
            outputs[f"{label} stderr"] = proc.stderr
        basic = f"Basic {SECRETS['Basic credentials']}"
        assert sp.authorization == {basic} and tp.authorization == {basic}, (
            "the URI's credentials were not used: the test would prove nothing"
        )

    for label, text in outputs.items():
        assert not _leaks(text), f"{label} shows {_leaks(text)}: {text[-2000:]}"
    for member, data in _archive_texts(Path(archive)).items():
        assert not _leaks(data), f"archive member {member} holds {_leaks(data)}"
    manifest = json.loads(zipfile.ZipFile(archive).read("manifest.json"))
    assert manifest["source"]["tracking_uri"] == sp.url

    written = _target_texts(target_server.url, names)
    lineage = [t for t in written.values() if "mlflow_exim.archive.source_tracking_uri" in t]
    assert len(lineage) == len(written), "--import-source-tags wrote no lineage tags"
    for label, text in written.items():
        assert not _leaks(text), f"target {label} holds {_leaks(text)}"
    assert sp.url in written[f"experiment {names[0]}"]


def _drops_api_calls(req: Request) -> Fault | None:
    """A server that answers /health, then drops every API connection. (With a query string in
    the tracking URI, MLflow asks for ``/?token=.../health``: that is /health here too.)"""
    return None if req.path.endswith("/health") else RESET


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_no_secret_in_error_messages(
    tmp_path: Path,
    new_sqlite: NewStore,
    source_server: MlflowServer,
    debug: bool,
) -> None:
    src = new_sqlite("src")
    seed_bulk(src, "small", runs=2, points=10, artifact_root=tmp_path / "art")
    archive = str(tmp_path / "a.exim")
    pack(archive, tracking_uri=src)
    flag = ["--debug"] if debug else []
    database = f"postgresql://bob:{DB_PASSWORD}@127.0.0.1:1/mlflow"
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    with (
        FaultProxy(source_server.url, _drops_api_calls) as dropping,
        FaultProxy(source_server.url, lambda _r: Fault.of(403)) as refusing,
        FaultProxy(source_server.url) as plain,
    ):
        creds = f"alice:{PASSWORD}@127.0.0.1"
        dropped = f"http://{creds}:{dropping.port}/?token={QUERY_TOKEN}"
        cases = {
            "pack, connections dropped": (("pack", "p1.exim", "--tracking-uri", dropped), 5),
            "unpack, connections dropped": (("unpack", archive, "--tracking-uri", dropped), 6),
            "verify --against, dropped": (("verify", archive, "--against", dropped), 6),
            "pack, refused": (("pack", "p2.exim", "--tracking-uri",
                               f"http://{creds}:{refusing.port}"), 5),
            "pack, query token": (("pack", "p3.exim", "--tracking-uri",
                                   f"{plain.url}/?token={QUERY_TOKEN}"), 5),
            "pack, nothing listening": (("pack", "p4.exim", "--tracking-uri",
                                         f"http://{creds}:1/?token={QUERY_TOKEN}"), 5),
            "pack, database down": (("pack", "p5.exim", "--tracking-uri", database), 5),
            "unpack, database down": (("unpack", archive, "--tracking-uri", database), 6),
        }  # fmt: skip
        for label, (args, _code) in cases.items():
            results[label] = _cli(*flag, *args)
        assert dropping.requests("/api/"), "the dropping proxy saw no API call"

    for label, proc in results.items():
        expected = cases[label][1]
        assert proc.returncode == expected, f"{label}: {proc.returncode} {proc.stderr}"
        both = proc.stdout + proc.stderr
        assert not _leaks(both), f"{label} shows {_leaks(both)}: {both[-3000:]}"
        if not debug:
            lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
            assert len(lines) == 1 and "Traceback" not in proc.stderr, f"{label}: {proc.stderr}"
    assert not list(Path().glob("p*.exim"))
    assert "refused" in results["pack, refused"].stderr
    assert "127.0.0.1:1/mlflow" in results["pack, database down"].stderr


def test_nothing_from_an_archive_is_executed_or_unpickled() -> None:
    """The package never unpickles, unmarshals, evals, execs or shells out: archive bytes are
    only ever parsed as ZIP, JSON, parquet and zstd, and artifacts only copied."""
    package = Path(__file__).resolve().parent.parent / "exim_archive"
    sources = sorted(package.glob("*.py"))
    assert len(sources) > 10
    forbidden = re.compile(
        r"\b(pickle|cPickle|cloudpickle|dill|marshal|shelve|joblib)\b"
        r"|(?<![.\w])(eval|exec|compile|__import__)\s*\("
        r"|\bsubprocess\b|\bos\.(system|popen|exec\w*|spawn\w*)\b"
        r"|\byaml\.(unsafe_)?load\b|allow_pickle|PyExtensionType|set_auto_load"
    )
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sources
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if forbidden.search(line)
    ]
    assert found == []


def test_scrub_removes_credentials_from_any_text(monkeypatch: pytest.MonkeyPatch) -> None:
    from exim_archive.mlflow_errors import scrub

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TRACKING_TOKEN)
    monkeypatch.setenv("DATABRICKS_TOKEN", DATABRICKS_TOKEN)
    text = (
        f"API request to http://alice:{PASSWORD}@host:5000/api/2.0/x failed; "
        f"https://bob:p@ss:{PASSWORD}@h/x?run_id=1&access_token={QUERY_TOKEN}&X-Amz-Signature=abc "
        f"postgresql://bob:{DB_PASSWORD}@127.0.0.1:1/db header Bearer {TRACKING_TOKEN} "
        f"and {DATABRICKS_TOKEN}"
    )
    clean = scrub(text)
    assert not _leaks(clean) and "abc" not in clean, clean
    assert "http://host:5000/api/2.0/x" in clean and "run_id=1" in clean
    assert "postgresql://127.0.0.1:1/db" in clean
