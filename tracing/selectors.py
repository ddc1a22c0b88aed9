"""Reads the console needs: a trace as a tree, the traces of a message, conversation or saga,
and the flow graph over a time window (from the aggregates, never from the span table)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Max, Min, Q
from django.utils import timezone

from tracing import histogram
from tracing.aggregates import LINK, bucket_start, window_totals
from tracing.models import Span
from tracing.trace_tree import SpanNode, TraceTree, trace_tree  # noqa: F401  (the tree has a module of its own; read from here too)


def traces_for(*, correlation_id: str = "", message_id: str = "", saga_id: str = "", app: str = "", limit: int = 100) -> list[dict[str, Any]]:
    """The traces that hold a span of this conversation, message or saga (made by `app`, if
    given: an attached app's spans have its name as their service); newest first."""
    if not (correlation_id or message_id or saga_id):
        raise ValueError("name a correlation id, a message id or a saga id")
    match = Q()
    if correlation_id:
        match |= Q(correlation_id=correlation_id)
    if message_id:
        match |= Q(message_id=message_id)
    if saga_id:
        match |= Q(saga_id=saga_id)
    spans = Span.objects.filter(match)
    if app:
        spans = spans.filter(service=app)
    rows = spans.values("trace_id").annotate(first=Min("start_time"), last=Max("start_time"), spans=Count("id"), errors=Count("id", filter=Q(status_code=2))).order_by("-first")[:limit]
    return list(rows)


def recent_traces(*, app: str, window: timedelta = timedelta(hours=24), limit: int = 50, scan: int = 5000) -> list[dict[str, Any]]:
    """An attached app's latest traces (those of its spans that started last, within `window`),
    newest first, each counted whole. At most `scan` of its spans are read to find them, walking
    the start-time index: the cost does not grow with the table."""
    since = timezone.now() - window
    latest = Span.objects.filter(service=app, start_time__gte=since).order_by("-start_time").values_list("trace_id", flat=True)[:scan]
    ids = list(dict.fromkeys(latest))[:limit]
    if not ids:
        return []
    rows = (
        Span.objects.filter(trace_id__in=ids)
        .values("trace_id")
        .annotate(first=Min("start_time"), last=Max("start_time"), spans=Count("id"), errors=Count("id", filter=Q(status_code=2)))
        .order_by("-first")
    )
    return list(rows)


def node_id(app: str, name: str) -> str:
    """A graph node's id: `kind:name` for Flowscope's own flows, `app|kind:name` for an attached
    app's, so two apps' queues (or tasks) of one name are two nodes."""
    return f"{app}|{name}" if app else name


def flow_graph(*, since: datetime | None = None, until: datetime | None = None, window: timedelta = timedelta(minutes=15), app: str | None = None) -> dict[str, Any]:
    """Nodes (senders, queues, handlers) and edges with rate, error rate, dead-letter rate,
    p50 and p95 latency and p95 queue wait over [since, until), whole buckets. `app`: None for
    every app, "" for Flowscope's own flows, else that attached app's edges only.

    An edge with a `queue` is an attached app's task-to-task edge (sender -> handler through that
    queue); its queue is a node too, so the edge can be drawn through it."""
    until = until or timezone.now()
    since = since or until - window
    first = bucket_start(int(since.timestamp() * 1e9))
    seconds = max((until - first).total_seconds(), 1.0)
    merged = window_totals(first, until, app)
    edges, nodes = [], {}
    for (edge_app, source, target, through), e in sorted(merged.items()):
        link = through[len(LINK) :] if through.startswith(LINK) else ""  # a hop joined by span links, not a queue
        queue = "" if link else through
        names = [source, target] + ([f"queue:{queue}"] if queue else [])
        for name in names:
            nodes[node_id(edge_app, name)] = {"id": node_id(edge_app, name), "kind": name.split(":", 1)[0], "label": name.split(":", 1)[-1], "app": edge_app}
        edges.append(
            {
                "source": node_id(edge_app, source),
                "target": node_id(edge_app, target),
                "app": edge_app,
                "kind": "link" if link else "message",
                "link": link or None,
                "queue": node_id(edge_app, f"queue:{queue}") if queue else None,
                "count": e["count"],
                "errors": e["errors"],
                "dead": e["dead"],
                "rate_per_s": e["count"] / seconds,
                "error_rate": e["errors"] / e["count"] if e["count"] else 0.0,
                "dead_rate": e["dead"] / e["count"] if e["count"] else 0.0,
                "p50_ms": histogram.percentile(e["histogram"], 0.50),
                "p95_ms": histogram.percentile(e["histogram"], 0.95),
                "queue_wait_p95_ms": histogram.percentile(e["waits"], 0.95),
            }
        )
    return {"since": first.isoformat(), "until": until.isoformat(), "nodes": [nodes[k] for k in sorted(nodes)], "edges": edges}
