"""The habits that keep the codebase healthy, run by the same command as every other test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import exim_archive

ROOT = Path(__file__).resolve().parent.parent


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    "args",
    [("ruff", "check", "."), ("ruff", "format", "--check", "."), ("mypy",)],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool_is_clean(args: tuple[str, ...]) -> None:
    proc = _tool(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_public_api_is_curated() -> None:
    exported = set(exim_archive.__all__)
    assert {"pack", "unpack", "verify", "inspect_archive", "ArchiveError"} <= exported
    for name in exported:
        assert hasattr(exim_archive, name), name
    public = {n for n in vars(exim_archive) if not n.startswith("_")}
    modules = {n for n, v in vars(exim_archive).items() if type(v).__name__ == "module"}
    assert public - modules <= exported | {"annotations"}
