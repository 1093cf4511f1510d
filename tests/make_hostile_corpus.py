"""Write the committed hostile corpus, ``tests/data/hostile/``, from the golden archive.

    /work/venv/bin/python tests/make_hostile_corpus.py

Removes the ``*.exim`` files there first, then writes every case of :func:`hostile.build_corpus`
marked ``commit=True`` as ``<family>--<name>.exim``, plus ``index.json`` (what each case must
produce). The sweeps (every truncation point, ~300 bit flips) are not committed: the tests build
them in memory from the same golden archive.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hostile import build_corpus  # noqa: E402

GOLDEN = HERE / "data" / "golden" / "v1.1-sample.exim"
CORPUS = HERE / "data" / "hostile"


def main() -> int:
    cases = [c for c in build_corpus(GOLDEN.read_bytes()) if c.commit]
    CORPUS.mkdir(parents=True, exist_ok=True)
    for old in CORPUS.glob("*.exim"):
        old.unlink()
    index = {}
    for case in cases:
        (CORPUS / case.filename).write_bytes(case.data)
        index[case.filename] = {"expect": case.expect, "fatal": case.fatal, "ok": case.ok}
    (CORPUS / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    total = sum(len(c.data) for c in cases)
    print(f"wrote {len(cases)} cases ({total:,} bytes) to {CORPUS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
