"""Unit tests of exim_archive.run_order: run tables merged a chunk of runs at a time."""

from __future__ import annotations

import pyarrow as pa
import pytest

from exim_archive.errors import ArchiveFormatError
from exim_archive.run_order import RunOrdered, in_run_order

SCHEMA = pa.schema([("run_id", pa.string()), ("key", pa.string())])


def _groups(*rows: list[tuple[str, str]]) -> list[pa.Table]:
    return [
        pa.Table.from_pylist([{"run_id": r, "key": k} for r, k in group], schema=SCHEMA)
        for group in rows
    ]


def _pairs(table: pa.Table) -> list[tuple[str, str]]:
    return list(
        zip(table.column("run_id").to_pylist(), table.column("key").to_pylist(), strict=True)
    )


def test_rows_of_a_chunk_come_from_the_front_across_row_groups() -> None:
    groups = _groups([("a", "1"), ("b", "1")], [("b", "2"), ("c", "1")], [], [("e", "1")])
    table = RunOrdered(in_run_order(groups, "run_tags", "here"), SCHEMA)
    # chunk (a, b): b's rows span two row groups
    assert _pairs(table.of(pa.array(["a", "b"]))) == [("a", "1"), ("b", "1"), ("b", "2")]
    # chunk (d, e): c has rows but is not in the runs table; they are dropped, not handed on
    assert _pairs(table.of(pa.array(["d", "e"]))) == [("e", "1")]
    assert table.of(pa.array(["f"])).num_rows == 0
    assert table.of(pa.array([], pa.string())).num_rows == 0


def test_a_run_without_rows_gets_none_and_the_next_keeps_its_own() -> None:
    table = RunOrdered(_groups([("a", "1"), ("c", "1")]), SCHEMA)
    assert _pairs(table.upto("b")) == [("a", "1")]
    assert _pairs(table.upto("c")) == [("c", "1")]
    assert table.upto("z").num_rows == 0


@pytest.mark.parametrize(
    "groups",
    [
        _groups([("b", "1"), ("a", "1")]),  # within a row group
        _groups([("a", "1"), ("c", "1")], [("b", "1")]),  # across row groups
    ],
    ids=["within", "across"],
)
def test_rows_out_of_run_order_are_refused(groups: list[pa.Table]) -> None:
    with pytest.raises(ArchiveFormatError, match="table run_tags is not sorted by run_id") as err:
        list(in_run_order(groups, "run_tags", "archive.exim: member tables/run_tags.parquet"))
    assert err.value.where == "archive.exim: member tables/run_tags.parquet"
