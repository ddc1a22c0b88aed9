"""Dead letters as the worker records them: a message that gave up, grouped by cause.

A death is recorded once however often its delivery comes back (a unique row per consumer and
message id), and a requeued series that succeeds closes its dead letter.
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

from flows.core import telemetry
from flows.core.envelope import ATTEMPT, REQUEUE_OF, SERIES, Envelope
from flows.models import DeadLetter

# Frames inside the engine are left out of a failure's fingerprint: the handler's are the cause.
_ENGINE_DIR = str(Path(__file__).resolve().parent.parent)
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


def _text(value: str) -> str:
    """PostgreSQL keeps no NUL character in text: written out instead, so the record is kept."""
    return value.replace("\x00", "\\x00")


def without_nul(value: Any) -> Any:
    """The envelope with any NUL character in its strings written out (PostgreSQL's JSON keeps
    none): a payload carrying one must still become a dead letter, not a delivery that can never
    be acknowledged."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    return value


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
        "error_message": _text(str(exc)),
        "traceback": _text("".join(traceback.format_exception(exc))),
        "fingerprint": fingerprint(exc, message_type=message_type),
        "poison": poison,
        "attempts": attempts,
        "dead_at": now,
        "trace_id": telemetry.trace_id_of(envelope.get("headers") if isinstance(envelope.get("headers"), dict) else {}),
    }
    message_id = _message_id(envelope)
    envelope = without_nul(envelope)
    try:
        with transaction.atomic():
            return DeadLetter.objects.create(
                message_id=message_id,
                message_type=message_type[:200],
                schema_version=envelope.get("schema_version") if _positive_int(envelope.get("schema_version")) else 1,
                correlation_id=_text(str(envelope.get("correlation_id") or ""))[:128],
                causation_id=_text(str(envelope.get("causation_id") or ""))[:128],
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
    DeadLetter.objects.filter(consumer=consumer, message_id=message_id, state=DeadLetter.State.REQUEUED, series=series).update(state=DeadLetter.State.DEAD, times_dead=F("times_dead") + 1, **fields)
    return DeadLetter.objects.get(consumer=consumer, message_id=message_id)


def dead_letter_resolve(*, dead_letter_id: int, series: int) -> None:
    """A requeued series succeeded: close its dead letter."""
    DeadLetter.objects.filter(pk=dead_letter_id, state=DeadLetter.State.REQUEUED, series=series).update(state=DeadLetter.State.RESOLVED, resolved_at=timezone.now())


def _message_id(envelope: dict[str, Any]) -> uuid.UUID:
    try:
        return uuid.UUID(str(envelope.get("message_id")))
    except ValueError:
        # An envelope too broken to name itself: a stable id from its content, so a
        # redelivery of the same bytes is recognised as the same dead letter.
        return uuid.uuid5(uuid.NAMESPACE_URL, repr(sorted(envelope.items(), key=lambda kv: str(kv[0]))))


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
