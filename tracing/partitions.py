"""Day partitions of the span and link tables on PostgreSQL; SQLite keeps one plain table each.

On PostgreSQL, tracing_span and tracing_spanlink are PARTITION BY RANGE (start_time) (migration
0004): one partition a UTC day, named <table>_pYYYYMMDD, and <table>_default for any row outside
the days made (a span from a skewed clock, a day nobody made ahead).

- create_ahead(): today and the next TRACING_PARTITION_DAYS_AHEAD days, on migrate and from the
  beat (tracing.create_span_partitions). Idempotent, and two nodes running it at once queue on
  one advisory lock. Rows the DEFAULT partition already holds for a day being made move into the
  new partition first: PostgreSQL refuses a partition whose rows sit in DEFAULT.
- prune_before(cutoff): DETACH and DROP every day partition that ended by the cutoff, which
  costs the same for ten rows as for ten million (a DELETE costs by the row and competes with
  ingest for the table), then deletes DEFAULT's rows older than the cutoff in batches.

Retention on PostgreSQL is therefore by whole days (tracing.retention rounds its cutoff down to
midnight UTC): a span is kept for the retention and up to one day more, never less.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings
from django.db import connection, transaction

TABLES = ("tracing_span", "tracing_spanlink")
# pg_advisory_xact_lock's key for making partitions: any constant no other code uses.
LOCK_KEY = 0x7472_6163_6570  # "tracep"
# A partition is made or detached under an ACCESS EXCLUSIVE lock on the parent; while it waits
# for one, every later query on the table queues behind it. Give up instead and try next round.
LOCK_TIMEOUT = "2s"


def partitioned() -> bool:
    """Whether this database has the span table partitioned (PostgreSQL after migration 0004)."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(%s))", [TABLES[0]])
        return bool(cursor.fetchone()[0])


def day_start(moment: datetime) -> datetime:
    """Midnight UTC of the day `moment` falls in."""
    return datetime.combine(moment.astimezone(UTC).date(), time(), tzinfo=UTC)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def day_partitions(table: str) -> dict[date, str]:
    """The day partitions `table` has now, by day (DEFAULT left out)."""
    pattern = re.compile(rf"^{re.escape(table)}_p(\d{{8}})$")
    with connection.cursor() as cursor:
        cursor.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)", [table])
        names = [row[0] for row in cursor.fetchall()]
    return {datetime.strptime(m.group(1), "%Y%m%d").date(): name for name in names if (m := pattern.match(name))}


def _bound(day: date) -> str:
    return f"'{day.isoformat()} 00:00:00+00'"


def _create_day(cursor, table: str, day: date) -> None:  # type: ignore[no-untyped-def]
    lo = _midnight(day)
    hi = lo + timedelta(days=1)
    default = f"{table}_default"
    cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {default} WHERE start_time >= %s AND start_time < %s)", [lo, hi])
    stranded = cursor.fetchone()[0]
    if stranded:
        cursor.execute(f"CREATE TEMP TABLE partition_move (LIKE {table}) ON COMMIT DROP")
        cursor.execute(f"WITH moved AS (DELETE FROM {default} WHERE start_time >= %s AND start_time < %s RETURNING *) INSERT INTO partition_move SELECT * FROM moved", [lo, hi])
    cursor.execute(f"CREATE TABLE IF NOT EXISTS {partition_name(table, day)} PARTITION OF {table} FOR VALUES FROM ({_bound(day)}) TO ({_bound(day + timedelta(days=1))})")
    if stranded:
        cursor.execute(f"INSERT INTO {table} SELECT * FROM partition_move")
        cursor.execute("DROP TABLE partition_move")


def create_days(days: list[date]) -> int:
    """Make these days' partitions of both tables where missing; returns how many were made."""
    made = 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])  # the other node waits, then finds them made
        for table in TABLES:
            have = day_partitions(table)
            for day in days:
                if day not in have:
                    _create_day(cursor, table, day)
                    made += 1
    return made


def create_ahead(*, days_ahead: int | None = None, now: datetime | None = None) -> int:
    """Today's partitions and the next `days_ahead` days' (TRACING_PARTITION_DAYS_AHEAD);
    returns how many were made (0 on SQLite, or when all exist)."""
    if not partitioned():
        return 0
    ahead = settings.TRACING_PARTITION_DAYS_AHEAD if days_ahead is None else days_ahead
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    return create_days([today + timedelta(days=n) for n in range(ahead + 1)])


def _delete_default_in_batches(table: str, cutoff: datetime, batch: int) -> int:
    default, deleted = f"{table}_default", 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {default} WHERE id IN (SELECT id FROM {default} WHERE start_time < %s LIMIT %s)", [cutoff, batch])
            if cursor.rowcount == 0:
                return deleted
            deleted += cursor.rowcount


def _detached(table: str) -> list[str]:
    """Day partitions of `table` detached but not dropped (a prune stopped between the two)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname FROM pg_class WHERE relname ~ %s AND relkind = 'r' AND NOT relispartition AND relnamespace = current_schema()::regnamespace",
            [rf"^{table}_p\d{{8}}$"],
        )
        return [row[0] for row in cursor.fetchall()]


def drop_days_before(table: str, cutoff: datetime) -> int:
    """DETACH and DROP `table`'s day partitions that ended by `cutoff`; returns how many.

    Each DETACH in a transaction of its own, the DROP in another: the parent is locked (and
    ingest waits) only for the detach, a few milliseconds; the drop, whose commit gives the
    files back to the filesystem (about 0.7 s for 500,000 spans here, by their size), locks
    only the detached table nobody reads any more."""
    gone = []
    for day, name in sorted(day_partitions(table).items()):
        if _midnight(day) + timedelta(days=1) > cutoff:
            break
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            cursor.execute(f"ALTER TABLE {table} DETACH PARTITION {name}")
        gone.append(name)
    for name in sorted(set(gone) | set(_detached(table))):
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {name}")
    return len(gone)


def prune_before(cutoff: datetime, *, batch: int) -> tuple[dict[str, int], dict[str, int]]:
    """Old spans and links gone: whole days dropped, DEFAULT's rows deleted by batch.
    Returns the rows deleted ({"spans", "links"}) and, where any, the days dropped
    ({"span_days_dropped", "link_days_dropped"})."""
    deleted, dropped = {}, {}
    for table, what in zip(TABLES, ("span", "link"), strict=True):
        days = drop_days_before(table, cutoff)
        if days:
            dropped[f"{what}_days_dropped"] = days
        deleted[f"{what}s"] = _delete_default_in_batches(table, cutoff, batch)
    return deleted, dropped
