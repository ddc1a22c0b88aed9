"""Requeue dead letters: one conditional claim, one in-flight note, one pipelined publish per batch.

This is the only requeue: a bulk job's batch (`requeue_batch`) and an operator's single requeue
(`requeue_one`, behind `dead_letters.dead_letter_requeue`) are the same steps, the single one a
batch of one id, so both claim, note, publish and trace alike.

1. Open one requeue span per candidate (a new trace each; not yet ended, so not yet sent).
2. Claim with one conditional UPDATE (`id IN (...) AND state = 'dead'`) that also writes each
   row's requeue trace id and returns the rows it changed: two clients requeueing the same dead
   letter at once still republish it exactly once, as only one UPDATE can move a row out of
   "dead". Spans of rows not claimed are dropped unended: they are never exported.
3. Still in the transaction, build each envelope (a single requeue's corrected payload replaces
   the stored one here, size-checked and written with the claim), note the batch as in flight in
   Redis; after the commit, publish it over one broker connection, end the spans, clear the note.

The trace of a requeue: one span per message, `requeue <type>`, the root of a new trace linked to
the trace the message died in, and also the send of the copy (PRODUCER), so the copy's `process`
span hangs under it.

If the process dies between the commit and the publish, the note stays: nothing is lost,
`requeue_recover_unconfirmed` (run at the start of every bulk requeue job's slice) republishes
the rows it names that are still "requeued" in that series, once the note is older than
RECOVER_AFTER_SECONDS. A death after the publish but before the note is cleared republishes
messages already sent (at least once, as a broker redelivery would be; an idempotent handler
absorbs it), and so does a publisher stalled longer than RECOVER_AFTER_SECONDS between its
commit and its publish.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterable
from typing import Any

import orjson
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind

from flows.core import telemetry
from flows.core.envelope import ATTEMPT, REQUEUE_OF, SERIES, Envelope
from flows.core.errors import EnvelopeError, FlowsError
from flows.core.registry import Handler, catalog
from flows.models import DeadLetter
from flows.produce.backpressure import backpressure
from flows.produce.publishing import publish_many
from tracing import setup
from tracing.redis import get_redis, key

INFLIGHT = key("requeue", "inflight")  # hash: note id -> {"at": unix time, "rows": [[id, series], ...]}
RECOVER_AFTER_SECONDS = 60.0
RECOVERY_LOCK = key("requeue", "recovering")
RECOVERY_LOCK_SECONDS = 120
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
    with transaction.atomic():
        return _claim_and_send(sendable, actor=actor)


def requeue_one(*, dead_letter_id: int, handler: Handler, actor: str, payload: dict[str, Any] | None = None) -> bool:
    """The batch path with one id, for a caller that has found the dead letter's `handler` still
    registered and its queue admitting (dead_letters.dead_letter_requeue, which says why not).

    `payload`, validated by the caller, replaces the stored one: size-checked, and written with
    the claim. Returns False, changing nothing, when the dead letter is no longer dead; raises
    EnvelopeError, changing nothing, when its envelope cannot be sent (stored unreadable, or the
    corrected payload over the size limit), where a batch would leave it dead and go on.
    """
    payloads = {dead_letter_id: payload} if payload is not None else {}
    with transaction.atomic():
        return _claim_and_send({dead_letter_id: handler}, actor=actor, payloads=payloads, strict=True) == [dead_letter_id]


def requeue_recover_unconfirmed(*, older_than: float | None = None) -> int:
    """Republish requeues noted as in flight whose process died before sending them (notes older
    than `older_than`); returns how many messages. One recoverer at a time (a lock in Redis): a
    row claimed meanwhile by another recoverer could not be told from one never sent."""
    redis = get_redis()
    token = uuid.uuid4().hex
    if not redis.set(RECOVERY_LOCK, token, nx=True, ex=RECOVERY_LOCK_SECONDS):
        return 0  # another process is at it
    try:
        cutoff, recovered = time.time() - (RECOVER_AFTER_SECONDS if older_than is None else older_than), 0
        for note_id, raw in redis.hgetall(INFLIGHT).items():
            note = orjson.loads(raw)
            if note["at"] > cutoff:
                continue  # its publisher may still be at work
            recovered += _recover(note_id, dict(note["rows"]))
        return recovered
    finally:
        if redis.get(RECOVERY_LOCK) == token.encode():
            redis.delete(RECOVERY_LOCK)


def _recover(note_id: bytes, series: dict[int, int]) -> int:
    """Send again those of a note's rows still "requeued" in the note's series (a row resolved,
    dead again or requeued again since has moved on); keep a note of any that cannot go now."""
    pending = [pk for pk, n in DeadLetter.objects.filter(pk__in=list(series), state=DeadLetter.State.REQUEUED).values_list("pk", "series") if series[pk] == n]
    sendable = _sendable(pending, state=DeadLetter.State.REQUEUED)
    sent: list[int] = []
    with transaction.atomic():
        if sendable:
            spans = _open_spans(sendable)
            same_series = " ".join(["WHEN %s THEN %s"] * len(spans))
            claimed = _claim(
                "requeued_at = %s",
                [_db_time(timezone.now())],
                f"state = %s AND series = CASE id {same_series} END",
                [DeadLetter.State.REQUEUED, *(v for pk in sorted(spans) for v in (pk, series[pk]))],
                spans,
            )
            sent = _send(claimed, actor="recovery", handlers=sendable, spans=spans)  # noted afresh until sent
        left = [[pk, series[pk]] for pk in pending if pk not in set(sent)]  # consumer retired, queue full
        if left:
            get_redis().hset(INFLIGHT, note_id, orjson.dumps({"at": time.time(), "rows": left}))
        else:
            get_redis().hdel(INFLIGHT, note_id)
    return len(sent)


def claim_dead(ids: Iterable[int], *, actor: str) -> tuple[list[_Claimed], dict[int, Span]]:
    """Inside a transaction: move those of `ids` still dead to "requeued" (series + 1, by
    `actor`), the claim every requeue makes, whoever then sends the copy (this module, or an
    attached app's agent: flows.operate.attached). Returns the rows claimed and a requeue span per
    id; the spans of rows not claimed are never ended, so never exported."""
    spans = _open_spans(ids)
    claimed = _claim(
        "state = %s, series = series + 1, requeued_at = %s, requeued_by = %s",
        [DeadLetter.State.REQUEUED, _db_time(timezone.now()), actor[:150]],
        "state = %s",
        [DeadLetter.State.DEAD],
        spans,
    )
    return claimed, spans


def _claim_and_send(sendable: dict[int, Handler], *, actor: str, payloads: dict[int, dict[str, Any]] | None = None, strict: bool = False) -> list[int]:
    """Claim those of `sendable` still dead and send them on commit (inside a transaction)."""
    claimed, spans = claim_dead(sendable, actor=actor)
    return _send(claimed, actor=actor, handlers=sendable, spans=spans, payloads=payloads, strict=strict)


def _open_spans(sendable: Iterable[int]) -> dict[int, Span]:
    """A requeue span per candidate, started now so that the claim can write its trace id; it is
    named, described and linked once the claim has returned the row, and ended after the send."""
    tracer = setup.tracer()
    return {pk: tracer.start_span("requeue", context=otel_context.Context(), kind=SpanKind.PRODUCER) for pk in sendable}


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


def _claim(assignments: str, assignment_params: list[Any], condition: str, condition_params: list[Any], spans: dict[int, Span]) -> list[_Claimed]:
    """One conditional UPDATE ... RETURNING (SQLite 3.35+, PostgreSQL) that also sets each row's
    requeue trace id from its span: the rows it changed."""
    ids = sorted(spans)
    table = connection.ops.quote_name(DeadLetter._meta.db_table)
    traces = [v for pk in ids for v in (pk, _trace_id(spans[pk]))]
    sql = (
        f"UPDATE {table} SET {assignments}, requeue_trace_id = CASE id {' '.join(['WHEN %s THEN %s'] * len(ids))} END "
        f"WHERE id IN ({', '.join(['%s'] * len(ids))}) AND {condition} RETURNING {_RETURNING}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*assignment_params, *traces, *ids, *condition_params])
        rows = cursor.fetchall()
    return sorted((_Claimed(*row) for row in rows), key=lambda c: c.pk)


def _send(claimed: list[_Claimed], *, actor: str, handlers: dict[int, Handler], spans: dict[int, Span], payloads: dict[int, dict[str, Any]] | None = None, strict: bool = False) -> list[int]:
    """Envelopes for the claimed rows (with their corrected `payloads`, written to the rows now)
    and their spans finished now; an in-flight note in Redis before the commit; the publish, the
    spans' end and the note's removal after it. An envelope that cannot be sent is raised with
    `strict`, else its row goes back to "dead"."""
    items: list[tuple[Handler, Envelope]] = []
    sent: list[Span] = []
    broken: list[int] = []
    producer = f"service:{setup.provider().resource.attributes.get('service.name', 'flowscope')}"
    for row in claimed:
        handler, span = handlers[row.pk], spans[row.pk]
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))  # the copy carries its send span's context
        try:
            envelope, dead_headers = _envelope_of(row, carrier, (payloads or {}).get(row.pk))
        except EnvelopeError:
            if strict:
                raise  # the caller's transaction rolls the claim back
            broken.append(row.pk)
            continue
        # One span per message, as spans are most of a bulk requeue's cost: the root of a new
        # trace, linked to the one the message died in, and the send of the copy (PRODUCER, so
        # the flow graph counts it).
        span.update_name(f"requeue {row.message_type}")
        attributes = telemetry.message_attributes(envelope, queue=handler.queue, operation="send")
        attributes.update({"flowscope.producer": producer, "flowscope.dead_letter_id": row.pk, "flowscope.actor": actor[:150]})
        span.set_attributes(attributes)
        linked = trace.get_current_span(telemetry.context_of(dead_headers)).get_span_context() if dead_headers else None
        if linked is not None and linked.is_valid:
            span.add_link(linked, {"flowscope.link": "requeue-of"})
        items.append((handler, envelope))
        sent.append(span)
    if broken:
        # An envelope stored unreadable (a malformed delivery's) cannot be sent: back to "dead"
        # with the series it had; requeued_at and requeued_by keep this attempt, for the record.
        DeadLetter.objects.filter(pk__in=broken).update(state=DeadLetter.State.DEAD, series=F("series") - 1, requeue_trace_id="")
    note = _note_in_flight([(int(e.headers[REQUEUE_OF]), int(e.headers[SERIES])) for _, e in items]) if items else None
    transaction.on_commit(lambda: _publish(items, sent, note))
    return [int(e.headers[REQUEUE_OF]) for _, e in items]


def _envelope_of(row: _Claimed, carrier: dict[str, str], payload: dict[str, Any] | None) -> tuple[Envelope, dict[str, Any]]:
    """The envelope to send for a claimed row, and the headers it died with (for the link);
    EnvelopeError (PayloadTooLarge among them) when there is none to send.

    The stored envelope keeps the original headers; the copy gets the requeue span's context and
    a fresh series of attempts. A corrected `payload` replaces the stored one in the row too.
    """
    # Valid JSON always (a JSON column): text from SQLite's RETURNING, parsed from PostgreSQL's.
    stored = orjson.loads(row.envelope) if isinstance(row.envelope, (str, bytes)) else row.envelope
    if not isinstance(stored, dict):
        raise EnvelopeError(f"dead letter {row.pk}: its stored envelope is not a JSON object but a {type(stored).__name__}")
    dead_headers = stored["headers"] if isinstance(stored.get("headers"), dict) else {}
    if payload is not None:
        stored = {**stored, "payload": payload}
    headers = {k: v for k, v in dead_headers.items() if k not in _CONTEXT_HEADERS}
    headers.update(carrier, **{ATTEMPT: 1, REQUEUE_OF: row.pk, SERIES: row.series})
    envelope = Envelope.from_dict({**stored, "headers": headers})  # checks the size too
    if payload is not None:
        DeadLetter.objects.filter(pk=row.pk).update(envelope=stored)
    return envelope, dead_headers


def _note_in_flight(rows: list[tuple[int, int]]) -> str:
    """Note requeues (dead letter id, series) as claimed but not yet sent; call inside the
    claiming transaction, and `_clear_note` once they are published."""
    note = uuid.uuid4().hex
    get_redis().hset(INFLIGHT, note, orjson.dumps({"at": time.time(), "rows": rows}))
    return note


def _clear_note(note: str) -> None:
    get_redis().hdel(INFLIGHT, note)


def _publish(items: list[tuple[Handler, Envelope]], spans: list[Span], note: str | None) -> None:
    publish_many(items)
    for span in spans:
        span.end()
    if note is not None:
        _clear_note(note)


def _trace_id(span: Span) -> str:
    return format(span.get_span_context().trace_id, "032x")


def _db_time(value: Any) -> Any:
    return connection.ops.adapt_datetimefield_value(value) if connection.vendor == "sqlite" else value
