"""The one way onto the broker: build an envelope, check it, apply back-pressure, send on commit."""

from __future__ import annotations

import base64
import os
import socket
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
from celery import current_app
from django.db import transaction

from flows.core import telemetry
from flows.core.brokers import RABBITMQ, broker_kind, max_delay
from flows.core.envelope import PATTERN, Envelope
from flows.core.errors import ConfigurationError
from flows.core.message import current_message
from flows.core.registry import Handler, catalog
from flows.produce import rabbitmq
from flows.produce.backpressure import backpressure

# The worker's one delivery task (flows.consume.tasks), by name.
DELIVER_TASK = "flows.deliver"


def build_envelope(
    message_type: str,
    payload: dict[str, Any],
    *,
    schema_version: int | None = None,
    correlation_id: str | None = None,
    headers: dict[str, Any] | None = None,
) -> Envelope:
    """A new envelope, validated against its schema and the size limit.

    Inside a handler the new message joins the handled one's conversation: same correlation id,
    and the handled message as its cause.
    """
    mtype = catalog.message_type(message_type)
    version = schema_version or mtype.latest
    normalised = mtype.validate(version, payload)
    parent = current_message.get()
    envelope = Envelope(
        type=message_type,
        payload=normalised,
        schema_version=version,
        correlation_id=correlation_id or (parent.correlation_id if parent else ""),
        causation_id=parent.message_id if parent else "",
        headers={**(headers or {}), PATTERN: mtype.pattern},
    )
    envelope.check_size()
    return envelope


def publish_to(handler: Handler, envelope: Envelope, *, countdown: float | None = None, admit: bool = True, trace: bool = True) -> None:
    """Send `envelope` to one handler's queue.

    Inside a database transaction the send waits for the commit, so a rolled-back transaction
    publishes nothing; back-pressure is applied now, so the producer feels it at once. With
    `trace`, the send is a span and the copy carries its context; without, the envelope's own.
    """
    if countdown is not None:
        limit, reason = max_delay()
        if countdown > limit:
            # .15g: a delay near RabbitMQ's limit (2**28 s) reads in whole seconds, not as 2.68435e+08
            raise ConfigurationError(f"a delay of {countdown:.15g}s exceeds {reason}: the broker cannot hold the message that long")
    if admit:
        backpressure.admit(handler.queue)
    if trace:
        envelope = telemetry.traced_headers(envelope, queue=handler.queue)
    args = [envelope.to_dict(), handler.consumer]
    transaction.on_commit(lambda: send_to_broker(args, queue=handler.queue, countdown=countdown))


def send_to_broker(args: list[Any], *, queue: str, countdown: float | None = None) -> None:
    """Hand one delivery to the broker: the worker's delivery task, by name (the worker side
    defines it; the producer needs only its name and the broker)."""
    if countdown and broker_kind() == RABBITMQ:
        current_app.send_task(DELIVER_TASK, args=args, **rabbitmq.delayed_send_options(queue, countdown))
        return
    current_app.send_task(DELIVER_TASK, args=args, queue=queue, countdown=countdown)


def publish_many(items: Sequence[tuple[Handler, Envelope]]) -> None:
    """Send ready envelopes (already admitted and traced), each to its handler's queue, now.

    Not transactional: call it after the commit that decided it. On a Redis broker the task
    messages are written as kombu writes them, in one pipelined round trip: `apply_async` spent
    about 0.6 ms a message here, most of it in Celery's per-call routing and option lookups, and
    kombu's producer still 45 us. On RabbitMQ, on one channel whose confirms are awaited once,
    for the whole batch, the messages' headers encoded once for the batch (flows.produce.rabbitmq).
    """
    if not items:
        return
    app = current_app
    if broker_kind() == RABBITMQ:
        _publish_confirmed(app, items)
        return
    with app.producer_or_acquire() as producer:
        pipe = producer.channel.client.pipeline(transaction=False)
        options = {"ignore_result": app.conf.task_ignore_result, "reply_to": app.thread_oid}
        for handler, envelope in items:
            pipe.lpush(handler.queue, redis_task_message(DELIVER_TASK, [envelope.to_dict(), handler.consumer], queue=handler.queue, **options))
        pipe.execute()


def _publish_confirmed(app: Any, items: Sequence[tuple[Handler, Envelope]]) -> None:
    # ignore_result and reply_to as apply_async sets them (create_task_message defaults to
    # False and none): the batch's messages are the ones apply_async would write.
    deliveries = rabbitmq.TaskMessages(app, DELIVER_TASK, argsrepr=_ARGSREPR, kwargsrepr="{}", ignore_result=app.conf.task_ignore_result, reply_to=app.thread_oid)
    rabbitmq.publish_confirmed([(handler.queue, deliveries.message([envelope.to_dict(), handler.consumer])) for handler, envelope in items])


@contextmanager
def one_connection_for_batches() -> Iterator[None]:
    """Within the block, this thread's `publish_many` batches share one broker connection: on
    RabbitMQ one confirm channel (flows.produce.rabbitmq.one_confirm_channel); on Redis they
    do already (the producer pool)."""
    if broker_kind() != RABBITMQ:
        yield
        return
    with rabbitmq.one_confirm_channel():
        yield


_ARGSREPR = "(envelope, consumer)"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"


def redis_task_message(task: str, args: list[Any], *, queue: str, ignore_result: bool, reply_to: str) -> bytes:
    """A Celery task message (protocol 2, JSON) as kombu's Redis transport stores it in a queue's
    list: what `apply_async(args, queue=queue)` writes, routed by the default exchange. The test
    of publish_many compares the two field by field."""
    task_id = str(uuid.uuid4())
    body = orjson.dumps([args, {}, _EMBED])
    return orjson.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": task,
                "id": task_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": task_id,
                "parent_id": None,
                "argsrepr": _ARGSREPR,
                "kwargsrepr": "{}",
                "origin": _ORIGIN,
                "ignore_result": ignore_result,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": reply_to,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )
