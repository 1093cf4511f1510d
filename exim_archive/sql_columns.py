"""Metric point columns of a SELECT straight into Arrow, without a Python object per value
where the driver allows it (:mod:`.sql_point_reader`'s bulk read).

The bulk read selects only ``step, timestamp, value, is_nan``: four fixed-width columns, no
strings (run ids and keys come from a separate ``COUNT(*)`` per run and key; see
:meth:`.sql_point_reader.PointReader.read`). With psycopg (3) or psycopg2 the rows arrive as
``COPY (SELECT ...) TO STDOUT (FORMAT BINARY)``, whose tuples then all have one size (43 bytes)
and are parsed as one numpy record array per block of :data:`PARTITION_ROWS`; other drivers
fetch rows in partitions of the same size, each turned into a record array in one call. Either
way the result is a table of ``step, timestamp, value, is_nan`` with NaN put back where ``is_nan``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "NUMERIC_COLUMNS",
    "PARTITION_ROWS",
    "POINTS",
    "UnexpectedCopyData",
    "fetch_points",
    "from_numpy",
]

NUMERIC_COLUMNS = ("step", "timestamp", "value", "is_nan")
PARTITION_ROWS = 50_000
POINTS = pa.schema(
    [
        ("step", pa.int64()),
        ("timestamp", pa.int64()),
        ("value", pa.float64()),
        ("is_nan", pa.bool_()),
    ]
)
_ROW = np.dtype([("step", "<i8"), ("timestamp", "<i8"), ("value", "<f8"), ("is_nan", "<i8")])
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_COPY_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("step_len", ">i4"),
        ("step", ">i8"),
        ("timestamp_len", ">i4"),
        ("timestamp", ">i8"),
        ("value_len", ">i4"),
        ("value", ">f8"),
        ("is_nan_len", ">i4"),
        ("is_nan", "u1"),
    ]
)
"""One tuple of the binary COPY format for (int8, int8, float8, bool), none NULL."""
_COPY_LENGTHS = (("step_len", 8), ("timestamp_len", 8), ("value_len", 8), ("is_nan_len", 1))


class UnexpectedCopyData(Exception):
    """The COPY stream is not the fixed-width tuples asked for (the caller reads another way)."""


_NUMPY_TYPES = {pa.int32(): "<i4", pa.int64(): "<i8", pa.float64(): "<f8"}


def from_numpy(values: Any, type_: pa.DataType) -> pa.Array:
    """A numpy array (int32, int64, float64 or bool) as an Arrow array without nulls.

    ``pa.array(ndarray)`` would do, but its first call imports ``numpy.ma`` (~13 ms of every
    pack from a database) only to ask whether the array is masked: this wraps the buffer."""
    if type_ == pa.bool_():
        data = np.packbits(np.asarray(values, dtype=bool), bitorder="little")
        return pa.Array.from_buffers(type_, len(values), [None, pa.py_buffer(data)])
    data = np.ascontiguousarray(values, dtype=_NUMPY_TYPES[type_])
    return pa.Array.from_buffers(type_, len(data), [None, pa.py_buffer(data)])


def _table(step: Any, timestamp: Any, value: Any, is_nan: Any) -> pa.Table:
    nan = from_numpy(is_nan, pa.bool_())
    values = from_numpy(value, pa.float64())
    if pc.any(nan).as_py():
        values = pc.if_else(nan, pa.scalar(math.nan, pa.float64()), values)
    return pa.table(
        [from_numpy(step, pa.int64()), from_numpy(timestamp, pa.int64()), values, nan],
        schema=POINTS,
    )


def fetch_points(
    raw: Any,
    driver: str,
    open_cursor: Callable[[Any], Any],
    columns: str,
    rest: str,
    params: tuple[Any, ...],
) -> pa.Table:
    """All rows of ``SELECT {columns} {rest}`` as one table, ``columns`` being
    :data:`NUMERIC_COLUMNS` quoted and ``rest`` the ``FROM ... WHERE ... ORDER BY ...``.

    ``raw`` is the DB-API connection, ``open_cursor(raw)`` the cursor for a row-by-row read."""
    if driver in ("psycopg", "psycopg2"):
        parts = _copy_binary(raw, driver, rest, params)
    else:
        parts = list(_fetched(open_cursor(raw), f"SELECT {columns} {rest}", params))
    return pa.concat_tables(parts) if parts else POINTS.empty_table()


def _fetched(cursor: Any, sql: str, params: tuple[Any, ...]) -> Iterator[pa.Table]:
    try:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(PARTITION_ROWS):
            rec = np.array(rows, dtype=_ROW)
            yield _table(rec["step"], rec["timestamp"], rec["value"], rec["is_nan"] != 0)
    finally:
        cursor.close()


def _copy_binary(raw: Any, driver: str, rest: str, params: tuple[Any, ...]) -> list[pa.Table]:
    """The rows through COPY (parameters merged client-side), in partitions parsed with
    numpy. The casts pin the wire types whatever the column types are. psycopg (3) hands the
    stream over message by message; psycopg2's ``copy_expert`` writes it to a file object."""
    statement = (
        'COPY (SELECT CAST("step" AS int8), CAST("timestamp" AS int8), '
        f'CAST("value" AS float8), CAST("is_nan" AS bool) {rest}) TO STDOUT (FORMAT BINARY)'
    )
    stream = _CopyStream()
    if driver == "psycopg":
        with raw.cursor() as cursor, cursor.copy(statement, params) as copy:
            for data in copy:
                stream.write(data)
    else:
        with raw.cursor() as cursor:
            cursor.copy_expert(cursor.mogrify(statement, params), stream)
    return stream.finish()


class _CopyStream:
    """A binary COPY stream, written in pieces of any size: its header checked, its tuples
    parsed every :data:`PARTITION_ROWS` rows (memory holds one partition of raw bytes)."""

    def __init__(self) -> None:
        self.tables: list[pa.Table] = []
        self._pending = bytearray()
        self._header_done = False
        self._block = PARTITION_ROWS * _COPY_ROW.itemsize

    def write(self, data: Any) -> None:
        pending = self._pending
        pending += data
        if not self._header_done:
            if len(pending) < 19:
                return
            if bytes(pending[:11]) != _SIGNATURE:
                raise UnexpectedCopyData("not a binary COPY stream")
            extension = int.from_bytes(pending[15:19], "big")
            if len(pending) < 19 + extension:
                return
            del pending[: 19 + extension]
            self._header_done = True
        if len(pending) >= self._block + 2:
            whole = (len(pending) - 2) // _COPY_ROW.itemsize * _COPY_ROW.itemsize
            self.tables.append(_parse(bytes(pending[:whole])))
            del pending[:whole]

    def finish(self) -> list[pa.Table]:
        pending = self._pending
        if not self._header_done or bytes(pending[-2:]) != b"\xff\xff":
            raise UnexpectedCopyData("binary COPY stream without its trailer")
        del pending[-2:]
        if pending:
            self.tables.append(_parse(bytes(pending)))
            pending.clear()
        return self.tables


def _parse(data: bytes) -> pa.Table:
    if len(data) % _COPY_ROW.itemsize:
        raise UnexpectedCopyData("binary COPY tuples of another size than expected")
    rec = np.frombuffer(data, dtype=_COPY_ROW)
    if not (rec["fields"] == 4).all():
        raise UnexpectedCopyData("binary COPY tuples with another number of fields")
    for name, size in _COPY_LENGTHS:
        if not (rec[name] == size).all():
            raise UnexpectedCopyData(f"binary COPY field {name[:-4]} of another size")
    return _table(rec["step"], rec["timestamp"], rec["value"], rec["is_nan"] != 0)
