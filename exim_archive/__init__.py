"""exim-archive: MLflow tracking data in one verifiable archive file, and back.

The public API mirrors the CLI::

    from exim_archive import pack, unpack, verify, inspect_archive
    pack("runs.exim", tracking_uri="http://127.0.0.1:5000")
    verify("runs.exim").raise_if_failed()
    unpack("runs.exim", tracking_uri="sqlite:///target.db", import_source_tags=True)
"""

from __future__ import annotations

import os
import sys

__version__ = "0.1.0"


def _started_as_cli() -> bool:
    """This process is the ``exim-archive`` command (the console script or ``python -m
    exim_archive``), told while the package first loads, before pyarrow does."""
    if os.path.basename(sys.argv[0]) in ("exim-archive", "exim-archive.exe"):
        return True
    return list(getattr(sys, "orig_argv", [])[1:3]) == ["-m", "exim_archive"]


if sys.platform == "linux" and _started_as_cli():
    # Arrow reads its pool's name once, when pyarrow loads. PyArrow 20 made mimalloc the default
    # (apache/arrow#43254), which keeps freed pages; jemalloc, set by the CLI to give them back
    # at once (cli._return_freed_memory), peaks lower: 308 against 351 MB unpacking 10,000 runs.
    # A pool the user names is kept; a library user's process is left as it is.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")

from .errors import (  # noqa: E402 (after the pool's name is set)
    ArchiveError,
    ArchiveFormatError,
    SourceError,
    TargetError,
    UnsupportedVersionError,
    UsageError,
)
from .pack import PackReport, pack  # noqa: E402
from .summary import inspect_archive  # noqa: E402
from .unpack import UnpackReport, unpack  # noqa: E402
from .verify import VerifyReport, verify  # noqa: E402

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
