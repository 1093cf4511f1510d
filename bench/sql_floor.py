#!/usr/bin/env python
"""The floor for packing metric points from a database: one SQL read plus one Parquet write.

Runs ``SELECT run_uuid, key, step, timestamp, value FROM metrics`` on an MLflow database
(``sqlite:///PATH`` with sqlite3, ``postgresql://...`` with psycopg), turns the rows into one
pyarrow table and writes it with ``pq.write_table(..., compression="zstd")``. No MLflow import,
no sorting, no manifest, no checks: the least any tool must do to get the same rows into Parquet.
``run_bench.py`` times this script as a whole (interpreter start-up included, as for the CLIs);
the inner timings are printed and, with ``--json``, written to a file. Not a test.

    python bench/sql_floor.py sqlite:////tmp/src/mlflow.db /tmp/floor.parquet
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

QUERY = "SELECT run_uuid, key, step, timestamp, value FROM metrics"
SCHEMA = pa.schema(
    [
        ("run_uuid", pa.string()),
        ("key", pa.string()),
        ("step", pa.int64()),
        ("timestamp", pa.int64()),
        ("value", pa.float64()),
    ]
)


def connect(uri: str) -> Any:
    """A DB-API connection: sqlite3 or psycopg."""
    if uri.startswith("sqlite:///"):
        import sqlite3

        return sqlite3.connect(uri.removeprefix("sqlite:///"))
    if uri.startswith(("postgresql://", "postgresql+psycopg://")):
        import psycopg

        return psycopg.connect(uri.replace("postgresql+psycopg://", "postgresql://", 1))
    raise SystemExit(f"unsupported URI (sqlite:/// or postgresql://): {uri}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("uri", help="sqlite:///PATH or postgresql://...")
    parser.add_argument("out", help="Parquet file to write")
    parser.add_argument("--json", help="also write the timings to this file")
    args = parser.parse_args()

    started = time.perf_counter()
    conn = connect(args.uri)
    try:
        cur = conn.cursor()
        cur.execute(QUERY)
        rows = cur.fetchall()
    finally:
        conn.close()
    queried = time.perf_counter()
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in SCHEMA]
    table = pa.Table.from_arrays(
        [pa.array(col, type=f.type) for col, f in zip(columns, SCHEMA, strict=True)],
        schema=SCHEMA,
    )
    del rows, columns
    converted = time.perf_counter()
    pq.write_table(table, args.out, compression="zstd")
    written = time.perf_counter()

    report = {
        "rows": table.num_rows,
        "query_s": queried - started,
        "to_arrow_s": converted - queried,
        "write_s": written - converted,
        "total_s": written - started,
        "bytes": Path(args.out).stat().st_size,
    }
    print(json.dumps(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
