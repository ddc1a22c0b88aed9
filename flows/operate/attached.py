"""Dead letters of attached Celery apps: recorded from their agents' reports, requeued through them.

The app's broker and its credentials never leave the app. An agent reports a task that failed
for good with its exact call (task, args, kwargs, routing); a requeue claims the dead letter as
every requeue does (flows.operate.requeue's conditional UPDATE: out of "dead", series + 1, the
requeue trace id) and, in the same transaction, writes an AttachedRequeue order where Flowscope's
own requeue would publish. The app's agent leases pending orders, sends each with the app's own
`app.send_task` and acknowledges it; the copy carries `flowscope_requeue_of` ("<id>:<series>")
and the requeue span's trace context, so its success resolves the dead letter and its death
makes it dead again (times_dead + 1).

Orders are rows rather than a Redis list: written in the claim's transaction, a committed claim
always has its order and a rolled-back one never does, so no in-flight note is needed, and an
order outlives a Redis flush. An order leased but never acknowledged (the agent died between
lease and send) is offered again once its lease runs out: at least once, like a recovered
in-flight note. Until then the dead letter shows "requeued".
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import orjson
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from opentelemetry import propagate, trace
from opentelemetry.trace import Span

from flows.consume.dead_letters import without_nul
from flows.core import telemetry
from flows.core.errors import EnvelopeError
from flows.models import AttachedRequeue, DeadLetter
from flows.operate.leases import lease_pending
from flows.operate.requeue import claim_dead  # the requeue's own claim and spans: one for every kind of dead letter

LEASE_SECONDS = 60.0  # as long as a requeue's in-flight note waits before it is recovered
MAX_CALL_BYTES = 256 * 1024  # an edited call's args and kwargs, as JSON
REQUEUE_OF = "flowscope_requeue_of"  # the header the copy carries: "<dead letter id>:<series>"


def attached_fingerprint(error_type: str, frames: list[str], task: str) -> str:
    """Flowscope's grouping recipe (flows.consume.dead_letters.fingerprint) on what the agent saw:
    the exception type and the innermost frames outside Celery, as "module:function"."""
    parts = [error_type, *frames[-3:]] if frames else [error_type, task]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def attached_record_death(*, app: str, report: dict[str, Any]) -> DeadLetter:
    """Store a task that failed for good, as its agent reported it (validated by the caller).

    A copy sent by a requeue (`requeue_of`) makes its dead letter dead again; a report seen
    before (an agent resending a batch whose answer it lost) changes nothing."""
    now = timezone.now()
    stored = without_nul(report)  # PostgreSQL keeps no NUL character: written out as "\x00"
    if (stored["args"], stored["kwargs"]) != (report["args"], report["kwargs"]):
        stored["requeueable"], stored["call_repr"] = False, "args or kwargs held NUL characters, which the database cannot keep (written out as \\x00): correct the call to requeue it"
    report = stored
    traceparent = report.get("traceparent") or ""
    fields = {
        "error_type": report["error_type"][:300],
        "error_message": report["error_message"],
        "traceback": report["traceback"],
        "fingerprint": attached_fingerprint(report["error_type"], report["frames"], report["task"]),
        "attempts": report["attempts"],
        "dead_at": now,
        "trace_id": telemetry.trace_id_of({"traceparent": traceparent}),
    }
    requeue_of = report.get("requeue_of")
    if requeue_of:
        pk, series = requeue_of["dead_letter_id"], requeue_of["series"]
        DeadLetter.objects.filter(pk=pk, app=app, state=DeadLetter.State.REQUEUED, series=series).update(state=DeadLetter.State.DEAD, times_dead=F("times_dead") + 1, **fields)
        AttachedRequeue.objects.filter(dead_letter_id=pk, series=series, sent_at__isnull=True).update(sent_at=now)  # it was sent: it ran
        row = DeadLetter.objects.filter(pk=pk, app=app).first()
        if row is not None:
            return row
    routing = report["routing"]
    envelope = {
        "task": report["task"],
        "task_id": report["task_id"],
        "payload": {"args": report["args"], "kwargs": report["kwargs"]},
        "requeueable": report["requeueable"],
        "call_repr": report["call_repr"],
        "routing": routing,
        "headers": {"traceparent": traceparent} if traceparent else {},
        "app": app,
        "worker": report["worker"],
    }
    message_id = _message_id(app, report["task_id"])
    try:
        with transaction.atomic():
            return DeadLetter.objects.create(
                app=app,
                message_id=message_id,
                message_type=report["task"][:200],
                correlation_id=str(report.get("root_id") or "")[:128],
                causation_id=str(report.get("parent_id") or "")[:128],
                queue=(routing.get("queue") or routing.get("routing_key") or "")[:200],
                consumer=report["task"][:200],
                envelope=envelope,
                poison=False,
                first_dead_at=now,
                **fields,
            )
    except IntegrityError:
        return DeadLetter.objects.get(consumer=report["task"][:200], message_id=message_id)


def attached_resolve(*, app: str, dead_letter_id: int, series: int) -> bool:
    """The copy of a requeue succeeded: its dead letter is resolved (once, in that series)."""
    now = timezone.now()
    AttachedRequeue.objects.filter(dead_letter_id=dead_letter_id, series=series, sent_at__isnull=True).update(sent_at=now)
    resolved = DeadLetter.objects.filter(pk=dead_letter_id, app=app, state=DeadLetter.State.REQUEUED, series=series).update(state=DeadLetter.State.RESOLVED, resolved_at=now)
    return resolved == 1


def attached_call(stored: dict[str, Any], edited: Any) -> dict[str, Any]:
    """An operator's corrected call: {"args": [...], "kwargs": {...}}, either left out keeping the
    stored one; EnvelopeError naming what is wrong otherwise."""
    if not isinstance(edited, dict) or not edited or set(edited) - {"args", "kwargs"}:
        raise EnvelopeError('a corrected call is {"args": [...], "kwargs": {...}}: args, kwargs or both, nothing else')
    previous = stored.get("payload") if isinstance(stored.get("payload"), dict) else {}
    call = {"args": edited.get("args", previous.get("args")), "kwargs": edited.get("kwargs", previous.get("kwargs"))}
    if not isinstance(call["args"], list):
        raise EnvelopeError("args must be a JSON list")
    if not isinstance(call["kwargs"], dict):
        raise EnvelopeError("kwargs must be a JSON object")
    if len(orjson.dumps(call)) > MAX_CALL_BYTES:
        raise EnvelopeError(f"the corrected call is over {MAX_CALL_BYTES} bytes as JSON")
    return call


def requeue_attached(*, ids: list[int], actor: str, payloads: dict[int, Any] | None = None, strict: bool = False) -> list[int]:
    """Requeue those of `ids` that are attached dead letters, still dead and requeueable (their
    call stored as JSON, or corrected in `payloads`): claim them and write their orders in one
    transaction. Returns the ids requeued. With `strict`, one that cannot go raises EnvelopeError."""
    payloads = payloads or {}
    rows = DeadLetter.objects.filter(pk__in=ids, state=DeadLetter.State.DEAD).exclude(app="").values_list("pk", "app", "envelope")
    calls: dict[int, tuple[str, dict[str, Any], dict[str, Any]]] = {}
    for pk, app, envelope in rows:
        stored = envelope if isinstance(envelope, dict) else {}
        if pk in payloads:
            call = attached_call(stored, payloads[pk])
        elif stored.get("requeueable") and isinstance(stored.get("payload"), dict):
            call = stored["payload"]
        elif strict:
            raise EnvelopeError(f"dead letter {pk}: its call was not JSON when it died ({stored.get('call_repr', '')[:200]}); correct args and kwargs to requeue it")
        else:
            continue
        calls[pk] = (app, stored, call)
    if not calls:
        return []
    with transaction.atomic():
        claimed, spans = claim_dead(calls, actor=actor)
        for row in claimed:
            app, stored, call = calls[row.pk]
            _order(row.pk, row.series, app, stored, call, spans[row.pk], actor=actor, edited=row.pk in payloads)
        sent = [spans[row.pk] for row in claimed]
        transaction.on_commit(lambda: [span.end() for span in sent])
    return [row.pk for row in claimed]


def requeue_attached_one(*, dead_letter_id: int, actor: str, payload: Any = None) -> bool:
    """One attached dead letter, its call corrected with `payload` if given. False when it is no
    longer dead; EnvelopeError (nothing changed) when it cannot be sent."""
    payloads = {dead_letter_id: payload} if payload is not None else {}
    return requeue_attached(ids=[dead_letter_id], actor=actor, payloads=payloads, strict=True) == [dead_letter_id]


def _order(pk: int, series: int, app: str, stored: dict[str, Any], call: dict[str, Any], span: Span, *, actor: str, edited: bool) -> None:
    """The order for one claimed dead letter, and its requeue span named, described and linked:
    the root of a new trace, linked to the trace the task died in."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    task = str(stored.get("task") or "")
    routing = stored.get("routing") if isinstance(stored.get("routing"), dict) else {}
    span.update_name(f"requeue {task}")
    span.set_attributes(
        {
            "messaging.system": "celery",
            "messaging.operation.type": "send",
            "messaging.destination.name": str(routing.get("queue") or routing.get("routing_key") or ""),
            "flowscope.message_type": task,
            "flowscope.app": app,
            "flowscope.producer": "service:flowscope",
            "flowscope.dead_letter_id": pk,
            "flowscope.actor": actor[:150],
        }
    )
    dead_headers = stored.get("headers") if isinstance(stored.get("headers"), dict) else {}
    linked = trace.get_current_span(telemetry.context_of(dead_headers)).get_span_context() if dead_headers else None
    if linked is not None and linked.is_valid:
        span.add_link(linked, {"flowscope.link": "requeue-of"})
    if edited:
        DeadLetter.objects.filter(pk=pk).update(envelope={**stored, "payload": call, "requeueable": True})
    AttachedRequeue.objects.create(
        dead_letter_id=pk,
        app=app,
        series=series,
        call={"task": task, "args": call["args"], "kwargs": call["kwargs"], "routing": routing, "traceparent": carrier.get("traceparent", ""), REQUEUE_OF: f"{pk}:{series}"},
    )


def orders_lease(*, app: str, limit: int = 50, lease_seconds: float = LEASE_SECONDS) -> list[dict[str, Any]]:
    """Lease `app`'s pending orders (never sent, unleased or their lease run out) to the calling
    agent: each order goes to one agent at a time, however many of the app's workers ask."""
    orders, moved_on = [], []
    for order in lease_pending(AttachedRequeue, app=app, limit=limit, lease_seconds=lease_seconds).select_related("dead_letter"):
        dead = order.dead_letter
        if dead.state == DeadLetter.State.REQUEUED and dead.series == order.series:
            orders.append({"id": order.pk, **order.call})
        else:  # resolved, dead again or requeued again since: this series needs no send
            moved_on.append(order.pk)
    if moved_on:
        AttachedRequeue.objects.filter(pk__in=moved_on).update(sent_at=timezone.now())
    return orders


def orders_ack(*, app: str, ids: list[int]) -> int:
    """The agent sent these orders: they are not offered again. Returns how many were pending."""
    return AttachedRequeue.objects.filter(app=app, pk__in=ids, sent_at__isnull=True).update(sent_at=timezone.now())


def _message_id(app: str, task_id: str) -> uuid.UUID:
    """Celery's task id when it is a UUID (it is unless the caller chose one), else a stable one from it."""
    try:
        return uuid.UUID(task_id)
    except ValueError:
        return uuid.uuid5(uuid.NAMESPACE_URL, f"celery:{app}:{task_id}")
