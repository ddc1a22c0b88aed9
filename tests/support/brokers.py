"""The broker the run is on (`BROKER=rabbitmq` for RabbitMQ, Redis otherwise), seen as tests need:
how many messages wait in a queue, and emptying one, whichever broker holds it."""

from __future__ import annotations

import pytest
from amqp.exceptions import NotFound
from celery import current_app

from flows.core.brokers import RABBITMQ, broker_kind
from flows.produce.backpressure import get_redis_broker, queue_depth


def on_rabbitmq() -> bool:
    return broker_kind() == RABBITMQ


redis_only = pytest.mark.skipif("on_rabbitmq()", reason="Redis transport internals; RabbitMQ has its own tests")
rabbitmq_only = pytest.mark.skipif("not on_rabbitmq()", reason="RabbitMQ only: run with BROKER=rabbitmq")


def waiting(queue: str) -> int:
    """Messages ready in `queue`, not yet taken by a worker."""
    return queue_depth(queue)


def purge(*queues: str) -> None:
    if not on_rabbitmq():
        get_redis_broker().delete(*queues)
        return
    with current_app.connection_for_write() as connection:
        for queue in queues:
            channel = connection.channel()
            try:
                channel.queue_purge(queue)
            except NotFound:
                pass  # not declared yet: nothing in it
            finally:
                if channel.is_open:
                    channel.close()
