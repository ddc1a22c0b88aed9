"""The writes below the ORM (tracing.bulk) against the run's own database, SQLite or PostgreSQL:
what they store must read back through the ORM exactly as Django's own writes would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from django.db import connection

from flows.models import LiveTask
from tracing.bulk import datetime_adapter, upsert_rows

pytestmark = pytest.mark.django_db

FIELDS = ("app", "task_id", "name", "state", "state_at", "source", "worker", "queue", "args", "kwargs", "exception", "runtime_s", "retries", "trace_id", "received_at", "started_at", "updated_at")


def test_the_datetime_adapter_writes_what_djangos_own_adapter_writes():
    adapt = datetime_adapter()
    values = [
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),  # another zone: stored as its UTC instant
        datetime(1970, 1, 1, tzinfo=UTC),
    ]
    for value in values:
        expected = connection.ops.adapt_datetimefield_value(value) if connection.vendor == "sqlite" else value
        assert adapt(value) == expected, value


def _row(task_id: str, state: str, at: datetime, **extra: object) -> tuple[object, ...]:
    adapt = datetime_adapter()
    values = {
        "app": "bulk",
        "task_id": task_id,
        "name": "shop.charge",
        "state": state,
        "state_at": adapt(at),
        "source": "agent",
        "worker": "",
        "queue": "",
        "args": "",
        "kwargs": "",
        "exception": "",
        "runtime_s": None,
        "retries": None,
        "trace_id": "",
        "received_at": None,
        "started_at": None,
        "updated_at": adapt(at),
        **extra,
    }
    return tuple(values[f] for f in FIELDS)


def test_an_upsert_inserts_new_rows_updates_only_the_fields_named_and_leaves_the_rest():
    at = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    upsert_rows(LiveTask, FIELDS, [_row("t1", "received", at, args="[1]"), _row("t2", "received", at)], conflict=("app", "task_id"))
    assert LiveTask.objects.filter(app="bulk").count() == 2
    later = at + timedelta(seconds=1)
    # t1 again, with nothing to update: left as it was; then updated in state, time and runtime only.
    upsert_rows(LiveTask, FIELDS, [_row("t1", "failed", later)], conflict=("app", "task_id"))
    assert LiveTask.objects.get(app="bulk", task_id="t1").state == "received"
    upsert_rows(LiveTask, FIELDS, [_row("t1", "succeeded", later, runtime_s=0.25, args="[2]"), _row("t3", "started", later)], conflict=("app", "task_id"), update=("state", "state_at", "runtime_s"))
    t1 = LiveTask.objects.get(app="bulk", task_id="t1")
    assert (t1.state, t1.state_at, t1.runtime_s, t1.args) == ("succeeded", later, 0.25, "[1]")
    assert LiveTask.objects.get(app="bulk", task_id="t3").state_at == later
    assert sorted(LiveTask.objects.filter(app="bulk").values_list("task_id", flat=True)) == ["t1", "t2", "t3"]


def test_an_upsert_larger_than_one_statement_stores_every_row():
    at = datetime(2026, 3, 4, tzinfo=UTC)
    rows = [_row(f"many-{i}", "received", at) for i in range(2_500)]  # 42,500 values: past SQLite's bound on parameters in one statement
    upsert_rows(LiveTask, FIELDS, rows, conflict=("app", "task_id"))
    assert LiveTask.objects.filter(app="bulk", task_id__startswith="many-").count() == 2_500


def test_an_upsert_returns_the_rows_it_inserted_and_not_the_ones_it_found_across_statements():
    at = datetime(2026, 3, 4, tzinfo=UTC)
    upsert_rows(LiveTask, FIELDS, [_row(f"old-{i}", "received", at) for i in range(0, 2_500, 2)], conflict=("app", "task_id"))
    # Every second row is there already; 2,500 rows take SQLite more than one statement.
    mixed = [_row(f"old-{i}", "started", at) for i in range(2_500)]
    written = upsert_rows(LiveTask, FIELDS, mixed, conflict=("app", "task_id"), returning="task_id")
    assert sorted(written) == sorted(f"old-{i}" for i in range(1, 2_500, 2))
    assert LiveTask.objects.filter(app="bulk", state="received").count() == 1_250  # the ones found were left as they were
    assert upsert_rows(LiveTask, FIELDS, mixed[:3], conflict=("app", "task_id")) == []  # nothing asked back


def test_text_with_the_characters_arrays_and_literals_quote_round_trips_unchanged():
    # PostgreSQL gets each column as one array literal: commas, braces, quotes, backslashes and
    # NULL-looking words inside a value must come back as they went in.
    at = datetime(2026, 3, 4, tzinfo=UTC)
    tricky = ["a,b", "{x}", '"quoted"', "back\\slash", "it's", "NULL", "", " padded ", "ünïcödé ✓", '{"k": [1, 2]}']
    upsert_rows(LiveTask, FIELDS, [_row(f"odd-{i}", "received", at, args=text, exception=text) for i, text in enumerate(tricky)], conflict=("app", "task_id"))
    stored = dict(LiveTask.objects.filter(app="bulk", task_id__startswith="odd-").values_list("task_id", "args"))
    assert stored == {f"odd-{i}": text for i, text in enumerate(tricky)}
