"""SQL text per dialect for the direct SQL paths: quoted identifiers, DB-API placeholders and
the ``metrics`` table's columns (:mod:`.sql_point_reader`, :mod:`.sql_point_writer`,
:mod:`.sql_source`)."""

from __future__ import annotations

__all__ = ["METRICS_COLUMNS", "marks", "quoted"]

METRICS_COLUMNS = ("run_uuid", "key", "step", "timestamp", "value", "is_nan")
"""The columns of MLflow's ``metrics`` table, as read and written."""


def quoted(dialect: str, *names: str) -> str:
    """Identifiers, always quoted (lower-case names: the same meaning quoted or not)."""
    mark = "`" if dialect == "mysql" else '"'
    return ", ".join(f"{mark}{name}{mark}" for name in names)


def marks(dialect: str, count: int) -> str:
    """DB-API placeholders: qmark for sqlite3, format for the PostgreSQL and MySQL drivers."""
    return ", ".join(["?" if dialect == "sqlite" else "%s"] * count)
