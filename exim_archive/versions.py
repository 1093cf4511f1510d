"""Installed packages' versions, for the producer and source fields an archive records.

``importlib.metadata.version`` costs ~20 ms on every pack (its import brings email parsing,
zipfile and csv along). For an installed wheel the ``NAME-VERSION.dist-info`` folder on
``sys.path`` says the same in a directory listing; anything else (an egg, an odd layout) falls
back to importlib.metadata.
"""

from __future__ import annotations

import os
import sys

__all__ = ["installed_version"]


def installed_version(name: str) -> str:
    """The version of distribution ``name``, found first on ``sys.path`` as Python would."""
    prefix = name.replace("-", "_").replace(".", "_").lower() + "-"
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for found in names:
            if found.endswith(".dist-info") and found.lower().startswith(prefix):
                return found[len(prefix) : -len(".dist-info")]
    from importlib.metadata import version

    return version(name)
