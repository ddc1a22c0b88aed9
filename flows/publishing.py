"""The one way onto the broker: build an envelope, check it, apply back-pressure, send on commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery.utils import uuid as task_id
from django.conf import settings
from django.db import transaction

from flows import telemetry
from flows.backpressure import backpressure
from flows.envelope import PATTERN, Envelope
from flows.errors import ConfigurationError
from flows.message import current_message
from flows.registry import Handler, catalog


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
    if countdown is not None and countdown > settings.FLOWS_VISIBILITY_TIMEOUT / 2:
        raise ConfigurationError(
            f"a delay of {countdown:g}s exceeds half the broker visibility timeout ({settings.FLOWS_VISIBILITY_TIMEOUT}s): "
            "the broker would hand the message to a second worker"
        )
    if admit:
        backpressure.admit(handler.queue)
    from flows.tasks import deliver

    if trace:
        envelope = telemetry.traced_headers(envelope, queue=handler.queue)
    args = [envelope.to_dict(), handler.consumer]
    transaction.on_commit(lambda: deliver.apply_async(args=args, queue=handler.queue, countdown=countdown))


def publish_many(items: Sequence[tuple[Handler, Envelope]]) -> None:
    """Send ready envelopes (already admitted and traced), each to its handler's queue, now.

    One producer and one pipelined round trip per few hundred messages instead of one
    `apply_async` each: Celery's per-call routing and option lookups cost about 0.6 ms a
    message here, more than the broker does. The message is the one `apply_async` would send,
    put straight on the queue's list (the default exchange routes by queue name), so a worker
    cannot tell the difference. Not transactional: call it after the commit that decided it.
    """
    if not items:
        return
    from flows.tasks import deliver

    app = deliver.app
    with app.producer_or_acquire() as producer, producer.batch(max_size=500):
        for handler, envelope in items:
            args = [envelope.to_dict(), handler.consumer]
            headers, properties, body, _ = app.amqp.create_task_message(
                task_id(), deliver.name, args, {}, argsrepr=f"(<envelope {envelope.message_id}>, {handler.consumer!r})", kwargsrepr="{}"
            )
            producer.publish(body, exchange="", routing_key=handler.queue, headers=headers, serializer="json", retry=False, **properties)
