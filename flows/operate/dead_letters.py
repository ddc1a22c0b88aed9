"""Operator actions on one dead letter: requeue it (its payload corrected, if need be) or discard it.

Every state change claims its row with a conditional update (`filter(state=...).update(...)`):
a count other than 1 means another caller got there first, so each action is safe to run twice.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from flows.core import telemetry
from flows.core.envelope import ATTEMPT, REQUEUE_OF, SERIES, Envelope
from flows.core.errors import EnvelopeError, FlowsError
from flows.core.registry import catalog
from flows.models import DeadLetter
from flows.operate.requeue import clear_note, note_in_flight
from flows.produce.publishing import publish_to


def dead_letter_requeue(*, dead_letter_id: int, actor: str, payload: dict[str, Any] | None = None) -> bool:
    """Republish a dead letter's original envelope to its queue as a fresh series of attempts.

    With `payload`, the envelope is first corrected: the new payload must pass the message
    type's schema at the envelope's version (PayloadInvalid otherwise, and nothing changes).
    Returns False, changing nothing, when the dead letter is no longer dead (someone else
    requeued or discarded it first).
    """
    if payload is not None:
        current = DeadLetter.objects.filter(pk=dead_letter_id).values_list("message_type", "schema_version").first()
        if current is None:
            return False
        if not isinstance(payload, dict):
            raise EnvelopeError("the payload must be a JSON object")
        payload = catalog.message_type(current[0]).validate(current[1], payload)
    with transaction.atomic():
        claimed = DeadLetter.objects.filter(pk=dead_letter_id, state=DeadLetter.State.DEAD).update(
            state=DeadLetter.State.REQUEUED, series=F("series") + 1, requeued_at=timezone.now(), requeued_by=actor[:150]
        )
        if claimed != 1:
            return False
        dead = DeadLetter.objects.get(pk=dead_letter_id)
        if payload is not None:
            dead.envelope = {**dead.envelope, "payload": payload}
            Envelope.from_dict(dead.envelope).check_size()
            DeadLetter.objects.filter(pk=dead.pk).update(envelope=dead.envelope)
        try:
            handler = catalog.handler(dead.consumer)
        except LookupError:
            raise FlowsError(f"dead letter {dead.pk}: consumer {dead.consumer!r} is no longer registered; deploy it again or discard") from None
        envelope = Envelope.from_dict(dead.envelope).with_headers(**{ATTEMPT: 1, REQUEUE_OF: dead.pk, SERIES: dead.series})
        # A new trace, linked to the one the message died in; each opens from the other.
        attributes = {"flowscope.dead_letter_id": dead.pk, "flowscope.actor": actor[:150], "messaging.message.id": str(dead.message_id)}
        with telemetry.root_span(f"requeue {dead.message_type}", links_to=dead.envelope.get("headers") or {}, attributes=attributes) as span:
            # Sent when this transaction commits, so the worker never sees the row still "dead".
            publish_to(handler, envelope)
            requeue_trace = format(span.get_span_context().trace_id, "032x")
        DeadLetter.objects.filter(pk=dead.pk).update(requeue_trace_id=requeue_trace)
        # Claimed but not yet sent: noted, so that recovery sends it if this process dies between
        # the commit and the publish. Cleared after the publish (commit callbacks run in order,
        # and none after one that raised).
        note = note_in_flight([(dead.pk, dead.series)])
        transaction.on_commit(lambda: clear_note(note))
    return True


def dead_letter_discard(*, dead_letter_id: int, actor: str, reason: str) -> bool:
    if not reason.strip():
        raise ValueError("a discard needs a reason, for the audit trail")
    discarded = DeadLetter.objects.filter(pk=dead_letter_id, state=DeadLetter.State.DEAD).update(
        state=DeadLetter.State.DISCARDED, discarded_at=timezone.now(), discarded_by=actor[:150], discard_reason=reason.strip()
    )
    return discarded == 1
