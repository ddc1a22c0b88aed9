"""The worker side of every pattern: one delivery of one message to one handler.

    extract -> schema (upcast + validate) -> duplicate check -> handler -> pattern hooks
      ok        -> after_success (reply, status), close a requeued dead letter
      failure   -> retry with backoff, attempt n of N
      exhausted -> the pattern's say (saga compensation), else a dead letter
      poison    -> straight to the dead letters, no retries

The outcome is durable before this returns, and the broker message is acknowledged only after
it returns (late ack), so a worker killed anywhere in here loses nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any

from django.db import transaction

from flows.consume.dead_letters import dead_letter_record, dead_letter_resolve, original_envelope
from flows.consume.idempotency import duplicate_count, inbox_claim
from flows.consume.stats import counters
from flows.core import telemetry
from flows.core.envelope import ATTEMPT, REQUEUE_OF, SAGA_ID, SAGA_STEP, SERIES, Envelope
from flows.core.errors import EnvelopeError, PoisonMessage, StaleTransition
from flows.core.message import Message, current_message
from flows.core.registry import catalog
from flows.models import SagaInstance
from flows.patterns import Pattern, get_pattern
from flows.produce.publishing import publish_to
from tracing.redaction import redact_text

log = logging.getLogger(__name__)

OK, RETRY, DEAD, DUPLICATE, HANDLED = "ok", "retry", "dead", "duplicate", "handled"


class _Bare(Pattern):
    name = "unknown"


BARE = _Bare()


def deliver(raw: Any, consumer: Any, *, worker: str) -> str:
    """Process one delivery; returns the outcome (ok, retry, dead, duplicate or handled)."""
    handler = catalog.handlers.get(consumer) if isinstance(consumer, str) else None
    if handler is None:
        # Counted under one label, not the claimed name: that would be unbounded.
        exc = PoisonMessage(f"no handler is registered as consumer {consumer!r}")
        return _dead_on_arrival(raw, consumer=str(consumer)[:200], label="(unknown consumer)", queue="", exc=exc, worker=worker)
    try:
        envelope = Envelope.from_dict(raw)
    except EnvelopeError as exc:
        return _dead_on_arrival(raw, consumer=handler.consumer, label=handler.consumer, queue=handler.queue, exc=exc, worker=worker)

    # The pattern comes from the handler's declared type, never from what the message claims.
    pattern = get_pattern(catalog.message_type(handler.message_type).pattern)
    message = Message(envelope=envelope, payload=envelope.payload, handler=handler, worker=worker)
    token = current_message.set(message)
    try:
        with telemetry.process_span(envelope, queue=handler.queue, consumer=handler.consumer, worker=worker):
            outcome = _process(message, pattern)
            telemetry.set_outcome(outcome)
    finally:
        current_message.reset(token)
    counters.add(pattern.name, handler.consumer, outcome)
    return outcome


def _process(message: Message, pattern: Pattern) -> str:
    try:
        pattern.validate(message)
    except PoisonMessage as exc:
        return _give_up(message, BARE, exc, poison=True)  # headers the pattern's hooks cannot read
    try:
        payload = _read_payload(message)
    except PoisonMessage as exc:
        return _give_up(message, pattern, exc, poison=True)
    if payload is not message.payload:  # a schema normalised or upcast it
        message = dataclasses.replace(message, payload=payload)
        current_message.set(message)
    return _run(message, pattern)


def _read_payload(message: Message) -> dict[str, Any]:
    envelope, handler = message.envelope, message.handler
    if envelope.type != handler.message_type:
        raise PoisonMessage(f"consumer {handler.consumer!r} handles {handler.message_type!r}, not {envelope.type!r}")
    mtype = catalog.message_type(envelope.type)
    target = handler.target_version(mtype)
    payload = mtype.read(envelope.schema_version, envelope.payload, target=target)
    if envelope.schema_version < target:  # recorded once read: a version it cannot read is poison, not an upcast
        telemetry.record_upcast(target)
    return payload


def _run(message: Message, pattern: Pattern) -> str:
    handler = message.handler
    try:
        if not pattern.should_process(message):
            duplicate_count(handler.consumer)
            return DUPLICATE
        if handler.idempotent or pattern.transactional:
            with transaction.atomic():
                if handler.idempotent and not inbox_claim(consumer=handler.consumer, message_id=message.message_id):
                    duplicate_count(handler.consumer)
                    return DUPLICATE
                result = handler.fn(message)
                pattern.on_success(message, result)
                _resolve_requeue(message)
        else:
            result = handler.fn(message)
            pattern.on_success(message, result)
            _resolve_requeue(message)
    except StaleTransition:
        duplicate_count(handler.consumer)
        return DUPLICATE
    except PoisonMessage as exc:
        return _give_up(message, pattern, exc, poison=True)
    except Exception as exc:
        if message.attempt < handler.max_attempts:
            return _retry(message, pattern, exc)
        return _give_up(message, pattern, exc, poison=False)
    pattern.after_success(message, result)
    return OK


def _resolve_requeue(message: Message) -> None:
    requeue_of, series = message.envelope.header(REQUEUE_OF), message.envelope.header(SERIES)
    if isinstance(requeue_of, int) and isinstance(series, int):
        dead_letter_resolve(dead_letter_id=requeue_of, series=series)


def _retry(message: Message, pattern: Pattern, exc: Exception) -> str:
    handler = message.handler
    telemetry.record_failure(exc, final=False)
    delay = handler.backoff.delay(message.attempt)
    log.info("%s %s attempt %d/%d failed (%s: %s); retrying in %.2fs", handler.consumer, message.message_id, message.attempt, handler.max_attempts, type(exc).__name__, redact_text(str(exc)), delay)
    # Retries skip back-pressure (refusing one would lose the message it carries) and keep the
    # original trace context, so every attempt is a sibling under the send that started them.
    publish_to(handler, message.envelope.with_headers(**{ATTEMPT: message.attempt + 1}), countdown=delay, admit=False, trace=False)
    pattern.on_retry(message, exc, delay)
    return RETRY


def _give_up(message: Message, pattern: Pattern, exc: BaseException, *, poison: bool) -> str:
    envelope, handler = message.envelope, message.handler
    telemetry.record_failure(exc, final=True)
    log.warning("%s %s gave up after attempt %d (%s: %s)", handler.consumer, message.message_id, message.attempt, type(exc).__name__, redact_text(str(exc)))
    with transaction.atomic():
        if pattern.on_exhausted(message, exc):
            return HANDLED
        series = envelope.header(SERIES)
        saga_step = envelope.header(SAGA_STEP)
        dead_letter_record(
            envelope=original_envelope(envelope),
            consumer=handler.consumer,
            queue=handler.queue,
            exc=exc,
            attempts=message.attempt,
            poison=poison,
            series=series if isinstance(series, int) else 0,
            saga_id=_existing_saga(envelope.header(SAGA_ID)),
            saga_step=saga_step if isinstance(saga_step, int) else None,
        )
    pattern.after_dead(message, exc)
    return DEAD


def _existing_saga(value: Any) -> uuid.UUID | None:
    """The saga a dying step message names, if it exists. A step of a deleted saga, or one with a
    mangled id, must still become a dead letter: a link to a missing row would fail the commit,
    and the delivery would go back to the queue for ever."""
    if value is None:
        return None
    try:
        saga_id = uuid.UUID(str(value))
    except ValueError:
        return None
    return saga_id if SagaInstance.objects.filter(pk=saga_id).exists() else None


def _dead_on_arrival(raw: Any, *, consumer: str, label: str, queue: str, exc: BaseException, worker: str) -> str:
    """Store what arrived, as it arrived, when it cannot even be read as an envelope."""
    envelope = raw if isinstance(raw, dict) else {"unparsed": repr(raw)[:10_000]}
    with telemetry.process_span(None, queue=queue, consumer=label, worker=worker):
        telemetry.record_failure(exc, final=True)
        log.warning("dead on arrival at %s: %s", consumer, redact_text(str(exc)))
        dead_letter_record(envelope=envelope, consumer=consumer, queue=queue, exc=exc, attempts=1, poison=True)
        telemetry.set_outcome(DEAD)
    counters.add("unknown", label, DEAD)
    return DEAD
