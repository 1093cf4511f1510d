"""MLflow's per-request Databricks probe made cheap (``skip_absent_databricks_probes``).

Each case runs in a fresh interpreter: the change is to ``sys.modules``, process-wide.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

_PROBE = textwrap.dedent(
    """
    import importlib.util, json, sys
    from mlflow.tracking.request_header.registry import resolve_request_headers

    before = resolve_request_headers()
    installed = {n: importlib.util.find_spec(n) is not None for n in ("IPython", "pyspark")}
    from exim_archive.mlflow_errors import skip_absent_databricks_probes

    skip_absent_databricks_probes()
    after = resolve_request_headers()
    failed = {}
    for name in ("IPython", "pyspark.sql", "dbruntime.databricks_repl_context"):
        try:
            __import__(name)
            failed[name] = False
        except ImportError:
            failed[name] = True
    print(json.dumps({
        "before": before, "after": after, "installed": installed, "failed": failed,
        "none": sorted(k for k, v in sys.modules.items() if v is None and k.split(".")[0]
                       in ("IPython", "pyspark", "dbruntime")),
    }))
    """
)


def _probe(tmp_path: Path, extra_path: Path | None = None) -> dict[str, Any]:
    env_path = [str(extra_path)] if extra_path else []
    code = f"import sys; sys.path[:0] = {env_path!r}\n" + _PROBE
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_absent_probe_modules_fail_at_once_and_headers_stay_the_same(tmp_path: Path) -> None:
    got = _probe(tmp_path)
    assert got["after"] == got["before"]  # MLflow still finds no Databricks context
    installed = got["installed"]
    expected_none = {"dbruntime", "dbruntime.databricks_repl_context"}
    if not installed["IPython"]:
        expected_none.add("IPython")
    if not installed["pyspark"]:
        expected_none |= {"pyspark", "pyspark.sql"}
    assert set(got["none"]) == expected_none
    assert got["failed"] == {
        "IPython": not installed["IPython"],
        "pyspark.sql": not installed["pyspark"],
        "dbruntime.databricks_repl_context": True,
    }


def test_an_installed_probe_package_is_left_alone(tmp_path: Path) -> None:
    """A package that is there (here a stand-in ``pyspark`` with no active session) is still
    imported and asked, as MLflow would without exim-archive."""
    site = tmp_path / "site"
    (site / "pyspark").mkdir(parents=True)
    (site / "pyspark" / "__init__.py").write_text("")
    (site / "pyspark" / "sql.py").write_text(
        "class SparkSession:\n"
        "    _instantiatedSession = None\n"
        "    @staticmethod\n"
        "    def getActiveSession():\n"
        "        return None\n"
    )
    got = _probe(tmp_path, site)
    assert got["installed"]["pyspark"] is True
    assert "pyspark" not in got["none"] and "pyspark.sql" not in got["none"]
    assert got["failed"]["pyspark.sql"] is False
    assert got["after"] == got["before"]
