"""exim_archive.versions: the dist-info folder name says what importlib.metadata says."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest

from exim_archive.versions import installed_version


@pytest.mark.parametrize(
    "name", ["mlflow", "mlflow-skinny", "pyarrow", "zstandard", "typer", "exim-archive"]
)
def test_installed_version_matches_importlib_metadata(name: str) -> None:
    assert installed_version(name) == importlib.metadata.version(name)


def test_the_first_folder_on_sys_path_wins_as_for_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "My_Pkg-9.8.7.dist-info").mkdir()
    monkeypatch.setattr(sys, "path", [str(tmp_path / "missing"), str(tmp_path), *sys.path])
    assert installed_version("my-pkg") == "9.8.7"


def test_a_distribution_without_a_dist_info_folder_falls_back() -> None:
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        installed_version("no-such-distribution-anywhere")
