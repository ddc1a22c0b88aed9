"""Operator actions on one dead letter: requeue it (its payload corrected, if need be) or discard it.

Every state change claims its row with a conditional update (`filter(state=...).update(...)`):
a count other than 1 means another caller got there first, so each action is safe to run twice.
A requeue is the bulk requeue's path with one id (flows.operate.requeue): one claim, one
in-flight note, one trace shape for both.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from flows.core.errors import EnvelopeError, FlowsError, InvalidArgument
from flows.core.registry import catalog
from flows.models import DeadLetter
from flows.operate.attached import requeue_attached_one
from flows.operate.requeue import requeue_one
from flows.produce.backpressure import backpressure


def dead_letter_requeue(*, dead_letter_id: int, actor: str, payload: dict[str, Any] | None = None) -> bool:
    """Republish a dead letter's original envelope to its queue as a fresh series of attempts.

    With `payload`, the envelope is first corrected: the new payload must pass the message
    type's schema at the envelope's version (PayloadInvalid otherwise) and the size limit
    (PayloadTooLarge). Returns False, changing nothing, when the dead letter is no longer dead
    (someone else requeued or discarded it first). Where a bulk requeue leaves alone what cannot
    go, this one says why, changing nothing: a consumer no longer registered (FlowsError), a
    queue refusing more (QueueFull), an envelope that cannot be sent (EnvelopeError).
    """
    if payload is not None and not isinstance(payload, dict):
        raise EnvelopeError("the payload must be a JSON object")
    row = DeadLetter.objects.filter(pk=dead_letter_id, state=DeadLetter.State.DEAD).values_list("consumer", "message_type", "schema_version", "app").first()
    if row is None:
        return False
    consumer, message_type, schema_version, app = row
    if app:  # an attached Celery app's task: its agent sends it (payload: corrected args, kwargs)
        return requeue_attached_one(dead_letter_id=dead_letter_id, actor=actor, payload=payload)
    if payload is not None:
        payload = catalog.message_type(message_type).validate(schema_version, payload)
    handler = catalog.handlers.get(consumer)
    if handler is None:
        raise FlowsError(f"dead letter {dead_letter_id}: consumer {consumer!r} is no longer registered; deploy it again or discard")
    backpressure.admit(handler.queue)  # the operator feels back-pressure at once, as any producer
    # The claim decides: the row may have left "dead" since it was read (then False).
    return requeue_one(dead_letter_id=dead_letter_id, handler=handler, actor=actor, payload=payload)


def dead_letter_discard(*, dead_letter_id: int, actor: str, reason: str) -> bool:
    if not reason.strip():
        raise InvalidArgument("a discard needs a reason, for the audit trail")
    discarded = DeadLetter.objects.filter(pk=dead_letter_id, state=DeadLetter.State.DEAD).update(
        state=DeadLetter.State.DISCARDED, discarded_at=timezone.now(), discarded_by=actor[:150], discard_reason=reason.strip()
    )
    return discarded == 1
