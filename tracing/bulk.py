"""Bulk inserts below the ORM, for the collector's hot path and the benchmark's big tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connection


def db_datetime(value: datetime) -> Any:
    """A datetime as the database takes it in a raw insert (SQLite stores text)."""
    return connection.ops.adapt_datetimefield_value(value) if connection.vendor == "sqlite" else value


def insert_rows(table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """Bulk insert below the ORM: on the collector's hot path Django's per-field preparation
    costs more than the database does (about four fifths of the time, profiled at 20,000 spans)."""
    if not rows:
        return
    names = ", ".join(connection.ops.quote_name(c) for c in columns)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # psycopg's COPY runs below Django's cursor wrapper: its errors are made Django's
            # here, as every other query's are, so callers catch DatabaseError (a lock timeout
            # otherwise came through as psycopg's own and ended the collector).
            with connection.wrap_database_errors, cursor.cursor.copy(f"COPY {connection.ops.quote_name(table)} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            cursor.executemany(f"INSERT INTO {connection.ops.quote_name(table)} ({names}) VALUES ({', '.join(['%s'] * len(columns))})", rows)
