"""exim-archive: MLflow tracking data in one verifiable archive file, and back.

The public API mirrors the CLI::

    from exim_archive import pack, unpack, verify, inspect_archive
    pack("runs.exim", tracking_uri="http://127.0.0.1:5000")
    verify("runs.exim").raise_if_failed()
    unpack("runs.exim", tracking_uri="sqlite:///target.db", import_source_tags=True)
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (
    ArchiveError,
    ArchiveFormatError,
    SourceError,
    TargetError,
    UnsupportedVersionError,
    UsageError,
)
from .pack import PackReport, pack
from .summary import inspect_archive
from .unpack import UnpackReport, unpack
from .verify import VerifyReport, verify

__all__ = [
    "ArchiveError",
    "ArchiveFormatError",
    "PackReport",
    "SourceError",
    "TargetError",
    "UnpackReport",
    "UnsupportedVersionError",
    "UsageError",
    "VerifyReport",
    "__version__",
    "inspect_archive",
    "pack",
    "unpack",
    "verify",
]
