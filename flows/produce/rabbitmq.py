"""The producer side on RabbitMQ: delays held by the broker, batches confirmed together, depths.

Delays. Celery's countdown holds a message inside a worker until its time, which quorum queues
and RabbitMQ's `consumer_timeout` punish. Kombu's native delayed delivery holds it in the broker
instead: 28 levels of TTL queues that dead-letter into one another, a message's delay written in
binary in its routing key, the last level handing it to `celery_delayed_delivery`, which routes
it back to its queue. Celery uses it only for quorum queues and only from `apply_async`; the
engine uses it for every delayed send on RabbitMQ, whatever the queue type, by publishing to the
top level itself. It declares the levels once per process and binds each target queue before
its first delayed message, so a delay works before any worker has started.

Batches. A publish with confirms (`confirm_publish`, on for every send through Celery) waits for
the broker's acknowledgement of each message: a round trip a message. A batch (a bulk requeue's)
is published on a channel of its own in confirm mode and its acknowledgements are awaited once,
at the end: the broker has every message of the batch on disk (quorum: on a majority) when
`publish_confirmed` returns, and a nack or a timeout raises, leaving the caller's retry (the
requeue's in-flight note) to send the batch again.

Depths. A passive queue declare answers with the queue's ready messages and its consumers: no
management plugin needed.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from amqp.exceptions import NotFound
from celery import current_app
from kombu import Connection, Exchange, Producer, Queue
from kombu.transport.native_delayed_delivery import (
    MAX_LEVEL,
    bind_queue_to_native_delayed_delivery_exchange,
    calculate_routing_key,
    declare_native_delayed_delivery_exchanges_and_queues,
    level_name,
)

from flows.core.errors import ConfigurationError, FlowsError

DELAYED_EXCHANGE = Exchange(level_name(MAX_LEVEL), type="topic")
CONFIRM_TIMEOUT_SECONDS = 30.0

_lock = threading.Lock()
_delay_ready: set[str] = set()  # "" once the levels are declared, then each queue bound to them


class PublishNotConfirmed(FlowsError):
    """The broker refused (nack) or did not confirm in time some messages of a batch."""


def work_queue(name: str) -> Queue:
    """The queue as Celery declares it (type and exchange from the settings)."""
    return current_app.amqp.queues[name]


def delayed_send_options(queue_name: str, countdown: float) -> dict[str, Any]:
    """`send_task` options that have the broker hold the message `countdown` seconds (rounded
    up to whole seconds, the resolution of the delay levels) before it reaches `queue_name`."""
    queue = work_queue(queue_name)
    _ensure_delay_route(queue)
    return {"queue": queue, "exchange": DELAYED_EXCHANGE, "routing_key": calculate_routing_key(max(1, math.ceil(countdown)), queue.routing_key)}


def _ensure_delay_route(queue: Queue) -> None:
    if queue.name in _delay_ready:
        return
    if queue.exchange is None or queue.exchange.type == "direct":
        raise ConfigurationError(f"queue {queue.name!r} is bound to a direct exchange: RabbitMQ's delayed delivery routes only through topic exchanges (task_create_missing_queue_exchange_type)")
    with _lock, current_app.connection_for_write() as connection:
        if "" not in _delay_ready:
            declare_native_delayed_delivery_exchanges_and_queues(connection, current_app.conf.broker_native_delayed_delivery_queue_type)
            _delay_ready.add("")
        queue.bind(connection.default_channel).declare()
        bind_queue_to_native_delayed_delivery_exchange(connection, queue)
        _delay_ready.add(queue.name)


def publish_confirmed(messages: Sequence[tuple[str, Any, dict[str, Any], dict[str, Any]]], *, timeout: float = CONFIRM_TIMEOUT_SECONDS) -> None:
    """Publish (queue, body, headers, properties) messages on one channel in confirm mode and
    return once the broker has confirmed all of them; PublishNotConfirmed if it has not."""
    if not messages:
        return
    # A connection of its own, without per-message confirms: this channel awaits them together.
    with current_app.connection_for_write(transport_options={"confirm_publish": False}) as connection:
        channel = connection.channel()
        try:
            for name in dict.fromkeys(queue for queue, *_ in messages):
                work_queue(name).bind(channel).declare()  # a message to a queue that is not there would be confirmed, and lost
            state = {"confirmed": 0, "nacked": 0}

            def on_ack(tag: int, multiple: bool) -> None:
                state["confirmed"] = max(state["confirmed"], tag)

            def on_nack(tag: int, multiple: bool, *_: Any) -> None:
                state["nacked"] += 1
                state["confirmed"] = max(state["confirmed"], tag)

            channel.events["basic_ack"].add(on_ack)
            channel.events["basic_nack"].add(on_nack)
            channel.confirm_select()
            producer = Producer(channel)
            for queue, body, headers, properties in messages:
                producer.publish(body, exchange="", routing_key=queue, headers=headers, serializer="json", retry=False, **properties)
            _await_confirms(connection, state, len(messages), timeout)
        finally:
            channel.close()


def _await_confirms(connection: Connection, state: dict[str, int], count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while state["confirmed"] < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PublishNotConfirmed(f"RabbitMQ confirmed {state['confirmed']} of {count} messages within {timeout:g}s")
        try:
            connection.drain_events(timeout=left)
        except TimeoutError:
            continue
    if state["nacked"]:
        raise PublishNotConfirmed(f"RabbitMQ refused {state['nacked']} of {count} messages")


def queue_gauges(names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """(ready messages, consumers) of each queue, by passive declare; (0, 0) for a queue not
    declared yet."""
    gauges: dict[str, tuple[int, int]] = {}
    with current_app.pool.acquire(block=True) as connection:
        # Unreachable, kombu's OperationalError (the console's 503); a bare channel() would let
        # the socket's ConnectionRefusedError through, a 500 for a broker that is down.
        connection.ensure_connection(max_retries=0)
        channel = connection.channel()
        try:
            for name in names:
                try:
                    _, messages, consumers = channel.queue_declare(queue=name, passive=True)
                except NotFound:
                    gauges[name] = (0, 0)
                    channel = connection.channel()  # the broker closed the other on the 404
                    continue
                gauges[name] = (int(messages), int(consumers))
        finally:
            channel.close()
    return gauges
