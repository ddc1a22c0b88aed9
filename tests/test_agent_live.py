"""Live operations of attached apps: workers, the live task list, revoke orders, app-scoped agent tokens.

The ingest (flows.operate.live_tasks) is tested on the database; the agent end to end with a
real agent-wrapped worker in a subprocess reporting to the real console (pytest-django's live
server), on the run's broker (Redis, or RabbitMQ with BROKER=rabbitmq).
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from flows.models import LiveTask, LiveWorker
from flows.operate.live_tasks import LiveReportError, prune_live, record_tasks, record_workers

T0 = float(int(time.time())) - 600  # recent: older rows are pruned by the retention


def event(task_id: str, state: str, at: float, **more: object) -> dict[str, object]:
    return {"id": task_id, "state": state, "at": at, **more}


@pytest.mark.django_db
def test_a_task_keeps_its_newest_state_and_an_older_event_arriving_later_never_moves_it_back():
    assert record_tasks("shop", [event("t1", "succeeded", T0 + 2, runtime_s=0.5, worker="w1@h")]) == 1
    # The main process's "received", with the call, arrives after the pool's "succeeded".
    record_tasks("shop", [event("t1", "received", T0, name="shop.ship", args="('O-1',)", kwargs="{'carrier': 'ups'}", queue="shop")])
    record_tasks("shop", [event("t1", "started", T0 + 1)])
    row = LiveTask.objects.get(app="shop", task_id="t1")
    assert (row.state, row.state_at.timestamp(), row.runtime_s, row.worker) == ("succeeded", T0 + 2, 0.5, "w1@h")
    assert (row.name, row.args, row.kwargs, row.queue, row.source) == ("shop.ship", "['O-1']", "{'carrier': 'ups'}", "shop", "agent")
    assert (row.received_at.timestamp(), row.started_at.timestamp()) == (T0, T0 + 1)
    # A retry's run is newer: the task moves on again.
    record_tasks("shop", [event("t1", "retried", T0 + 3, exception="ConnectionError('gateway')"), event("t1", "started", T0 + 4)])
    row.refresh_from_db()
    assert (row.state, row.exception) == ("started", "ConnectionError('gateway')")


@pytest.mark.django_db
def test_at_one_instant_a_later_step_wins_and_an_unchanged_event_changes_nothing():
    record_tasks("shop", [event("t2", "started", T0), event("t2", "received", T0)])
    assert LiveTask.objects.get(task_id="t2").state == "started"
    assert record_tasks("shop", [event("t2", "received", T0)]) == 0


@pytest.mark.django_db
def test_args_and_kwargs_are_stored_redacted():
    record_tasks(
        "shop",
        [
            event("t3", "received", T0, args="('ann@example.com', '4111 1111 1111 1111')", kwargs="{'password': 'hunter2', 'amount': 3}"),
            event("t4", "received", T0, args="(<User password=hunter2>,)", kwargs="{}"),
        ],
    )
    t3, t4 = LiveTask.objects.get(task_id="t3"), LiveTask.objects.get(task_id="t4")
    assert (t3.args, t3.kwargs) == ("['[redacted]', '[redacted]']", "{'password': '[redacted]', 'amount': 3}")
    assert "hunter2" not in t4.args and t4.args.startswith("[redacted]")


@pytest.mark.django_db
def test_a_task_known_from_events_says_so_until_its_agent_reports_it():
    record_tasks("shop", [event("t5", "received", T0)], source="events")
    assert LiveTask.objects.get(task_id="t5").source == "events"
    record_tasks("shop", [event("t5", "started", T0 + 1)])
    record_tasks("shop", [event("t5", "succeeded", T0 + 2)], source="events")
    assert LiveTask.objects.get(task_id="t5").source == "agent"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (event("x", "lost", T0), "state 'lost' is not one of received, started"),
        (event("", "received", T0), "'id' must be the task id"),
        (event("x", "received", "yesterday"), "'at' must be a number of epoch seconds"),
        (event("x", "received", 1e13), "not between 2000 and 2100"),
        (event("x", "received", T0, runtime_s=-1), "'runtime_s' must be a number"),
        (event("x", "received", T0, args=["a"]), "'args' must be a string or null"),
        (event("x", "received", T0, trace_id="nothex"), "'trace_id' must be 32 lowercase hex digits"),
        ("not an object", "a task event is an object"),
    ],
)
def test_a_bad_event_is_refused_with_its_reason_and_nothing_of_its_batch_is_stored(bad, reason):
    with pytest.raises(LiveReportError, match=reason):
        record_tasks("shop", [event("good", "received", T0), bad])
    assert not LiveTask.objects.exists()
    with pytest.raises(LiveReportError, match="source must be one of agent, events"):
        record_tasks("shop", [event("good", "received", T0)], source="flower")


@pytest.mark.django_db
def test_a_worker_report_moves_forward_only_and_a_bad_one_is_refused():
    w = {"hostname": "w1@h", "at": T0 + 5, "online": True, "pool": "prefork", "concurrency": 4, "active": 2, "processed": 10}
    assert record_workers("shop", [w]) == 1
    assert record_workers("shop", [{**w, "at": T0, "active": 0}]) == 0  # older: ignored
    record_workers("shop", [{**w, "at": T0 + 6, "online": False}])
    row = LiveWorker.objects.get(app="shop", hostname="w1@h")
    assert (row.online, row.pool, row.concurrency, row.active, row.processed) == (False, "prefork", 4, 2, 10)
    for bad, reason in (({**w, "concurrency": -1}, "'concurrency' must be a whole number"), ({**w, "online": "yes"}, "'online' must be true or false"), ({**w, "hostname": ""}, "'hostname'")):
        with pytest.raises(LiveReportError, match=reason):
            record_workers("shop", [bad])


@pytest.mark.django_db
def test_history_is_bounded_by_age_and_by_count_per_app():
    now = time.time()
    record_tasks("shop", [event(f"n{i}", "succeeded", now - i) for i in range(5)] + [event("old", "succeeded", now - 3 * 86400)])
    record_tasks("mill", [event("m1", "succeeded", now)])
    pruned = prune_live(older_than=timedelta(days=1), keep_per_app=3)
    assert pruned["tasks"] == 3
    assert sorted(LiveTask.objects.filter(app="shop").values_list("task_id", flat=True)) == ["n0", "n1", "n2"]
    assert LiveTask.objects.filter(app="mill").exists() and LiveTask.objects.filter(state_at__gte=timezone.now() - timedelta(days=1)).count() == 4
