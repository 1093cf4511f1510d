"""Tables in run id order, merged a chunk of runs at a time.

Every run table of an archive (``runs``, ``run_params``, ``run_tags``, the dataset tables,
``artifacts``, ``metrics``) is sorted by a key that starts with ``run_id`` (spec/1.0/format.md
§6.3). A reader that walks the ``runs`` table a chunk at a time can therefore take each other
table's rows for that chunk from the front of the table, a batch of rows at a time: what is held is
one batch per table and one chunk's rows, whatever the number of runs. The order is checked
as the rows go by, so an archive that breaks it is refused instead of read wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from .errors import ArchiveFormatError

__all__ = ["OutOfRunOrder", "RunOrdered", "in_run_order"]


class OutOfRunOrder(ArchiveFormatError):
    """A table's rows are not in ``run_id`` order (told apart from a row that cannot be read)."""


def in_run_order(groups: Iterable[pa.Table], name: str, where: str) -> Iterator[pa.Table]:
    """``groups`` (tables with a ``run_id`` column), checked to be in ``run_id`` order within and
    across them; an :class:`OutOfRunOrder` naming table ``name`` at ``where`` if not."""
    last: str | None = None
    for group in groups:
        if not group.num_rows:
            continue
        ids = group.column("run_id")
        first = ids[0].as_py()
        unordered = last is not None and first < last
        if group.num_rows > 1:
            unordered = unordered or bool(
                pc.any(pc.less(ids.slice(1), ids.slice(0, group.num_rows - 1))).as_py()
            )
        if unordered:
            raise OutOfRunOrder(
                f"table {name} is not sorted by run_id",
                where=where,
                hint="refusing a damaged or hostile archive (a run's rows must come together)",
            )
        last = ids[group.num_rows - 1].as_py()
        yield group


class RunOrdered:
    """A table's rows in ``run_id`` order, handed out up to a run id at a time."""

    def __init__(self, groups: Iterable[pa.Table], schema: pa.Schema) -> None:
        """``groups``: the table's batches of rows, already checked by :func:`in_run_order`."""
        self._groups = iter(groups)
        self._schema = schema
        self._held: pa.Table | None = None
        """Rows read but not handed out yet (the rest of one batch)."""

    def upto(self, last: str) -> pa.Table:
        """The rows not handed out yet whose ``run_id`` is at most ``last``, in order."""
        parts: list[pa.Table] = []
        while True:
            if self._held is None:
                self._held = next(self._groups, None)
                if self._held is None:
                    break
            ids = self._held.column("run_id")
            n = pc.sum(pc.less_equal(ids, pa.scalar(last, ids.type))).as_py() or 0
            if n == self._held.num_rows:  # all of it: the next group may hold more
                parts.append(self._held)
                self._held = None
                continue
            parts.append(self._held.slice(0, n))
            self._held = self._held.slice(n)
            break
        if not parts:
            return self._schema.empty_table()
        return pa.concat_tables(parts)

    def of(self, run_ids: pa.Array) -> pa.Table:
        """The rows of ``run_ids`` (sorted, the next chunk of the ``runs`` table): those up to its
        last id, without rows of runs that are not in it (a reference :mod:`.verify` refuses)."""
        if not len(run_ids):
            return self._schema.empty_table()
        rows = self.upto(run_ids[len(run_ids) - 1].as_py())
        return rows.filter(pc.is_in(rows.column("run_id"), value_set=run_ids))
