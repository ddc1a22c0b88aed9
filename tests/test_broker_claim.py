"""The Redis transport's claim (flows.consume.broker, flows.consume.claim) against a real Redis:
a message is taken and recorded as held in one step, and kombu's public behaviour is kept.

Each test runs kombu's own transport beside Flowscope's where it compares behaviour, on queues
and an unacknowledged set of its own ("t.claim.*"), so the session worker's deliveries are never
restored or read here. A consumer here drains with drain_events: kombu's synchronous poller,
which drives the same claim and wait as the worker's event loop (the reliability suite's
test_claim_window.py covers a real worker).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from django.conf import settings
from kombu import Connection, Consumer, Producer, Queue
from kombu.utils.json import loads

from flows.models import DeadLetter
from tests.support.brokers import redis_only_because
from tests.support.waiting import wait_for
from tracing.redis import get_redis

FLOWSCOPE = "flows.consume.broker:Transport"
KOMBU = "redis"
pytestmark = redis_only_because("the Lua claim is the Redis transport's; RabbitMQ records a delivery as unacknowledged itself (its poison messages: tests/test_rabbitmq.py)")

HELD = {"unacked_key": "t.claim.unacked", "unacked_index_key": "t.claim.unacked_index", "unacked_mutex_key": "t.claim.unacked_mutex"}


@pytest.fixture(autouse=True)
def clean_claim_keys() -> Iterator[None]:
    redis = get_redis()
    for name in redis.scan_iter(match="t.claim*", count=1000):
        redis.delete(name)
    yield


def connect(transport: str = FLOWSCOPE, **options: object) -> Connection:
    return Connection(settings.CELERY_BROKER_URL, transport=transport, transport_options={**HELD, **options})


def publish(conn: Connection, queue: str, body: object, **options: object) -> None:
    Producer(conn.default_channel).publish(body, exchange="", routing_key=queue, declare=[Queue(queue)], serializer="json", **options)


def drain(conn: Connection, queues: list[str], n: int, *, prefetch: int = 0, ack: bool = True) -> list[object]:
    got: list[object] = []

    def on_message(body: object, message: object) -> None:
        got.append(body)
        if ack:
            message.ack()  # type: ignore[attr-defined]

    with Consumer(conn.default_channel, [Queue(q) for q in queues], callbacks=[on_message], accept=["json"], prefetch_count=prefetch or None):
        deadline = time.monotonic() + 10
        while len(got) < n and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                pass
    return got


def held(tag: str) -> list[object] | None:
    raw = get_redis().hget(HELD["unacked_key"], tag)
    return loads(raw) if raw else None


def test_a_message_taken_is_held_in_unacked_exactly_as_kombu_records_it():
    redis = get_redis()
    with connect(KOMBU) as kombu, connect() as ours:
        publish(kombu, "t.claim.k", {"n": 1})
        publish(ours, "t.claim.f", {"n": 1})
        by_kombu = Queue("t.claim.k", channel=kombu.default_channel).get(no_ack=False)
        by_us = Queue("t.claim.f", channel=ours.default_channel).get(no_ack=False)
        assert by_us.payload == {"n": 1}
        recorded, expected = held(by_us.delivery_tag), held(by_kombu.delivery_tag)
        assert recorded == [by_us._raw, "", "t.claim.f"]
        assert [type(part) for part in recorded] == [type(part) for part in expected]
        assert redis.zscore(HELD["unacked_index_key"], by_us.delivery_tag) == pytest.approx(time.time(), abs=5)
        by_us.ack()
        by_kombu.ack()
        assert redis.hlen(HELD["unacked_key"]) == 0 and redis.zcard(HELD["unacked_index_key"]) == 0


def test_a_message_taken_without_acknowledgement_is_not_held():
    with connect() as conn:
        publish(conn, "t.claim.f", {"n": 1})
        message = Queue("t.claim.f", channel=conn.default_channel).get(no_ack=True)
        assert message.payload == {"n": 1}
        assert get_redis().hlen(HELD["unacked_key"]) == 0


def test_priorities_are_taken_in_the_order_kombu_takes_them():
    orders = {}
    for transport in (KOMBU, FLOWSCOPE):
        with connect(transport) as conn:
            for n, priority in enumerate([9, 0, 5, 3, 0, 9]):
                publish(conn, "t.claim.p", {"n": n, "priority": priority}, priority=priority)
            orders[transport] = [body["n"] for body in drain(conn, ["t.claim.p"], 6)]
    assert orders[FLOWSCOPE] == orders[KOMBU]
    assert len(set(orders[FLOWSCOPE])) == 6


def test_queues_are_taken_from_in_kombus_fair_rotation():
    orders = {}
    for transport in (KOMBU, FLOWSCOPE):
        with connect(transport) as conn:
            for n in range(3):
                publish(conn, "t.claim.a", {"q": "a", "n": n})
                publish(conn, "t.claim.b", {"q": "b", "n": n})
            orders[transport] = [f"{body['q']}{body['n']}" for body in drain(conn, ["t.claim.a", "t.claim.b"], 6)]
    assert orders[FLOWSCOPE] == orders[KOMBU]
    assert [o[0] for o in orders[FLOWSCOPE]] in (list("ababab"), list("bababa"))


def test_a_consumer_takes_no_more_than_its_prefetch_allows():
    redis = get_redis()
    with connect() as conn:
        publish(conn, "t.claim.f", {"n": 1})
        publish(conn, "t.claim.f", {"n": 2})
        assert drain(conn, ["t.claim.f"], 2, prefetch=1, ack=False) == [{"n": 1}]
        assert redis.llen("t.claim.f") == 1 and redis.hlen(HELD["unacked_key"]) == 1


def test_a_claimed_message_never_acknowledged_is_restored_after_the_visibility_timeout():
    redis = get_redis()
    with connect(visibility_timeout=1) as conn:
        publish(conn, "t.claim.f", {"n": 1})
        assert drain(conn, ["t.claim.f"], 1, ack=False) == [{"n": 1}]
        assert redis.llen("t.claim.f") == 0
    # Its consumer is gone without acknowledging: like a killed worker, it restores nothing itself.
    with connect(visibility_timeout=1) as other:
        qos = other.default_channel.qos

        def restored() -> bool:
            qos.restore_visible(num=10, interval=1)
            return redis.llen("t.claim.f") == 1

        wait_for(restored, timeout=10, interval=0.2, what="restore_visible to put the message back")
        assert drain(other, ["t.claim.f"], 1) == [{"n": 1}]


def test_an_idle_consumer_wakes_as_soon_as_a_message_arrives_however_long_its_wait():
    with connect(claim_wait=5) as conn, connect() as producer:
        timer = threading.Timer(0.5, publish, args=(producer, "t.claim.f", {"n": 1}))
        started = time.monotonic()
        timer.start()
        try:
            got = drain(conn, ["t.claim.f"], 1)
        finally:
            timer.join()
        assert got == [{"n": 1}]
        assert time.monotonic() - started < 2.5, "the consumer waited out its claim_wait instead of waking"


def test_a_message_on_another_idle_queue_is_taken_when_the_wait_ends():
    with connect(claim_wait=0.2) as conn, connect() as producer:
        # The consumer waits on t.claim.a (it last took from it) while the message arrives on t.claim.b.
        publish(producer, "t.claim.a", {"q": "a"})
        assert drain(conn, ["t.claim.a", "t.claim.b"], 1) == [{"q": "a"}]
        timer = threading.Timer(0.3, publish, args=(producer, "t.claim.b", {"q": "b"}))
        started = time.monotonic()
        timer.start()
        try:
            assert drain(conn, ["t.claim.a", "t.claim.b"], 1) == [{"q": "b"}]
        finally:
            timer.join()
        assert time.monotonic() - started < 2.0, "a message on a queue not waited on waited more than a few claim_waits"


@pytest.mark.django_db(transaction=True)
def test_items_that_are_not_messages_are_dead_lettered_and_not_left_held():
    redis = get_redis()
    redis.lpush("t.claim.f", b"not json at all")
    # Recorded by the claim (it has a delivery tag), but no Celery message: no body, no headers.
    redis.lpush("t.claim.f", b'{"properties": {"delivery_tag": "t-1", "delivery_info": {"exchange": "", "routing_key": "t.claim.f"}}}')
    with connect() as conn:
        publish(conn, "t.claim.f", {"n": 1})
        assert drain(conn, ["t.claim.f"], 1, ack=False) == [{"n": 1}]
        assert DeadLetter.objects.filter(queue="t.claim.f", poison=True).count() == 2
        assert redis.hlen(HELD["unacked_key"]) == 1 and not redis.hexists(HELD["unacked_key"], "t-1")
        redis.lpush("t.claim.g", b"[1, 2]")
        assert Queue("t.claim.g", channel=conn.default_channel).get(no_ack=False) is None
        assert DeadLetter.objects.filter(queue="t.claim.g", poison=True).count() == 1
