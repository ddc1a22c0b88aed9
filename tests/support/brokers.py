"""The broker the run is on (`BROKER=rabbitmq` for RabbitMQ, Redis otherwise), seen as tests need:
how many messages wait in a queue, putting raw items in one and taking some out, and emptying
one, whichever broker holds it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from celery import current_app
from kombu import Connection, Message, Producer

from flows.core.brokers import RABBITMQ, broker_kind
from flows.produce.backpressure import get_redis_broker, queue_depth
from flows.produce.rabbitmq import work_queue
from tooling.brokers import purge  # noqa: F401 - the tests empty queues as the tooling does


def on_rabbitmq() -> bool:
    return broker_kind() == RABBITMQ


# Settled when the settings load (tests/settings.py reads BROKER), before any test module is
# collected; a condition given as a string would be evaluated in the test module's namespace.
redis_only = pytest.mark.skipif(on_rabbitmq(), reason="Redis transport internals; RabbitMQ has its own tests")
rabbitmq_only = pytest.mark.skipif(not on_rabbitmq(), reason="RabbitMQ only: run with BROKER=rabbitmq")


def redis_only_because(why: str) -> pytest.MarkDecorator:
    """redis_only, saying why the test has no place on RabbitMQ."""
    return pytest.mark.skipif(on_rabbitmq(), reason=f"Redis only: {why}")


def waiting(queue: str) -> int:
    """Messages ready in `queue`, not yet taken by a worker."""
    return queue_depth(queue)


def push_raw(queue: str, *bodies: bytes) -> None:
    """Put `bodies` in `queue` as they are, no Celery message around them: on Redis as list
    items, on RabbitMQ as plain AMQP messages (binary, no headers) to the queue as Celery
    declares it. Filler for back-pressure, or poison for a worker."""
    if not on_rabbitmq():
        get_redis_broker().rpush(queue, *bodies)
        return
    with current_app.connection_for_write() as connection:
        declared = work_queue(queue).bind(connection.default_channel)
        declared.declare()
        producer = Producer(connection.default_channel)
        for body in bodies:
            producer.publish(body, exchange="", routing_key=queue, content_type="application/data", content_encoding="binary", retry=False)


def fill(queue: str, n: int) -> None:
    """`n` filler items in `queue` (not Celery messages: only a worker that is not there would mind)."""
    push_raw(queue, *[b"{}"] * n)


def take(queue: str, n: int) -> None:
    """Take `n` waiting messages out of `queue` for good, from the end a worker takes from."""
    if not on_rabbitmq():
        pipe = get_redis_broker().pipeline(transaction=False)
        for _ in range(n):
            pipe.rpop(queue)  # kombu pushes on the left, takes on the right
        assert all(item is not None for item in pipe.execute()), f"fewer than {n} messages in {queue!r}"
        return
    with current_app.connection_for_write() as connection:
        channel = connection.channel()
        try:
            for _ in range(n):
                assert channel.basic_get(queue, no_ack=True) is not None, f"fewer than {n} messages in {queue!r}"
        finally:
            channel.close()


@contextmanager
def peeking(queue: str) -> Iterator[list[Message]]:
    """RabbitMQ: every message waiting in `queue`, in the order a worker would get them, held
    unacknowledged while the block runs and handed back to the queue after it."""
    assert on_rabbitmq(), "Redis: read the queue's list itself"
    with Connection(current_app.conf.broker_url) as connection:
        channel = connection.channel()
        taken = []
        try:
            while (raw := channel.basic_get(queue, no_ack=False)) is not None:
                taken.append(channel.message_to_python(raw))
            yield taken
        finally:
            channel.close()  # unacknowledged: back in the queue
