"""Progress: a bar with counts on a terminal, nothing when piped."""

from __future__ import annotations

import io

from exim_archive.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_with_counts_on_a_terminal() -> None:
    out = _Tty()
    bar = Progress("unpack", 3, stream=out)
    for _ in range(3):
        bar.advance()
    bar.close()
    text = out.getvalue()
    assert "unpack" in text and "3/3" in text and "#" in text and text.endswith("\n")


def test_quiet_when_piped() -> None:
    out = io.StringIO()
    bar = Progress("pack", 5, stream=out)
    for _ in range(5):
        bar.advance()
    bar.close()
    assert out.getvalue() == ""
