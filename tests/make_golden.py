"""Write the golden valid archive ``tests/data/golden/v1.1-sample.exim`` and its counts.

Seeds a throw-away sqlite store with :func:`exim_archive.demo.seed_sample_store`, packs it with
``SOURCE_DATE_EPOCH=1767225600`` and records what a reader must find in it next to it, in
``v1.1-sample.json``. Run it only when the format's writer changes on purpose:

    /work/venv/bin/python tests/make_golden.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

GOLDEN_DIR = Path(__file__).resolve().parent / "data" / "golden"
GOLDEN = GOLDEN_DIR / "v1.1-sample.exim"
GOLDEN_JSON = GOLDEN_DIR / "v1.1-sample.json"
SOURCE_DATE_EPOCH = "1767225600"


def expected_counts(archive: Path) -> dict[str, object]:
    """What a reader finds in ``archive``: the numbers the golden test checks."""
    from exim_archive.bundle_reader import ArchiveReader

    with ArchiveReader(archive) as reader:
        return {
            "format_version": reader.manifest.format_version,
            "digest": reader.digest,
            "experiments": len(reader.experiments()),
            "runs": len(reader.runs()),
            "metric_points": sum(len(b) for b in reader.iter_metric_batches()),
            "artifacts": len(list(reader.iter_artifacts())),
            "members": len(reader.manifest.members),
        }


def main() -> int:
    os.environ["SOURCE_DATE_EPOCH"] = SOURCE_DATE_EPOCH
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    from exim_archive.demo import seed_sample_store
    from exim_archive.pack import pack

    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        uri = f"sqlite:///{work / 's.db'}"
        seed_sample_store(uri, work / "art")
        built = work / "golden.exim"
        pack(built, tracking_uri=uri, workers=1)
        GOLDEN.write_bytes(built.read_bytes())
    counts = expected_counts(GOLDEN)
    GOLDEN_JSON.write_text(json.dumps(counts, indent=2, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes) and {GOLDEN_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
