"""``python tests/paced.py SECONDS ARGS...``: the ``exim-archive`` command, with the unpack
pausing SECONDS after each run it fills.

Tests that stop an unpack for real mid-way (a kill, Ctrl-C, a dead server) need it to be
mid-way when they look. Unpacked at full speed, a small workload is done in a second or two on
one machine and a test polling the target can miss the moment on another; a bigger workload
only moves the race. Paced, every run still goes through the real code, in a real process,
against a real store: the pause falls after a run is filled, outside any transaction, so the
stop lands between or inside runs as it would on a slower target.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from typing import Any

from exim_archive.cli import main


def command(seconds: float) -> list[str]:
    """The command line that runs ``exim-archive`` paced by ``seconds``; add its arguments."""
    return [sys.executable, str(Path(__file__)), str(seconds)]


def _paced(seconds: float) -> None:
    # ``exim_archive.unpack`` the attribute is the function; the module is in sys.modules
    unpack_module = importlib.import_module("exim_archive.unpack")
    fill = unpack_module._Unpacker.fill

    def fill_then_pause(self: Any, item: Any) -> int:
        points = fill(self, item)
        time.sleep(seconds)
        return points

    unpack_module._Unpacker.fill = fill_then_pause  # type: ignore[method-assign]


if __name__ == "__main__":
    _paced(float(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
