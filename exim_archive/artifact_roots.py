"""Where a run's artifact files are when the tracking URI is a database, not a server.

A server started with ``--artifacts-destination D`` hands out ``mlflow-artifacts:/P`` URIs and
keeps the files at ``D/P``; a database URI alone cannot reach them. Given the same ``D``
(``--artifacts-destination`` on pack and unpack: a local path or any URI MLflow's artifact
repositories take), ``mlflow-artifacts:/P`` (or ``mlflow-artifacts://host:port/P``) means
``D/P`` here too. Local folders (a plain path or ``file:`` URI) are read in place, without
copying; anything else goes through MLflow's artifact repository for that URI.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from .errors import ArchiveError, SourceError

if TYPE_CHECKING:
    from .records import RunRecord

__all__ = ["PROXIED", "ArtifactRoots", "files_under"]

PROXIED = "mlflow-artifacts:"
"""The scheme of artifact URIs a tracking server serves itself."""


def _url2pathname(path: str) -> str:
    """``urllib.request.url2pathname`` of a ``file:`` URI's path (its host already split off)
    without importing ``urllib.request`` (~15 ms: http.client, ssl, email): unquoted on POSIX,
    ``nturl2path`` (what urllib itself uses there) on Windows."""
    if os.name == "nt":
        from nturl2path import url2pathname

        return str(url2pathname(path))
    return unquote(path)


def files_under(folder: Path) -> list[tuple[str, Path]]:
    """(path relative to ``folder``, file) of every file below ``folder``, sorted by path.

    Links to files count, links to folders are not entered, as with ``Path.rglob`` on Python
    3.11 (a pack of 1,000 small runs spent a fifth of its time in ``rglob``). One ``scandir``
    per folder, whose entries know their type: no ``stat`` but for links, no path arithmetic.
    Folders that cannot be listed are skipped, as ``os.walk`` does."""
    out: list[tuple[str, Path]] = []
    pending = [(os.fspath(folder), "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                pending.append((entry.path, f"{prefix}{entry.name}/"))
            elif entry.is_file():  # a link to a file counts
                out.append((prefix + entry.name, Path(entry.path)))
    out.sort()
    return out


class ArtifactRoots:
    """Maps artifact URIs of one database store to where the files are."""

    def __init__(self, destination: str | None = None) -> None:
        self.destination = destination.rstrip("/") if destination else None
        if self.destination and "://" not in self.destination and ":" not in self.destination[:2]:
            self.destination = str(Path(self.destination).absolute())

    def resolve(self, uri: str) -> str | None:
        """``uri`` with a served (``mlflow-artifacts:``) prefix replaced by the destination;
        None for a served URI when no destination was given."""
        if not uri.startswith(PROXIED):
            return uri
        if self.destination is None:
            return None
        path = urlsplit(uri).path.strip("/")
        return f"{self.destination}/{path}" if path else self.destination

    def located(
        self, run_id: str, uri: str, *, error: type[ArchiveError], where: str, other_ways: str
    ) -> str:
        """:meth:`resolve`, or (a served URI and no destination) ``error`` naming the flag and
        ``other_ways`` out."""
        resolved = self.resolve(uri)
        if resolved is None:
            raise error(
                f"run {run_id} keeps its artifacts behind a tracking server ({uri})",
                where=where,
                hint=f"give that server's --artifacts-destination as --artifacts-destination, "
                f"{other_ways}",
            )
        return resolved

    @staticmethod
    def local_folder(uri: str) -> Path | None:
        """The folder a plain path or ``file:`` URI names; None for any other scheme."""
        parts = urlsplit(uri)
        if parts.scheme == "file":
            return Path(_url2pathname(parts.path))
        if not parts.scheme or len(parts.scheme) == 1:  # a path (or a Windows drive letter)
            return Path(uri)
        return None

    def in_place(self, run: RunRecord) -> bool:
        """Whether :meth:`run_files` reads the run's files where they are (a local folder, or
        no artifact URI): then it only lists them, no download."""
        resolved = self.resolve(run.artifact_uri) if run.artifact_uri else ""
        return resolved is not None and (not resolved or self.local_folder(resolved) is not None)

    def run_files(self, source: Any, run: RunRecord, scratch: Path) -> list[tuple[str, Path]]:
        """(artifact path, local file) of every file of the run, sorted by path. A local
        folder is read where it is; other storage is downloaded into ``scratch`` through
        ``source.call`` (retries, one error line)."""
        uri = run.artifact_uri or ""
        if not uri:
            return []
        resolved = self.located(
            run.run_id,
            uri,
            error=SourceError,
            where=source.safe_uri,
            other_ways="pack through the server's http:// URI, or use --no-artifacts",
        )
        folder = self.local_folder(resolved)
        if folder is not None:
            return files_under(folder) if folder.is_dir() else []
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = get_artifact_repository(resolved)
        top = source.call(f"listing artifacts of run {run.run_id}", repo.list_artifacts)
        if not top:
            return []

        def download() -> Path:
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            return Path(repo.download_artifacts("", dst_path=os.fspath(scratch)))

        return files_under(
            source.call(f"downloading artifacts of run {run.run_id} ({uri})", download)
        )
