"""What retention costs for one day of spans: on PostgreSQL the day's partition detached and
dropped, on SQLite the batched delete, both through tracing.retention.prune_spans as the hourly
task runs it. The day is filled on the database side (generate_series, or a recursive query on
SQLite), a month back so nothing else is old enough to be pruned with it."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, transaction

from tracing import partitions
from tracing.models import Span
from tracing.retention import prune_spans

# One consumer span's worth of columns, its attributes a few keys as the GIN index sees them.
_COLUMNS = "trace_id, span_id, parent_span_id, name, kind, service, start_time, duration_us, status_code, status_message, attributes, events, links, message_id, correlation_id, saga_id"
_POSTGRESQL_FILL = f"""
INSERT INTO tracing_span ({_COLUMNS})
SELECT md5(g::text), substr(md5('s' || g), 1, 16), '', 'process bench.ping', 4, 'flowscope-bench',
       %s + (g - 1) * (interval '86399 seconds' / %s), 2000, 1, '',
       jsonb_build_object('messaging.destination.name', 'bench.' || (g %% 3), 'flowscope.consumer', 'bench_ping', 'flowscope.outcome', 'ok'),
       '[]', '[]', md5('m' || g), md5('c' || g), ''
FROM generate_series(1, %s) g
"""
_SQLITE_FILL = f"""
WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < %s)
INSERT INTO tracing_span ({_COLUMNS})
SELECT lower(hex(randomblob(16))), lower(hex(randomblob(8))), '', 'process bench.ping', 4, 'flowscope-bench',
       datetime(%s, '+' || ((x - 1) * 86399 / %s) || ' seconds'), 2000, 1, '',
       json_object('messaging.destination.name', 'bench.' || (x %% 3), 'flowscope.consumer', 'bench_ping', 'flowscope.outcome', 'ok'),
       '[]', '[]', lower(hex(randomblob(16))), lower(hex(randomblob(16))), ''
FROM g
"""


def full_day() -> int:
    """2,000,000 spans on PostgreSQL; on SQLite a tenth, whose batched delete already takes
    minutes here (it grows with the rows: the figure is per p11_spans)."""
    return 2_000_000 if connection.vendor == "postgresql" else 200_000


def _fill(day: datetime, n: int) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            partitions.create_days([day.date()])
            cursor.execute(_POSTGRESQL_FILL, [day, n, n])
            cursor.execute("ANALYZE tracing_span")
        else:
            cursor.execute(_SQLITE_FILL, [n, day.strftime("%Y-%m-%d %H:%M:%S"), n])


def prune_day_ms(n: int, progress: Callable[[str], None]) -> dict[str, Any]:
    day = partitions.day_start(datetime.now(UTC)) - timedelta(days=30)
    progress(f"p11: filling {day:%Y-%m-%d} with {n:,} spans")
    started = time.monotonic()
    _fill(day, n)
    filled_s = time.monotonic() - started
    assert Span.objects.filter(start_time__gte=day, start_time__lt=day + timedelta(days=1)).count() == n, "the day was not filled as asked"

    progress(f"p11: pruning {day:%Y-%m-%d}")
    how = "drop partition" if partitions.partitioned() else "batched delete"
    statements = _StatementTimes()
    started = time.perf_counter()
    with connection.execute_wrapper(statements):
        pruned = prune_spans(older_than=datetime.now(UTC) - (day + timedelta(days=1)))
    elapsed_ms = (time.perf_counter() - started) * 1000
    gone = pruned.get("span_days_dropped", 0) == 1 if how == "drop partition" else pruned["spans"] >= n
    assert gone and not Span.objects.filter(start_time__lt=day + timedelta(days=1)).exists(), f"the day was not pruned: {pruned}"
    figures = {"p11_prune_day_ms": round(elapsed_ms, 1), "p11_spans": n, "p11_how": f"{connection.vendor}: {how}", "p11_fill_s": round(filled_s, 1)}
    if how == "drop partition":
        # Where the time goes: the detach is all the span table (and ingest) waits for; the
        # drop, in autocommit, is mostly its commit giving the day's files back.
        figures["p11_detach_ms"] = round(statements.ms("ALTER TABLE tracing_span DETACH"), 1)
        figures["p11_drop_ms"] = round(statements.ms("DROP TABLE IF EXISTS tracing_span_p"), 1)
    return figures


class _StatementTimes:
    """A connection.execute_wrapper summing the time of statements by how they begin."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []

    def __call__(self, execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.times.append((sql, (time.perf_counter() - started) * 1000))

    def ms(self, prefix: str) -> float:
        return sum(ms for sql, ms in self.times if sql.startswith(prefix))
