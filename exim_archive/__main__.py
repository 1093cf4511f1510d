"""``python -m exim_archive``: the same as the ``exim-archive`` command."""

import sys

from .cli import main

sys.exit(main())
