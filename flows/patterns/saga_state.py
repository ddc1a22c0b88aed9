"""Saga orchestration: the durable state machine that runs a declared saga (`flows.core.sagas`).

    payment = flows.saga("payment", [
        flows.step("reserve_stock", action="inventory.reserve", compensation="inventory.release"),
        flows.step("charge_card", action="billing.charge", compensation="billing.refund"),
    ])
    flows.start_saga("payment", {"order_id": "A-1", "amount": 42})

Each step is a message to the handler of its action type, carrying the saga's data; a dict the
handler returns is merged into that data. Every transition is a conditional update on
(state, current_step), so a redelivered step cannot apply twice, and the transition commits in
the same transaction as the step handler's own writes.

1. A step that succeeds moves the saga to the next step, or to `completed` after the last.
2. A step that fails after its retries compensates the completed steps in reverse order
   (`compensating`), ending `compensated`.
3. A compensation that fails after its retries leaves the saga `failed` and its message in the
   dead letters; requeueing it resumes the compensation.
4. A saga that has not moved for FLOWS_SAGA_STALL_SECONDS (a worker died mid-step) is taken up
   by the sweeper, which republishes its current step under the same message id.
"""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from flows.core import telemetry
from flows.core.envelope import PATTERN, SAGA_ID, SAGA_PHASE, SAGA_STEP, SAGA_TYPE, Envelope
from flows.core.errors import ConfigurationError, EnvelopeError, PoisonMessage, StaleTransition
from flows.core.message import Message, current_message
from flows.core.registry import catalog
from flows.core.sagas import ACTION, COMPENSATION, State, definition_of
from flows.models import SagaInstance, SagaStep
from flows.produce.publishing import publish_to

# The saga row check_position read for the delivery in hand. saga_is_at and saga_step_succeeded
# take it from here instead of reading the row twice more: on PostgreSQL each ORM read cost about
# as much CPU as the step's own writes, and a step was mostly reads. Keyed by the envelope object,
# so a row is never taken for another delivery's. The transition stays a conditional UPDATE on
# (state, current_step), so a row read before the transaction cannot apply a step twice.
_read: ContextVar[tuple[Envelope, SagaInstance] | None] = ContextVar("flows_saga_read", default=None)


def _read_for(message: Message) -> SagaInstance | None:
    held = _read.get()
    return held[1] if held is not None and held[0] is message.envelope else None


def saga_start(name: str, data: dict[str, Any], *, correlation_id: str | None = None) -> SagaInstance:
    """Persist a new saga and send its first step (on commit)."""
    if name not in catalog.sagas:
        raise ConfigurationError(f"unknown saga {name!r}; declared: {sorted(catalog.sagas)}")
    if not isinstance(data, dict):
        raise EnvelopeError(f"saga data must be a JSON object, got {type(data).__name__}")
    first = catalog.message_type(catalog.sagas[name].steps[0].action)
    first.validate(first.latest, data)  # refuse bad data now, not as a poisoned first step
    parent = current_message.get()
    saga_id = uuid.uuid4()
    correlation = correlation_id or (parent.correlation_id if parent else str(saga_id))
    attributes = {"flowscope.saga_id": str(saga_id), "flowscope.flow": name, "messaging.message.conversation_id": correlation}
    with telemetry.child_span(f"saga {name}", attributes=attributes), transaction.atomic():
        instance = SagaInstance.objects.create(
            id=saga_id,
            saga_type=name,
            data=data,
            correlation_id=correlation,
            headers=telemetry.current_headers(),  # every step, even one the sweeper resends, joins this trace
            updated_at=timezone.now(),
        )
        _send(instance, 0, ACTION, admit=True)
    return instance


def _send(instance: SagaInstance, index: int, phase: str, *, admit: bool = False) -> None:
    definition = definition_of(instance)
    message_type = definition.message_type(index, phase)
    if message_type is None:
        raise ConfigurationError(f"saga {instance.saga_type!r} step {index} has no {phase}")
    parent = current_message.get()
    envelope = Envelope(
        type=message_type,
        payload=instance.data,
        schema_version=catalog.message_type(message_type).latest,
        # The same id for every sending of one step, so the inbox and the transition guard
        # recognise a redelivery or a sweeper's resend as the same message.
        message_id=uuid.uuid5(instance.pk, f"{index}:{phase}"),
        correlation_id=instance.correlation_id,
        causation_id=parent.message_id if parent else "",
        headers={PATTERN: "saga", SAGA_TYPE: instance.saga_type, SAGA_ID: str(instance.pk), SAGA_STEP: index, SAGA_PHASE: phase},
    )
    envelope.check_size()
    (handler,) = catalog.handlers_for(message_type)
    with telemetry.continuing(instance.headers):
        publish_to(handler, envelope, admit=admit)


def check_position(message: Message) -> None:
    """A step message must name its saga, step and phase, and the saga must exist."""
    headers = message.envelope.headers
    try:
        saga_id = uuid.UUID(str(headers[SAGA_ID]))
    except (KeyError, ValueError):
        raise PoisonMessage(f"saga step message has no valid {SAGA_ID!r} header") from None
    step_index, phase = headers.get(SAGA_STEP), headers.get(SAGA_PHASE)
    if isinstance(step_index, bool) or not isinstance(step_index, int) or phase not in (ACTION, COMPENSATION):
        raise PoisonMessage(f"saga step message needs an integer {SAGA_STEP!r} and {SAGA_PHASE!r} of action or compensation")
    instance = SagaInstance.objects.filter(pk=saga_id).first()
    _read.set(None if instance is None else (message.envelope, instance))
    if instance is None:
        raise PoisonMessage(f"saga {saga_id} does not exist")
    definition = definition_of(instance)
    if not 0 <= step_index < len(definition.steps) or definition.message_type(step_index, phase) != message.envelope.type:
        raise PoisonMessage(f"saga {instance.saga_type!r} has no step {step_index} ({phase}) of type {message.envelope.type!r}")


def _position(message: Message) -> tuple[str, int, str]:
    headers = message.envelope.headers
    return str(headers[SAGA_ID]), int(headers[SAGA_STEP]), str(headers[SAGA_PHASE])


def _states_for(phase: str) -> list[str]:
    # A failed saga waits on its failed compensation; requeueing that message resumes it.
    return [State.RUNNING] if phase == ACTION else [State.COMPENSATING, State.FAILED]


def saga_is_at(message: Message) -> bool:
    saga_id, index, phase = _position(message)
    instance = _read_for(message)
    if instance is not None:
        return instance.state in _states_for(phase) and instance.current_step == index
    return SagaInstance.objects.filter(pk=saga_id, state__in=_states_for(phase), current_step=index).exists()


def _history(instance: SagaInstance, message: Message, index: int, phase: str, outcome: str, error: str = "") -> None:
    now = timezone.now()
    SagaStep.objects.create(
        saga=instance,
        index=index,
        name=definition_of(instance).steps[index].name,
        phase=phase,
        outcome=outcome,
        message_id=message.message_id,
        attempts=message.attempt,
        worker=message.worker,
        started_at=min(message.envelope.created_at, now),
        finished_at=now,
        error=error,
    )


def saga_step_succeeded(message: Message, result: Any) -> None:
    """Advance the saga past a step that succeeded. Call inside the step's transaction."""
    saga_id, index, phase = _position(message)
    instance = _read_for(message) or SagaInstance.objects.get(pk=saga_id)
    definition = definition_of(instance)
    now = timezone.now()
    if phase == ACTION:
        data = {**instance.data, **result} if isinstance(result, dict) else instance.data
        last = index == len(definition.steps) - 1
        changes: dict[str, Any] = {"data": data, "updated_at": now}
        changes.update({"state": State.COMPLETED, "finished_at": now} if last else {"current_step": index + 1})
        following: tuple[int, str] | None = None if last else (index + 1, ACTION)
    else:
        target = definition.previous_compensable(index - 1)
        changes = {"updated_at": now, "error": instance.error}
        if target is None:
            changes.update({"state": State.COMPENSATED, "finished_at": now})
        else:
            changes.update({"state": State.COMPENSATING, "current_step": target})
        following = None if target is None else (target, COMPENSATION)
    claimed = SagaInstance.objects.filter(pk=saga_id, state__in=_states_for(phase), current_step=index).update(**changes)
    if claimed != 1:
        raise StaleTransition(f"saga {saga_id} already moved past step {index} ({phase})")
    for field, value in changes.items():  # what the UPDATE wrote: the row as it now stands, unread
        setattr(instance, field, value)
    _history(instance, message, index, phase, SagaStep.Outcome.SUCCEEDED)
    if following is not None:
        _send(instance, *following)


def saga_step_failed(message: Message, exc: BaseException) -> bool:
    """A step gave up. Returns True when the saga took care of it (no dead letter needed)."""
    saga_id, index, phase = _position(message)
    instance = SagaInstance.objects.get(pk=saga_id)
    definition = definition_of(instance)
    error = f"step {definition.steps[index].name!r} ({phase}) failed: {type(exc).__name__}: {exc}"
    now = timezone.now()
    if phase == ACTION:
        target = definition.previous_compensable(index - 1)
        changes: dict[str, Any] = {"failed_step": index, "error": error, "updated_at": now}
        if target is None:
            changes.update({"state": State.COMPENSATED, "finished_at": now})
        else:
            changes.update({"state": State.COMPENSATING, "current_step": target})
        claimed = SagaInstance.objects.filter(pk=saga_id, state=State.RUNNING, current_step=index).update(**changes)
        if claimed == 1:
            instance.refresh_from_db()
            _history(instance, message, index, phase, SagaStep.Outcome.FAILED, error)
            if target is not None:
                _send(instance, target, COMPENSATION)
        return True
    claimed = SagaInstance.objects.filter(pk=saga_id, state=State.COMPENSATING, current_step=index).update(state=State.FAILED, error=error, updated_at=now)
    if claimed == 1:
        _history(instance, message, index, phase, SagaStep.Outcome.FAILED, error)
    return False  # an operator must fix and requeue the compensation: dead-letter it


def saga_touch(message: Message) -> None:
    """A step is retrying: it is alive, so the sweeper must not resume it."""
    saga_id, index, phase = _position(message)
    SagaInstance.objects.filter(pk=saga_id, state__in=_states_for(phase), current_step=index).update(updated_at=timezone.now())


def sweep_stalled_sagas(*, stall_seconds: float | None = None, limit: int = 500) -> int:
    """Republish the current step of every saga that has not moved for a while; returns how many."""
    stall = settings.FLOWS_SAGA_STALL_SECONDS if stall_seconds is None else stall_seconds
    cutoff = timezone.now() - timedelta(seconds=stall)
    stalled = SagaInstance.objects.filter(state__in=[State.RUNNING, State.COMPENSATING], updated_at__lt=cutoff).order_by("updated_at")[:limit]
    resumed = 0
    for instance in stalled:
        with transaction.atomic():
            claimed = SagaInstance.objects.filter(pk=instance.pk, state=instance.state, current_step=instance.current_step, updated_at=instance.updated_at).update(
                updated_at=timezone.now(), resumed=F("resumed") + 1
            )
            if claimed != 1:
                continue  # it moved, or another sweeper took it
            _send(instance, instance.current_step, ACTION if instance.state == State.RUNNING else COMPENSATION)
        resumed += 1
    return resumed
