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
    for folder, version in (("first/My_Pkg-9.8.7", "9.8.7"), ("second/my_pkg-1.0", "1.0")):
        info = tmp_path / f"{folder}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: my-pkg\nVersion: {version}\n")
    folders = [tmp_path / "missing", tmp_path / "first", tmp_path / "second"]
    monkeypatch.setattr(sys, "path", [str(f) for f in folders])
    assert installed_version("my-pkg") == "9.8.7"
    assert installed_version("my-pkg") == importlib.metadata.version("my-pkg")


def test_a_distribution_without_a_dist_info_folder_falls_back() -> None:
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        installed_version("no-such-distribution-anywhere")
