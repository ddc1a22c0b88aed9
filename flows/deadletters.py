"""Dead letters: recording a message that gave up, requeueing it, discarding it.

Every state change claims its row with a conditional update (`filter(state=...).update(...)`):
a count other than 1 means another caller got there first, so each action is safe to run twice.
"""

from __future__ import annotations

import hashlib
import traceback
import uuid
from pathlib import Path
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from flows import telemetry
from flows.envelope import ATTEMPT, REQUEUE_OF, SERIES, Envelope
from flows.errors import EnvelopeError, FlowsError
from flows.models import DeadLetter
from flows.publishing import publish_to
from flows.registry import catalog
from flows.requeue_batch import clear_note, note_in_flight

_ENGINE_DIR = str(Path(__file__).resolve().parent)
_FRAMES_IN_FINGERPRINT = 3


def fingerprint(exc: BaseException, *, message_type: str) -> str:
    """Group failures by cause: the exception type and the innermost frames outside the engine.

    Line numbers and messages are left out, so an edit above the bug or an id in the message
    does not split one bug into many groups.
    """
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_ENGINE_DIR)]
    parts = [f"{type(exc).__module__}.{type(exc).__qualname__}"]
    if frames:
        parts += [f"{Path(f.filename).stem}:{f.name}" for f in frames[-_FRAMES_IN_FINGERPRINT:]]
    else:
        parts.append(message_type)  # raised by the engine itself (schema, routing): group per type
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def original_envelope(envelope: Envelope) -> dict[str, Any]:
    """The envelope as first published: without the headers of this attempt series."""
    return envelope.with_headers(**{ATTEMPT: None, REQUEUE_OF: None, SERIES: None}).to_dict()


def dead_letter_record(
    *,
    envelope: dict[str, Any],
    consumer: str,
    queue: str,
    exc: BaseException,
    attempts: int,
    poison: bool,
    series: int = 0,
    saga_id: str | None = None,
    saga_step: int | None = None,
) -> DeadLetter:
    """Store a message that gave up. Safe against redelivery: the same death is recorded once."""
    now = timezone.now()
    message_type = envelope.get("type") if isinstance(envelope.get("type"), str) else "(malformed)"
    fields = {
        "error_type": f"{type(exc).__module__}.{type(exc).__qualname__}"[:300],
        "error_message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "fingerprint": fingerprint(exc, message_type=message_type),
        "poison": poison,
        "attempts": attempts,
        "dead_at": now,
        "trace_id": telemetry.trace_id_of(envelope.get("headers") if isinstance(envelope.get("headers"), dict) else {}),
    }
    message_id = _message_id(envelope)
    try:
        with transaction.atomic():
            return DeadLetter.objects.create(
                message_id=message_id,
                message_type=message_type[:200],
                schema_version=envelope.get("schema_version") if _positive_int(envelope.get("schema_version")) else 1,
                correlation_id=str(envelope.get("correlation_id") or "")[:128],
                causation_id=str(envelope.get("causation_id") or "")[:128],
                queue=queue,
                consumer=consumer,
                pattern=str((envelope.get("headers") or {}).get("pattern", ""))[:50] if isinstance(envelope.get("headers"), dict) else "",
                envelope=envelope,
                first_dead_at=now,
                saga_id=saga_id,
                saga_step=saga_step,
                **fields,
            )
    except IntegrityError:
        pass
    # Died before: a requeued series that failed again goes back to "dead". A redelivery of a
    # death already recorded (same series, row already dead) changes nothing.
    DeadLetter.objects.filter(consumer=consumer, message_id=message_id, state=DeadLetter.State.REQUEUED, series=series).update(
        state=DeadLetter.State.DEAD, times_dead=F("times_dead") + 1, **fields
    )
    return DeadLetter.objects.get(consumer=consumer, message_id=message_id)


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


def dead_letter_resolve(*, dead_letter_id: int, series: int) -> None:
    """A requeued series succeeded: close its dead letter."""
    DeadLetter.objects.filter(pk=dead_letter_id, state=DeadLetter.State.REQUEUED, series=series).update(
        state=DeadLetter.State.RESOLVED, resolved_at=timezone.now()
    )


def _message_id(envelope: dict[str, Any]) -> uuid.UUID:
    try:
        return uuid.UUID(str(envelope.get("message_id")))
    except ValueError:
        # An envelope too broken to name itself: a stable id from its content, so a
        # redelivery of the same bytes is recognised as the same dead letter.
        return uuid.uuid5(uuid.NAMESPACE_URL, repr(sorted(envelope.items(), key=lambda kv: str(kv[0]))))


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
