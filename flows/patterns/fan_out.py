"""Event fan-out: every subscriber gets its own copy on its own queue.

Copies are independent deliveries, so a slow or failing subscriber holds up only itself; the
per-event status (pending, retrying, succeeded, dead per subscriber) is kept in `deliveries`.
"""

from __future__ import annotations

from django.db import transaction

from flows.core import deliveries, telemetry
from flows.core.envelope import Envelope
from flows.core.errors import ConfigurationError
from flows.core.registry import Handler, catalog
from flows.core.schemas import MessageType
from flows.patterns.competing_consumers import CompetingConsumers
from flows.produce.publishing import publish_to


class FanOut(CompetingConsumers):
    name = "fan_out"
    handlers_allowed = (1, None)

    def check(self, mtype: MessageType, handlers: list[Handler]) -> None:
        super().check(mtype, handlers)
        queues = [h.queue for h in handlers]
        if len(set(queues)) != len(queues):
            raise ConfigurationError(f"fan_out type {mtype.name!r}: each subscriber needs a queue of its own, got {queues}")

    def dispatch(self, envelope: Envelope) -> None:
        subscribers = catalog.handlers_for(envelope.type)
        consumers = [h.consumer for h in subscribers]
        # Recorded on commit, like the sends, so a rolled-back event leaves no pending entries.
        transaction.on_commit(lambda: deliveries.mark_pending(str(envelope.message_id), consumers))
        # One span for the event, so every subscriber's copy is in one trace even when the event
        # starts a conversation.
        attributes = telemetry.message_attributes(envelope, queue=",".join(h.queue for h in subscribers), operation="create")
        with telemetry.child_span(f"publish {envelope.type}", attributes=attributes):
            for handler in subscribers:
                publish_to(handler, envelope)
