"""The distinct values of an indexed column, read one index probe per value.

A plain DISTINCT reads every row: every point of a long run (hundreds of thousands, on each
poll of a live page) or every run of a team. When the values are few and the column leads an
index, a recursive query can jump from one value to the next instead ("loose index scan").
SQLite and PostgreSQL both run it.
"""

from __future__ import annotations


def distinct_values_cte(name: str, table: str, column: str, condition: str = "") -> str:
    """`WITH RECURSIVE <name>(value) AS (...)`: the column's distinct values in the index's
    order, then one NULL row (filter it with `<name>.value IS NOT NULL`). `condition`, SQL
    ANDed to both probes, has its parameters passed twice, in that order."""
    where = f"WHERE {condition}" if condition else ""
    further = f"{condition} AND " if condition else ""
    return f"""
        WITH RECURSIVE {name}(value) AS (
            SELECT MIN({column}) FROM {table} {where}
            UNION ALL
            SELECT (SELECT MIN({column}) FROM {table} WHERE {further}{column} > {name}.value)
            FROM {name} WHERE {name}.value IS NOT NULL
        )
    """
