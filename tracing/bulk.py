"""Bulk inserts below the ORM, for the collector's hot path and the benchmark's big tables."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Model


def db_datetime(value: datetime) -> Any:
    """A datetime as the database takes it in a raw insert (SQLite stores text)."""
    return datetime_adapter()(value)


def datetime_adapter() -> Callable[[datetime], Any]:
    """db_datetime for many values: the connection looked up once (each lookup goes through
    Django's per-thread proxy). On SQLite the text Django's own adapter makes (a naive datetime in
    the connection's zone, as str() writes it), without its per-value settings lookups, which
    took a sixth of the collector's time."""
    if connection.vendor != "sqlite":
        return _same
    if not settings.USE_TZ:
        return connection.ops.adapt_datetimefield_value
    zone = connection.timezone

    def sqlite_text(value: datetime) -> Any:
        return str(value.astimezone(zone).replace(tzinfo=None) if value.tzinfo is not None else value)

    return sqlite_text


def _same(value: datetime) -> datetime:
    return value


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


def upsert_rows(model: type[Model], fields: tuple[str, ...], rows: list[tuple[Any, ...]], *, conflict: tuple[str, ...], update: tuple[str, ...] = (), returning: str | None = None) -> list[Any]:
    """INSERT ... ON CONFLICT below the ORM: each row (its values in `fields`' order, datetimes
    already as db_datetime gives them) taken where `conflict` matches none, else `update`'s fields
    set from it (nothing done with no `update`). Django's bulk_create with update_conflicts
    prepared each value through its field, several times the statement's own cost on the
    live-task ingest.

    PostgreSQL gets one array a column through UNNEST, as Django 5.2's bulk_create does: the
    statement's text stays the same whatever the batch, where a VALUES list of a few thousand
    placeholders cost psycopg more to split than the database took to run it. SQLite (3.24+) gets
    the VALUES list, in chunks under its bound on parameters (32,766 since 3.32).

    With `returning`, that field's value of every row the statement wrote (with no `update`: the
    rows it inserted, not the ones it found there), in no particular order; else an empty list."""
    if not rows:
        return []
    quote = connection.ops.quote_name
    columns = [model._meta.get_field(f).column for f in fields]
    target = f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(c) for c in columns)})"
    keys = ", ".join(quote(model._meta.get_field(f).column) for f in conflict)
    action = "DO UPDATE SET " + ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in (model._meta.get_field(f).column for f in update)) if update else "DO NOTHING"
    back = f" RETURNING {quote(model._meta.get_field(returning).column)}" if returning else ""
    written: list[Any] = []
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            arrays = ", ".join(f"%s::{model._meta.get_field(f).db_type(connection)}[]" for f in fields)
            cursor.execute(f"{target} SELECT * FROM UNNEST({arrays}) ON CONFLICT ({keys}) {action}{back}", [list(column) for column in zip(*rows)])
            return [r[0] for r in cursor.fetchall()] if returning else written
        one = "(" + ", ".join(["%s"] * len(fields)) + ")"
        per_statement = max(1, 30_000 // len(fields))
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            cursor.execute(f"{target} VALUES {', '.join([one] * len(chunk))} ON CONFLICT ({keys}) {action}{back}", [value for row in chunk for value in row])
            if returning:
                written.extend(r[0] for r in cursor.fetchall())
    return written
