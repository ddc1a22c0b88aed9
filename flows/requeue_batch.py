"""Requeue many dead letters at once: one conditional claim, one pipelined publish per batch.

1. Claim with one conditional UPDATE (`id IN (...) AND state = 'dead'`) that returns the rows
   it changed: two clients requeueing the same dead letter at once still republish it exactly
   once, because only one UPDATE can move a row out of "dead".
2. In the same transaction (the claim marks each row UNCONFIRMED), open one requeue span per
   message: a new trace, linked to the one the message died in.
3. After the commit, publish the batch over one broker connection, then write each row's
   requeue trace id in place of the mark.

If the process dies between 1 and 3, the rows stay "requeued" with the mark: nothing is lost,
`requeue_recover_unconfirmed` republishes them once they are older than RECOVER_AFTER_SECONDS.
A death after the publish but before the confirmation republishes a message that was already
sent (at least once, as a broker redelivery would be; an idempotent handler absorbs it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import orjson
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanContext, SpanKind

from flows import telemetry
from flows.backpressure import backpressure
from flows.envelope import ATTEMPT, REQUEUE_OF, SERIES, Envelope
from flows.errors import FlowsError
from flows.models import DeadLetter
from flows.publishing import publish_many
from flows.registry import Handler, catalog
from tracing import setup

# Not a trace id any tracer makes (all zeros is invalid in W3C trace context): "claimed, the
# publish not yet confirmed". Fits the column and its index, so recovery finds these rows at once.
UNCONFIRMED = "0" * 32
RECOVER_AFTER_SECONDS = 60.0
_CONTEXT_HEADERS = ("traceparent", "tracestate", "baggage")
_RETURNING = "id, series, consumer, message_type, envelope"


@dataclasses.dataclass
class _Claimed:
    pk: int
    series: int
    consumer: str
    message_type: str
    envelope: Any


def requeue_batch(*, ids: list[int], actor: str) -> list[int]:
    """Requeue those of `ids` that are still dead and can be sent; returns the ids requeued.

    Left alone (and so not returned): dead letters no longer dead, those whose consumer is no
    longer registered, whose stored envelope does not parse, or whose queue refuses more
    messages (back-pressure) right now.
    """
    sendable = _sendable(ids)
    if not sendable:
        return []
    now = timezone.now()
    with transaction.atomic():
        claimed = _claim(
            "state = %s, series = series + 1, requeued_at = %s, requeued_by = %s, requeue_trace_id = %s",
            [DeadLetter.State.REQUEUED, _db_time(now), actor[:150], UNCONFIRMED],
            "state = %s",
            [DeadLetter.State.DEAD],
            sendable,
        )
        return _send(claimed, actor=actor, handlers=sendable)


def requeue_recover_unconfirmed(*, older_than: float = RECOVER_AFTER_SECONDS, limit: int = 500) -> int:
    """Republish requeues that were claimed but never confirmed as published (their process
    died in between). Each is claimed again conditionally, so two recoverers send it once."""
    cutoff = timezone.now() - timedelta(seconds=older_than)
    stale = list(
        DeadLetter.objects.filter(state=DeadLetter.State.REQUEUED, requeue_trace_id=UNCONFIRMED, requeued_at__lt=cutoff)
        .order_by("pk").values_list("pk", flat=True)[:limit]
    )
    sendable = _sendable(stale, state=DeadLetter.State.REQUEUED)
    if not sendable:
        return 0
    with transaction.atomic():
        claimed = _claim(
            "requeued_at = %s", [_db_time(timezone.now())],
            "state = %s AND requeue_trace_id = %s AND requeued_at < %s", [DeadLetter.State.REQUEUED, UNCONFIRMED, _db_time(cutoff)],
            sendable,
        )
        return len(_send(claimed, actor="recovery", handlers=sendable))


def _sendable(ids: Iterable[int], *, state: str = DeadLetter.State.DEAD) -> dict[int, Handler]:
    """The ids worth claiming, with their handler: consumer registered, queue admitting now."""
    handlers: dict[int, Handler] = {}
    admitted: dict[str, bool] = {}
    for pk, consumer in DeadLetter.objects.filter(pk__in=list(ids), state=state).values_list("pk", "consumer"):
        handler = catalog.handlers.get(consumer)
        if handler is None:
            continue
        if handler.queue not in admitted:
            try:
                backpressure.admit(handler.queue)  # once per queue and batch: a batch is small
                admitted[handler.queue] = True
            except FlowsError:
                admitted[handler.queue] = False
        if admitted[handler.queue]:
            handlers[pk] = handler
    return handlers


def _claim(assignments: str, assignment_params: list[Any], condition: str, condition_params: list[Any], ids: Iterable[int]) -> list[_Claimed]:
    """One conditional UPDATE ... RETURNING (SQLite 3.35+, PostgreSQL): the rows it changed."""
    ids = sorted(ids)
    table = connection.ops.quote_name(DeadLetter._meta.db_table)
    sql = f"UPDATE {table} SET {assignments} WHERE id IN ({', '.join(['%s'] * len(ids))}) AND {condition} RETURNING {_RETURNING}"
    with connection.cursor() as cursor:
        cursor.execute(sql, [*assignment_params, *ids, *condition_params])
        rows = cursor.fetchall()
    return sorted((_Claimed(*row) for row in rows), key=lambda c: c.pk)


def _send(claimed: list[_Claimed], *, actor: str, handlers: dict[int, Handler]) -> list[int]:
    """Spans and envelopes for the claimed rows now; the publish when the transaction commits."""
    items: list[tuple[Handler, Envelope]] = []
    traces: list[tuple[str, int, int]] = []
    broken: list[int] = []
    producer = f"service:{setup.provider().resource.attributes.get('service.name', 'flowscope')}"
    for row in claimed:
        handler = handlers[row.pk]
        try:
            stored = orjson.loads(row.envelope) if isinstance(row.envelope, (str, bytes)) else row.envelope
            dead_headers = stored.get("headers") if isinstance(stored, dict) and isinstance(stored.get("headers"), dict) else {}
            headers = {**dead_headers, ATTEMPT: 1, REQUEUE_OF: row.pk, SERIES: row.series}
            envelope = Envelope.from_dict({**stored, "headers": headers})
        except (FlowsError, ValueError, TypeError):  # orjson's JSONDecodeError is a ValueError
            broken.append(row.pk)
            continue
        attributes = telemetry.message_attributes(envelope, queue=handler.queue, operation="send")
        attributes.update({"flowscope.producer": producer, "flowscope.dead_letter_id": row.pk, "flowscope.actor": actor[:150]})
        span_context, carried = _requeue_span(f"requeue {row.message_type}", links_to=dead_headers, attributes=attributes)
        traces.append((format(span_context.trace_id, "032x"), row.pk, row.series))
        items.append((handler, envelope.with_headers(**carried)))
    if broken:
        # An envelope stored unreadable (a malformed delivery's) cannot be sent: back to "dead"
        # with the series it had; requeued_at and requeued_by keep this attempt, for the record.
        DeadLetter.objects.filter(pk__in=broken).update(state=DeadLetter.State.DEAD, series=F("series") - 1, requeue_trace_id="")
    transaction.on_commit(lambda: _publish_and_confirm(items, traces))
    return [pk for _, pk, _ in traces]


def _requeue_span(name: str, *, links_to: dict[str, Any], attributes: dict[str, Any]) -> tuple[SpanContext, dict[str, str | None]]:
    """One span per requeued message, ended at once: the root of a new trace, linked to the one
    the message died in, and the send of the copy (PRODUCER, so the flow graph counts it), whose
    context the copy carries. The single requeue opens a root and a send span under it; for a
    bulk requeue one span does both, as spans are most of its cost."""
    links = []
    linked = trace.get_current_span(telemetry.context_of(links_to)).get_span_context() if links_to else None
    if linked is not None and linked.is_valid:
        links.append(Link(linked, {"flowscope.link": "requeue-of"}))
    span = setup.tracer().start_span(name, context=otel_context.Context(), kind=SpanKind.PRODUCER, links=links, attributes=attributes)
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    span.end()
    return span.get_span_context(), {header: carrier.get(header) for header in _CONTEXT_HEADERS}


def _publish_and_confirm(items: list[tuple[Handler, Envelope]], traces: list[tuple[str, int, int]]) -> None:
    if not items:
        return
    publish_many(items)
    table = connection.ops.quote_name(DeadLetter._meta.db_table)
    values = ", ".join(["(%s, CAST(%s AS bigint), CAST(%s AS integer))"] * len(traces))
    with connection.cursor() as cursor:
        # One statement for the batch (500 single-row UPDATEs cost PostgreSQL four times as much).
        # Only where the mark is still this series' own: a row requeued again since keeps its newer one.
        cursor.execute(
            f"UPDATE {table} SET requeue_trace_id = confirmed.trace "
            f"FROM (SELECT column1 AS trace, column2 AS id, column3 AS series FROM (VALUES {values}) AS listed) AS confirmed "
            f"WHERE {table}.id = confirmed.id AND {table}.series = confirmed.series AND {table}.requeue_trace_id = %s",
            [v for row in traces for v in row] + [UNCONFIRMED],
        )


def _db_time(value: Any) -> Any:
    return connection.ops.adapt_datetimefield_value(value) if connection.vendor == "sqlite" else value


