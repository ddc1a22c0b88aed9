"""Reads that know the patterns: one message and how each subscriber took it, one queue and how
its competing consumers shared the work, one message type's schema versions in use and (for a
request type) its responder's timeouts and late replies.

Everything here is read from what the engine records already: the spans (their flowscope.*
attributes, tracing.models.Span), the dead letters, the late replies, the per-message delivery
status in Redis (flows.core.deliveries) and the broker's queue depth (back-pressure). Windows
are read through the spans' start-time index, so a page costs the spans of its window only.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Avg, Count, Q, QuerySet
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.utils import timezone

from flows.core import deliveries, telemetry
from flows.core.registry import catalog
from flows.models import DeadLetter, LateReply
from flows.produce.backpressure import queue_statuses
from tracing.models import Span

# OpenTelemetry span kinds as the collector stores them.
INTERNAL, CLIENT, PRODUCER, CONSUMER = 0, 2, 3, 4
KIND_NAMES = {0: "internal", 1: "server", 2: "client", 3: "producer", 4: "consumer"}
STATUS_NAMES = {0: "unset", 1: "ok", 2: "error"}

# A subscriber's status for one message, furthest along last.
NOT_SEEN, DELIVERED, RETRYING, DONE, DEAD, DISCARDED = "not seen", "delivered", "retrying", "done", "dead", "discarded"
_DONE_OUTCOMES = {"ok", "duplicate", "handled"}
_FROM_DELIVERIES = {deliveries.PENDING: DELIVERED, deliveries.RETRYING: RETRYING, deliveries.SUCCEEDED: DONE, deliveries.DEAD: DEAD}
_FROM_DEAD_LETTER = {DeadLetter.State.DEAD: DEAD, DeadLetter.State.REQUEUED: RETRYING, DeadLetter.State.RESOLVED: DONE, DeadLetter.State.DISCARDED: DISCARDED}

# A queue's work is skewed when its busiest consumer took this many times its fair share (1/n).
SKEW_THRESHOLD = 1.5
HOP_LIMIT = 500


def _attr(name: str) -> str:
    """A filter keyword on one span attribute (their keys hold dots, never a double underscore)."""
    return f"attributes__{name}"


def _since(window: timedelta) -> datetime:
    return timezone.now() - window


# -- one message ------------------------------------------------------------------------------


def _hop(span: Span) -> dict[str, Any]:
    a = span.attributes or {}
    return {
        "name": span.name,
        "kind": KIND_NAMES.get(span.kind, str(span.kind)),
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "service": span.service,
        "start_time": span.start_time,
        "duration_ms": round(span.duration_us / 1000, 3),
        "status": STATUS_NAMES.get(span.status_code, str(span.status_code)),
        "queue": str(a.get("messaging.destination.name", "")),
        "consumer": str(a.get("flowscope.consumer", "")),
        "worker": str(a.get("flowscope.worker", "")),
        "attempt": a.get("flowscope.attempt") if isinstance(a.get("flowscope.attempt"), int) else None,
        "outcome": str(a.get("flowscope.outcome", "")),
        "upcast_to": a.get(telemetry.UPCAST_TO) if isinstance(a.get(telemetry.UPCAST_TO), int) else None,
    }


def _subscriber(consumer: str, queue: str, hops: list[dict[str, Any]], dead: DeadLetter | None, live: dict[str, str] | None) -> dict[str, Any]:
    """One subscriber's status for the message: its dead letter's state if it has one (a requeue
    moves it on), else the furthest of what its process spans and the live delivery status say,
    else "delivered" when a copy was sent to its queue."""
    processed = [h for h in hops if h["kind"] == "consumer" and h["consumer"] == consumer]
    sent = any(h["kind"] == "producer" and h["queue"] == queue for h in hops)
    from_spans = ""
    if processed:
        outcome = processed[-1]["outcome"]
        from_spans = DONE if outcome in _DONE_OUTCOMES else RETRYING if outcome == "retry" else DEAD if outcome == "dead" else DELIVERED
    from_live = _FROM_DELIVERIES.get(live["status"], "") if live else ""
    if dead is not None:
        status = _FROM_DEAD_LETTER.get(dead.state, DEAD)
    elif from_live in (DONE, DEAD) or not from_spans:
        # The live status is written as the delivery ends; its span reaches the store later.
        status = from_live or from_spans or (DELIVERED if sent else NOT_SEEN)
    else:
        status = from_spans
    worker = (processed[-1]["worker"] if processed else "") or (live or {}).get("worker", "")
    return {
        "consumer": consumer,
        "queue": queue,
        "status": status,
        "attempts": max([h["attempt"] or 0 for h in processed], default=0),
        "worker": worker,
        "last_at": processed[-1]["start_time"] if processed else None,
        "dead_letter_id": dead.pk if dead is not None else None,
    }


def message_view(message_id: uuid.UUID) -> dict[str, Any] | None:
    """What is known of one message: its type, version, conversation and traces, every hop in
    start order, and each handler's status for it (a fan-out's subscribers, one for the other
    patterns). None when no span, dead letter or delivery status names it."""
    spans = list(Span.objects.filter(message_id=str(message_id)).order_by("start_time", "id")[:HOP_LIMIT])
    dead_letters = {d.consumer: d for d in DeadLetter.objects.filter(message_id=message_id)}
    live = deliveries.statuses(str(message_id))
    if not spans and not dead_letters and not live:
        return None
    hops = [_hop(s) for s in spans]
    described = next((s.attributes for s in spans if (s.attributes or {}).get("flowscope.message_type")), None)
    first_dead = next(iter(dead_letters.values()), None)
    if described is not None:
        message_type = str(described["flowscope.message_type"])
        version = described.get("flowscope.schema_version")
        correlation_id = str(described.get("messaging.message.conversation_id", ""))
        pattern = str(described.get("flowscope.pattern", ""))
    else:
        message_type = first_dead.message_type if first_dead else ""
        version = first_dead.schema_version if first_dead else None
        correlation_id = first_dead.correlation_id if first_dead else ""
        pattern = first_dead.pattern if first_dead else ""
    declared = catalog.types.get(message_type)
    if declared is not None:
        pattern = declared.pattern
    handlers = {h.consumer: h.queue for h in catalog.handlers_for(message_type)}
    for hop in hops:
        if hop["kind"] == "consumer" and hop["consumer"]:
            handlers.setdefault(hop["consumer"], hop["queue"])
    for consumer, dead in dead_letters.items():
        handlers.setdefault(consumer, dead.queue)
    for consumer in live:
        handlers.setdefault(consumer, "")
    subscribers = [_subscriber(c, q, hops, dead_letters.get(c), live.get(c)) for c, q in sorted(handlers.items())]
    return {
        "message_id": str(message_id),
        "message_type": message_type,
        "schema_version": version if isinstance(version, int) else None,
        "pattern": pattern,
        "correlation_id": correlation_id,
        "causation_id": first_dead.causation_id if first_dead else "",
        "first_seen": spans[0].start_time if spans else None,
        "trace_ids": list(dict.fromkeys(s.trace_id for s in spans)),
        "hops": hops,
        "hops_cut": len(spans) == HOP_LIMIT,
        "subscribers": subscribers,
    }


# -- one queue --------------------------------------------------------------------------------


def _queue_status(name: str) -> dict[str, Any] | None:
    if name not in set(catalog.queue_names()) | set(catalog.queues):
        return None  # the broker is asked only about queues the catalog declares
    status = next((q for q in queue_statuses() if q.name == name), None)
    if status is None:
        return None
    return {"depth": status.depth, "broker_consumers": status.consumers, "high": status.high, "low": status.low, "mode": status.mode, "state": status.state, "activations": status.activations}


def queue_view(name: str, *, window: timedelta) -> dict[str, Any] | None:
    """One queue over `window`: the handlers that consume it, each worker process that took
    deliveries from it (its competing consumers) with counts, shares and errors, the skew (the
    busiest one's share over the fair share), and its depth and back-pressure state now. None
    when neither the catalog nor any span of the window knows it."""
    since = _since(window)
    processed = Span.objects.filter(start_time__gte=since, kind=CONSUMER, **{_attr("messaging.destination.name"): name})
    rows = list(
        processed.annotate(worker=KeyTextTransform("flowscope.worker", "attributes"))
        .values("worker")
        .annotate(deliveries=Count("id"), errors=Count("id", filter=Q(status_code=2)), mean_us=Avg("duration_us"))
        .order_by("-deliveries", "worker")
    )
    handlers = sorted(h.consumer for h in catalog.handlers.values() if h.queue == name)
    status = _queue_status(name)
    if not rows and not handlers and status is None:
        return None
    total = sum(r["deliveries"] for r in rows)
    consumers = [
        {
            "worker": r["worker"] or "(unnamed)",
            "deliveries": r["deliveries"],
            "share": r["deliveries"] / total if total else 0.0,
            "errors": r["errors"],
            "mean_ms": round((r["mean_us"] or 0) / 1000, 3),
        }
        for r in rows
    ]
    skew = max(c["share"] for c in consumers) * len(consumers) if consumers else None
    seen_handlers = sorted({c for c in processed.annotate(c=KeyTextTransform("flowscope.consumer", "attributes")).values_list("c", flat=True).distinct() if c})
    return {
        "name": name,
        "window_minutes": int(window.total_seconds() // 60),
        "handlers": sorted(set(handlers) | set(seen_handlers)),
        "deliveries": total,
        "consumers": consumers,
        "fair_share": 1 / len(consumers) if consumers else None,
        "skew": round(skew, 3) if skew is not None else None,
        "skewed": skew is not None and len(consumers) > 1 and skew > SKEW_THRESHOLD,
        "skew_threshold": SKEW_THRESHOLD,
        "backlog": status,
    }


# -- one message type -------------------------------------------------------------------------


def _of_type(name: str, since: datetime) -> QuerySet[Span]:
    return Span.objects.filter(start_time__gte=since, **{_attr("flowscope.message_type"): name})


def _versions(spans: QuerySet[Span], dead: QuerySet[DeadLetter]) -> list[dict[str, Any]]:
    counted = (
        spans.filter(kind__in=[PRODUCER, CONSUMER])
        .annotate(version=KeyTransform("flowscope.schema_version", "attributes"))
        .values("version", "kind")
        .annotate(n=Count("id"), upcast=Count("id", filter=Q(**{f"{_attr(telemetry.UPCAST_TO)}__isnull": False})))
    )
    by_version: dict[int, dict[str, Any]] = {}

    def entry(version: int) -> dict[str, Any]:
        return by_version.setdefault(version, {"version": version, "sent": 0, "processed": 0, "upcast": 0, "dead": 0})

    for row in counted:
        try:
            version = int(row["version"])
        except (TypeError, ValueError):
            continue
        if row["kind"] == PRODUCER:
            entry(version)["sent"] += row["n"]
        else:
            entry(version)["processed"] += row["n"]
            entry(version)["upcast"] += row["upcast"]
    for row in dead.values("schema_version").annotate(n=Count("id")):
        entry(row["schema_version"])["dead"] += row["n"]
    return [by_version[v] for v in sorted(by_version)]


def _responders(name: str, spans: QuerySet[Span], since: datetime) -> list[dict[str, Any]]:
    """A request type's responder (its one handler): requests it processed, the callers' waits
    that timed out or failed, and replies it sent after the caller had stopped waiting."""
    waits = dict(spans.filter(kind=CLIENT).annotate(reply=KeyTextTransform(telemetry.REPLY_OUTCOME, "attributes")).values("reply").annotate(n=Count("id")).values_list("reply", "n"))
    late = LateReply.objects.filter(request_type=name, arrived_at__gte=since)
    responders = []
    for handler in catalog.handlers_for(name):
        processed = spans.filter(kind=CONSUMER, **{_attr("flowscope.consumer"): handler.consumer})
        answered = sum(waits.values())
        responders.append(
            {
                "consumer": handler.consumer,
                "queue": handler.queue,
                "requests": processed.values("message_id").distinct().count(),
                "waits": answered,
                "replied_in_time": waits.get("ok", 0),
                "timeouts": waits.get("timeout", 0),
                "failed": waits.get("failed", 0),
                "timeout_share": waits.get("timeout", 0) / answered if answered else None,
                "late_replies": late.filter(consumer=handler.consumer).count(),
                "recent_late": [
                    {"request_id": str(r.request_id), "arrived_at": r.arrived_at, "late_ms": round((r.arrived_at - r.deadline).total_seconds() * 1000, 1) if r.deadline else None}
                    for r in late.filter(consumer=handler.consumer).order_by("-arrived_at")[:10]
                ],
            }
        )
    return responders


def type_view(name: str, *, window: timedelta) -> dict[str, Any] | None:
    """One message type over `window`: its declared schema versions and upcasters, the versions
    in use (sent, processed, upcast on the way in, dead-lettered), and for a request type its
    responder's timeouts and late replies. None when neither the catalog nor a span knows it."""
    since = _since(window)
    declared = catalog.types.get(name)
    spans = _of_type(name, since)
    dead = DeadLetter.objects.filter(message_type=name, dead_at__gte=since)
    versions = _versions(spans, dead)
    if declared is None and not versions:
        return None
    pattern = declared.pattern if declared else ""
    handlers = catalog.handlers_for(name)
    return {
        "name": name,
        "window_minutes": int(window.total_seconds() // 60),
        "pattern": pattern,
        "declared_versions": declared.versions if declared else [],
        "latest": declared.latest if declared else None,
        "upcasters": [f"v{v} → v{v + 1}" for v in sorted(declared.upcasters)] if declared else [],
        "handlers": [{"consumer": h.consumer, "queue": h.queue, "reads_version": h.target_version(declared) if declared else None} for h in handlers],
        "versions": versions,
        "upcast": sum(v["upcast"] for v in versions),
        "responders": _responders(name, spans, since) if pattern == "request_reply" else [],
    }
