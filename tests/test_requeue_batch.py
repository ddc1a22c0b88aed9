"""Bulk requeue in batches: one conditional claim, one pipelined publish, token-bucket pacing,
cancel between batches, and recovery of requeues a dead process claimed but never sent."""

import base64
import dataclasses
import json
import socket
import sys
import threading
import uuid
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from flows import tasks
from flows.core import telemetry
from flows.core.errors import EnvelopeError, FlowsError, PayloadInvalid, PayloadTooLarge, QueueFull
from flows.core.registry import catalog
from flows.models import DeadLetter, RequeueJob
from flows.operate import dead_letters as deadletters
from flows.operate import requeue as batch_module
from flows.operate.pacing import TokenBucket
from flows.operate.requeue import INFLIGHT, requeue_batch, requeue_recover_unconfirmed
from flows.operate.requeue_jobs import batch_size, requeue_job_cancel, requeue_job_run_slice
from flows.produce.backpressure import backpressure
from flows.produce.publishing import build_envelope, publish_many
from tests.flows_under_test import recorded
from tests.support.brokers import fill, on_rabbitmq, peeking, purge, rabbitmq_only, redis_only_because, waiting
from tests.support.waiting import wait_for
from tests.support.workers import ManagedProcess
from tracing.redis import get_redis

pytestmark = pytest.mark.django_db(transaction=True)


def make_dead(prefix: str, n: int, *, consumer: str = "t_command") -> list[DeadLetter]:
    """Dead letters as the runtime records them, without waiting for three real failures each."""
    now = timezone.now()
    rows = []
    for i in range(n):
        envelope = build_envelope("test.command", {"key": f"{prefix}-{i}"}).to_dict()
        rows.append(
            DeadLetter.objects.create(
                message_id=envelope["message_id"],
                message_type="test.command",
                queue="t.commands",
                consumer=consumer,
                envelope=envelope,
                error_type="builtins.ValueError",
                fingerprint=f"fp-{prefix}",
                attempts=3,
                first_dead_at=now,
                dead_at=now,
            )
        )
    return rows


def runs_of(prefix: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in recorded("t_command"):
        key = entry.split("|")[0]
        if key.startswith(prefix + "-"):
            counts[key] = counts.get(key, 0) + 1
    return counts


def wait_resolved(ids: list[int]) -> None:
    wait_for(lambda: DeadLetter.objects.filter(pk__in=ids, state=DeadLetter.State.RESOLVED).count() == len(ids), what=f"{len(ids)} requeued messages to succeed")


def job_for(dead: list[DeadLetter], *, rate_per_s: float) -> RequeueJob:
    """A job as requeue_job_start makes it, but not handed to the worker: the test runs its slices."""
    return RequeueJob.objects.create(created_by="tester", ids=[d.pk for d in dead], rate_per_s=rate_per_s, max_id=dead[-1].pk, total=len(dead))


class FakeTime:
    """A clock that moves only when slept on: pacing tested without timing anything."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_batch_requeues_the_dead_ones_and_skips_those_another_client_took_first(worker):
    dead = make_dead("batch", 6)
    ids = [d.pk for d in dead]
    assert deadletters.dead_letter_requeue(dead_letter_id=ids[1], actor="alice")
    assert deadletters.dead_letter_discard(dead_letter_id=ids[3], actor="carol", reason="not wanted")

    requeued = requeue_batch(ids=ids, actor="bulk")

    assert requeued == [ids[0], ids[2], ids[4], ids[5]]
    wait_resolved([ids[0], ids[1], ids[2], ids[4], ids[5]])
    assert runs_of("batch") == {"batch-0": 1, "batch-1": 1, "batch-2": 1, "batch-4": 1, "batch-5": 1}
    rows = {d.pk: d for d in DeadLetter.objects.filter(pk__in=ids)}
    assert [rows[pk].requeued_by for pk in requeued] == ["bulk"] * 4 and rows[ids[1]].requeued_by == "alice"
    assert rows[ids[3]].state == DeadLetter.State.DISCARDED and rows[ids[3]].series == 0
    for pk in requeued:
        assert rows[pk].series == 1
        assert len(rows[pk].requeue_trace_id) == 32 and rows[pk].requeue_trace_id != rows[pk].trace_id
    assert len({rows[pk].requeue_trace_id for pk in requeued}) == 4, "a trace of its own for each requeue"
    assert get_redis().hlen(INFLIGHT) == 0, "sent: no longer noted as in flight"


def test_two_clients_requeueing_the_same_batch_at_once_publish_each_dead_letter_once(worker):
    dead = make_dead("race", 30)
    ids = [d.pk for d in dead]
    results: list[list[int]] = []
    barrier = threading.Barrier(2)

    def client(actor: str) -> None:
        barrier.wait()
        try:
            results.append(requeue_batch(ids=ids, actor=actor))
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(f"client-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    first, second = results
    assert not set(first) & set(second) and sorted(first + second) == ids
    wait_resolved(ids)
    assert set(DeadLetter.objects.filter(pk__in=ids).values_list("series", flat=True)) == {1}
    assert runs_of("race") == {f"race-{i}": 1 for i in range(30)}


def test_unreadable_envelopes_and_retired_consumers_stay_dead_and_untouched():
    broken, retired = make_dead("broken", 1)[0], make_dead("retired", 1, consumer="retired_handler")[0]
    DeadLetter.objects.filter(pk=broken.pk).update(envelope="not even a dict")

    assert requeue_batch(ids=[broken.pk, retired.pk], actor="bulk") == []
    for row in DeadLetter.objects.filter(pk__in=[broken.pk, retired.pk]):
        assert (row.state, row.series, row.requeue_trace_id) == (DeadLetter.State.DEAD, 0, "")


def spoil(dead: DeadLetter, how: str) -> None:
    if how == "retired consumer":
        DeadLetter.objects.filter(pk=dead.pk).update(consumer="retired_handler")
    elif how == "unreadable envelope":
        DeadLetter.objects.filter(pk=dead.pk).update(envelope="not even a dict")
    elif how == "full queue":
        DeadLetter.objects.filter(pk=dead.pk).update(consumer="t_bulk")  # t.backlog.raise: refused at 5
        fill("t.backlog.raise", 5)


@pytest.mark.parametrize(
    "how, payload, error, reason",
    [
        ("retired consumer", None, FlowsError, "consumer 'retired_handler' is no longer registered; deploy it again or discard"),
        ("unreadable envelope", None, EnvelopeError, "its stored envelope is not a JSON object but a str"),
        ("full queue", None, QueueFull, "at or above its high watermark 5"),
        ("", [1, 2], EnvelopeError, "the payload must be a JSON object"),
        ("", {"key": 5}, PayloadInvalid, "key: Input should be a valid string"),
        ("", {"key": "x" * 200}, PayloadTooLarge, "over the limit of 200 bytes"),
    ],
)
def test_a_single_requeue_that_cannot_go_says_why_and_changes_nothing(settings, how, payload, error, reason):
    (dead,) = make_dead("cannot", 1)
    settings.FLOWS_MAX_PAYLOAD_BYTES = 200
    spoil(dead, how)
    backpressure.forget()  # read the queue's depth now, not a quarter second ago
    before = DeadLetter.objects.filter(pk=dead.pk).values().get()

    with pytest.raises(error, match=reason):
        deadletters.dead_letter_requeue(dead_letter_id=dead.pk, actor="alice", payload=payload)

    assert DeadLetter.objects.filter(pk=dead.pk).values().get() == before
    assert get_redis().hlen(INFLIGHT) == 0, "nothing noted as in flight"
    backpressure.forget()


class Abandoned(Exception):
    pass


def test_a_requeue_publishes_when_its_transaction_commits_and_nothing_if_it_rolls_back():
    kept, abandoned = make_dead("commit", 2, consumer="t_bulk")  # t.backlog.raise: no worker reads it
    redis = get_redis()
    with transaction.atomic():
        assert deadletters.dead_letter_requeue(dead_letter_id=kept.pk, actor="alice")
        assert waiting("t.backlog.raise") == 0, "not before the commit: the worker would find the row still dead"
    assert waiting("t.backlog.raise") == 1 and redis.hlen(INFLIGHT) == 0

    with pytest.raises(Abandoned), transaction.atomic():
        assert deadletters.dead_letter_requeue(dead_letter_id=abandoned.pk, actor="alice")
        raise Abandoned
    assert waiting("t.backlog.raise") == 1, "a rolled-back requeue publishes nothing"
    abandoned.refresh_from_db()
    assert (abandoned.state, abandoned.series, abandoned.requeue_trace_id) == (DeadLetter.State.DEAD, 0, "")
    assert redis.hlen(INFLIGHT) == 1, "its note was written inside the transaction"
    assert requeue_recover_unconfirmed(older_than=0) == 0 and redis.hlen(INFLIGHT) == 0, "a note naming a row still dead is dropped"


def died(items):
    raise RuntimeError("the process died here")


def test_a_requeue_whose_process_died_before_sending_is_sent_once_by_recovery(worker, monkeypatch):
    dead = make_dead("crash", 3)
    ids = [d.pk for d in dead]
    monkeypatch.setattr(batch_module, "publish_many", died)
    with pytest.raises(RuntimeError, match="died here"):
        requeue_batch(ids=ids, actor="bulk")
    monkeypatch.undo()
    assert set(DeadLetter.objects.filter(pk__in=ids).values_list("state", "series")) == {(DeadLetter.State.REQUEUED, 1)}
    assert get_redis().hlen(INFLIGHT) == 1, "the claimed batch is noted as in flight"
    assert requeue_batch(ids=ids, actor="bulk") == [], "claimed already: not dead"

    assert requeue_recover_unconfirmed() == 0, "too recent: its publisher may still be at work"
    get_redis().set(batch_module.RECOVERY_LOCK, "another recoverer")
    assert requeue_recover_unconfirmed(older_than=0) == 0, "one recoverer at a time"
    get_redis().delete(batch_module.RECOVERY_LOCK)
    assert requeue_recover_unconfirmed(older_than=0) == 3
    assert requeue_recover_unconfirmed(older_than=0) == 0 and get_redis().hlen(INFLIGHT) == 0
    wait_resolved(ids)
    assert runs_of("crash") == {f"crash-{i}": 1 for i in range(3)}
    assert set(DeadLetter.objects.filter(pk__in=ids).values_list("series", flat=True)) == {1}, "recovery sends the same series again"


def test_the_periodic_task_recovers_a_requeue_whose_web_process_died_before_sending(worker, monkeypatch, settings):
    from console.celery import app

    (dead,) = make_dead("periodic", 1)
    monkeypatch.setattr(batch_module, "publish_many", died)
    with pytest.raises(RuntimeError, match="died here"):
        requeue_batch(ids=[dead.pk], actor="bulk")
    monkeypatch.undo()
    monkeypatch.setattr(batch_module, "RECOVER_AFTER_SECONDS", 0)

    task = app.tasks[settings.CELERY_BEAT_SCHEDULE["recover-requeues"]["task"]]
    assert task.apply().get() == 1
    wait_resolved([dead.pk])
    assert runs_of("periodic") == {"periodic-0": 1}


def test_recovery_leaves_alone_a_dead_letter_requeued_again_since_its_note(worker, monkeypatch):
    (dead,) = make_dead("again", 1)
    monkeypatch.setattr(batch_module, "publish_many", died)
    with pytest.raises(RuntimeError, match="died here"):
        requeue_batch(ids=[dead.pk], actor="bulk")
    monkeypatch.undo()
    DeadLetter.objects.filter(pk=dead.pk).update(series=2)  # died and was requeued again, by a publisher that lived

    assert requeue_recover_unconfirmed(older_than=0) == 0
    assert get_redis().hlen(INFLIGHT) == 0, "nothing of the note left to send: dropped"
    assert DeadLetter.objects.get(pk=dead.pk).series == 2


def test_the_token_bucket_paces_to_the_asked_rate_and_caps_a_catch_up_burst():
    time = FakeTime()
    bucket = TokenBucket(50.0, capacity=10, clock=time.clock, sleep=time.sleep)
    bucket.take(1)
    assert time.now == 0, "the first message goes at once"
    for _ in range(10):
        bucket.take(10)
    assert time.now == pytest.approx(100 / 50), "101 messages at 50 a second: 100 intervals"

    time.now += 60  # idle for a minute: at most `capacity` go without waiting
    before = time.now
    bucket.take(10)
    bucket.take(5)
    assert time.now - before == pytest.approx(5 / 50)
    with pytest.raises(ValueError, match="1 to 10 tokens"):
        bucket.take(11)
    with pytest.raises(ValueError, match="positive rate"):
        TokenBucket(0, capacity=1)


def test_batches_hold_a_twentieth_of_a_second_at_the_asked_rate():
    assert [batch_size(rate) for rate in (None, 2, 20, 100, 500, 100_000)] == [500, 1, 1, 5, 25, 500]


def test_a_rated_job_sends_its_batches_on_the_bucket_schedule(worker):
    dead = make_dead("paced", 20)
    job = job_for(dead, rate_per_s=100)
    time = FakeTime()

    assert requeue_job_run_slice(job.pk, clock=time.clock, sleep=time.sleep) is False
    job.refresh_from_db()
    assert (job.state, job.done, job.skipped) == (RequeueJob.State.DONE, 20, 0)
    assert time.now == pytest.approx(19 / 100), "20 messages at 100 a second, the first at once"
    assert len(time.sleeps) == 4, "four batches of five"
    wait_resolved([d.pk for d in dead])


def test_a_job_cancelled_while_a_batch_is_in_hand_stops_after_that_batch(worker):
    dead = make_dead("cancel", 20)
    job = job_for(dead, rate_per_s=100)
    time = FakeTime()

    def operator_cancels_while_waiting(seconds: float) -> None:
        time.sleep(seconds)
        assert requeue_job_cancel(job_id=job.pk)

    assert requeue_job_run_slice(job.pk, clock=time.clock, sleep=operator_cancels_while_waiting) is False
    job.refresh_from_db()
    assert (job.state, job.done) == (RequeueJob.State.CANCELLED, 5), "the batch in hand went out and is counted"
    first = [d.pk for d in dead[:5]]
    wait_resolved(first)
    assert DeadLetter.objects.filter(pk__in=[d.pk for d in dead[5:]], state=DeadLetter.State.DEAD, series=0).count() == 15
    assert requeue_job_run_slice(job.pk) is False, "a cancelled job's next slice does nothing"
    assert DeadLetter.objects.filter(state=DeadLetter.State.DEAD, pk__in=[d.pk for d in dead]).count() == 15


@redis_only_because("the pipelined publish is the Redis path; RabbitMQ's confirmed batch is checked by the next test")
def test_the_pipelined_publish_writes_the_message_apply_async_would_write():
    queue = "t.publish-check"  # no worker reads it
    handler = dataclasses.replace(catalog.handler("t_command"), queue=queue)
    envelope = build_envelope("test.command", {"key": "same-either-way"})
    redis = get_redis()
    redis.delete(queue)
    try:
        tasks.deliver.apply_async(args=[envelope.to_dict(), handler.consumer], queue=queue)
        publish_many([(handler, envelope)])
        theirs, ours = (json.loads(raw) for raw in redis.lrange(queue, 0, -1)[::-1])  # LPUSH: the first sent is last
    finally:
        redis.delete(queue)

    def body(message: dict) -> list:
        return json.loads(base64.b64decode(message["body"]))

    assert body(ours) == body(theirs)
    assert {k: v for k, v in ours.items() if k not in ("body", "headers", "properties")} == {k: v for k, v in theirs.items() if k not in ("body", "headers", "properties")}
    per_message = {"id", "root_id", "origin", "argsrepr", "kwargsrepr", "correlation_id", "delivery_tag"}
    for part in ("headers", "properties"):
        assert {k: v for k, v in ours[part].items() if k not in per_message} == {k: v for k, v in theirs[part].items() if k not in per_message}
    assert ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"]


@rabbitmq_only
def test_the_confirmed_batch_publish_writes_the_message_apply_async_would_write():
    queue = "t.publish-check"  # no worker reads it
    handler = dataclasses.replace(catalog.handler("t_command"), queue=queue)
    envelope = build_envelope("test.command", {"key": "same-either-way"})
    try:
        tasks.deliver.apply_async(args=[envelope.to_dict(), handler.consumer], queue=queue)
        publish_many([(handler, envelope)])
        with peeking(queue) as messages:
            theirs, ours = messages  # a queue is first in, first out
            assert ours.decode() == theirs.decode()
            assert (ours.content_type, ours.content_encoding) == (theirs.content_type, theirs.content_encoding)
            per_message = {"id", "root_id", "origin", "argsrepr", "kwargsrepr", "correlation_id", "delivery_tag"}
            assert {k: v for k, v in ours.headers.items() if k not in per_message} == {k: v for k, v in theirs.headers.items() if k not in per_message}
            skip = per_message | {"application_headers"}  # the headers, compared above
            assert {k: v for k, v in ours.properties.items() if k not in skip} == {k: v for k, v in theirs.properties.items() if k not in skip}
            assert ours.properties["delivery_mode"] == 2, "persistent, as every task message"
            assert ours.headers["id"] == ours.headers["root_id"] == ours.properties["correlation_id"]
    finally:
        purge(queue)


@pytest.mark.worker  # starts its own: no process fixture says so
def test_a_batch_published_by_hand_is_run_by_a_stock_celery_worker_with_its_args_ids_and_trace_context():
    """publish_many writes task messages itself (both brokers): a Celery worker of nothing but
    Celery (tests.support.stock_app) runs each once, with the arguments, ids and routing that
    apply_async's message would give it, and the envelope's trace context intact."""
    queue, record = f"t.stock.{uuid.uuid4().hex[:8]}", f"test:stock:{uuid.uuid4().hex}"
    handler = dataclasses.replace(catalog.handler("t_command"), queue=queue)
    envelopes = [telemetry.traced_headers(build_envelope("test.command", {"key": f"stock-{i}"}), queue=queue) for i in range(3)]
    env = {"STOCK_BROKER_URL": settings.CELERY_BROKER_URL, "STOCK_REDIS_URL": settings.REDIS_URL, "STOCK_RECORD_KEY": record}
    if on_rabbitmq():
        env["STOCK_QUEUE_TYPE"] = settings.CELERY_TASK_CREATE_MISSING_QUEUE_TYPE
    celery = [str(Path(sys.executable).parent / "celery"), "-A", "tests.support.stock_app", "worker"]
    node = f"stock-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    stock = ManagedProcess("stock", ["-Q", queue, "-c", "1", "-n", node, "--without-mingle", "--without-gossip", "-l", "info"], ready_marker=" ready.", command=celery, extra_env=env)
    received = redis.Redis.from_url(settings.REDIS_URL)
    stock.start()
    try:
        publish_many([(handler, envelope) for envelope in envelopes])
        wait_for(lambda: received.llen(record) >= 3, what="the stock worker to run the three messages")
        seen = [json.loads(raw) for raw in received.lrange(record, 0, -1)]
    finally:
        stock.stop()
        purge(queue)
        received.delete(record)

    assert len(seen) == 3, "each run once"
    by_message = {s["args"][0]["message_id"]: s for s in seen}
    for envelope in envelopes:
        got = by_message[str(envelope.message_id)]
        assert (got["args"], got["kwargs"]) == ([envelope.to_dict(), "t_command"], {})
        assert got["args"][0]["headers"]["traceparent"] == envelope.headers["traceparent"], "the send span's context, for the worker's process span"
        assert got["id"] == got["root_id"] == got["correlation_id"] and got["parent_id"] is None
        assert (got["retries"], got["routing_key"], got["argsrepr"], got["ignore_result"]) == (0, queue, "(envelope, consumer)", True)
    assert len({s["id"] for s in seen}) == 3, "a task id each"
