"""The one exception tree of exim-archive.

Every failure the library reports is an :class:`ArchiveError`; foreign exceptions (MLflow,
pyarrow, zipfile, OS) are translated where they are called, never let through.

    ArchiveError                  root; ``str(e)`` is one line: what, where, what to do
    +-- ArchiveFormatError        the archive file is damaged, truncated, unsafe or not an archive
    |   +-- UnsupportedVersionError   a format version or must-understand feature this reader lacks
    +-- SourceError               reading the tracking server for ``pack`` failed
    +-- TargetError               writing the tracking server for ``unpack`` failed or would clash
    +-- UsageError                the caller asked for something impossible (bad path, bad option)

The CLI prints ``error: <str(e)>`` and exits with :attr:`ArchiveError.exit_code`.
"""

from __future__ import annotations

__all__ = [
    "ArchiveError",
    "ArchiveFormatError",
    "SourceError",
    "TargetError",
    "UnsupportedVersionError",
    "UsageError",
]


class ArchiveError(Exception):
    """Root of every error exim-archive raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text = f"{text}; {self.hint}"
        return " ".join(text.split("\n"))


class ArchiveFormatError(ArchiveError):
    """The archive is not a valid exim-archive (damaged, truncated, unsafe, or something else)."""

    exit_code = 3


class UnsupportedVersionError(ArchiveFormatError):
    """The archive needs a newer reader (major version or must-understand feature)."""

    exit_code = 4


class SourceError(ArchiveError):
    """Reading from the source tracking server failed."""

    exit_code = 5


class TargetError(ArchiveError):
    """Writing into the target tracking server failed or would clash with what is there."""

    exit_code = 6


class UsageError(ArchiveError):
    """The request itself cannot be carried out (missing file, bad option value)."""

    exit_code = 2
