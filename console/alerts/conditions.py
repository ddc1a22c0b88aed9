"""What each kind of rule looks at, through the selectors the console's pages and live frame
already use. A condition answers the subjects on which it holds now, each with what it saw:
{"": {...}} for a rule about one number, {fingerprint: {...}} or {queue: {...}} for a rule that
can hold for several at once (each fires and resolves on its own).

One function per kind, registered in CONDITIONS: a new kind is a function and a line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Min

from console.alerts.models import AlertRule, RuleKind, Scope
from flows.consume.stats import workers_online
from flows.models import DeadLetter, SagaInstance
from flows.operate.selectors import OWN_FLOWS, DeadLetterFilter, dead_letter_groups
from flows.produce.backpressure import queue_statuses
from tracing.selectors import flow_graph
from tracing.sink import sink_status

Observed = dict[str, dict[str, Any]]
Condition = Callable[[AlertRule, datetime, set[str]], Observed]


def _dead_letter_filter(rule: AlertRule, since: datetime, until: datetime | None = None) -> DeadLetterFilter:
    scoped = {Scope.APP: "app", Scope.QUEUE: "queue", Scope.HANDLER: "consumer", Scope.MESSAGE_TYPE: "message_type"}.get(Scope(rule.scope))
    return DeadLetterFilter(since=since, until=until, **({scoped: rule.scope_value} if scoped and rule.scope_value else {}))


def _dead_letters(rule: AlertRule, since: datetime, muted: set[str], until: datetime | None = None):  # type: ignore[no-untyped-def]
    rows = _dead_letter_filter(rule, since, until).apply(DeadLetter.objects.all())
    if rule.scope == Scope.FLOW and rule.scope_value:
        rows = rows.filter(saga__saga_type=rule.scope_value)
    # A muted failure group's dead letters count for no rule while its silence lasts.
    return rows.exclude(fingerprint__in=muted) if muted else rows


def dead_letters(rule: AlertRule, now: datetime, muted: set[str]) -> Observed:
    since = now - timedelta(seconds=rule.window_seconds)
    rows = _dead_letters(rule, since, muted)
    count = rows.count()
    if count < max(rule.threshold, 1):
        return {}
    newest = list(rows.order_by("-dead_at", "-id").values("id", "fingerprint", "message_type", "consumer")[:5])
    return {"": {"dead_letters": count, "window_seconds": rule.window_seconds, "threshold": rule.threshold, "newest": newest}}


def failure_group(rule: AlertRule, now: datetime, muted: set[str]) -> Observed:
    """A group whose first dead letter is in the window (new), or whose count in the window is
    `threshold` times (default 3) its count in the window before."""
    window = timedelta(seconds=rule.window_seconds)
    factor = rule.threshold or 3.0
    # A muted group still fires here: its alert is recorded, marked muted, and sent nowhere.
    current = dead_letter_groups(_dead_letter_filter(rule, now - window), limit=200)
    if rule.scope == Scope.FLOW and rule.scope_value:
        in_flow = set(_dead_letters(rule, now - window, set()).values_list("fingerprint", flat=True).distinct())
        current = [g for g in current if g["fingerprint"] in in_flow]
    fingerprints = [g["fingerprint"] for g in current]
    before = dict(_dead_letters(rule, now - 2 * window, set(), until=now - window).filter(fingerprint__in=fingerprints).values_list("fingerprint").annotate(n=Count("id")).order_by())
    first = dict(DeadLetter.objects.filter(fingerprint__in=fingerprints).values_list("fingerprint").annotate(at=Min("first_dead_at")).order_by())
    held: Observed = {}
    for group in current:
        fingerprint, count, previous = group["fingerprint"], group["count"], before.get(group["fingerprint"], 0)
        new = first.get(fingerprint) is not None and first[fingerprint] >= now - window
        if new or (previous and count >= factor * previous):
            held[fingerprint] = {
                "fingerprint": fingerprint,
                "why": "new" if new else "rate jumped",
                "count": count,
                "count_window_before": previous,
                "error_type": group["error_type"],
                "error_message": group["error_message"],
                "message_type": group["message_type"],
                "consumer": group["consumer"],
            }
    return held


def _handler_edges(rule: AlertRule, now: datetime) -> list[dict[str, Any]]:
    # The graph's app filter: None for every app, "" for Flowscope's own flows. Not console.live's
    # graph_app: the live frame may show silences one day, and alerting must not import it back.
    app = ("" if rule.scope_value == OWN_FLOWS else rule.scope_value) if rule.scope == Scope.APP and rule.scope_value else None
    edges = []
    for edge in flow_graph(until=now, window=timedelta(seconds=rule.window_seconds), app=app)["edges"]:
        target = edge["target"].split("|", 1)[-1]
        if not target.startswith("handler:") or not edge["count"] or edge.get("kind", "message") != "message":  # a requeue's link is no execution
            continue
        handler, source = target.split(":", 1)[1], edge["source"].split("|", 1)[-1]
        if rule.scope == Scope.HANDLER and rule.scope_value and handler != rule.scope_value:
            continue
        if rule.scope == Scope.QUEUE and rule.scope_value and rule.scope_value not in (source.removeprefix("queue:"), (edge["queue"] or "").split("|", 1)[-1].removeprefix("queue:")):
            continue
        edges.append({**edge, "handler": handler})
    return edges


def error_rate(rule: AlertRule, now: datetime, muted: set[str]) -> Observed:
    return {
        e["target"]: {"handler": e["handler"], "app": e["app"], "error_rate_pct": round(e["error_rate"] * 100, 2), "count": e["count"], "errors": e["errors"], "threshold_pct": rule.threshold}
        for e in _handler_edges(rule, now)
        if e["error_rate"] * 100 > rule.threshold
    }


def p95_latency(rule: AlertRule, now: datetime, muted: set[str]) -> Observed:
    return {
        e["target"]: {"handler": e["handler"], "app": e["app"], "p95_ms": e["p95_ms"], "count": e["count"], "threshold_ms": rule.threshold}
        for e in _handler_edges(rule, now)
        if e["p95_ms"] is not None and e["p95_ms"] > rule.threshold
    }


def _queues(rule: AlertRule) -> list[Any]:
    statuses = queue_statuses()
    return [q for q in statuses if q.name == rule.scope_value] if rule.scope == Scope.QUEUE and rule.scope_value else statuses


def queue_depth(rule: AlertRule, now: datetime, muted: set[str]) -> Observed:
    held: Observed = {}
    for q in _queues(rule):
        limit = rule.threshold or q.high
        if limit and q.depth >= limit:
            held[q.name] = {"queue": q.name, "depth": q.depth, "limit": limit, "high": q.high, "state": q.state}
    return held


def no_consumer(rule: AlertRule, now: datetime, muted: set[str]) -> Observed:
    """RabbitMQ says how many consumers a queue has; on Redis nobody does, so a queue counts as
    unconsumed when no worker of Flowscope's has sent a heartbeat."""
    online = len(workers_online())
    held: Observed = {}
    for q in _queues(rule):
        consumers = q.consumers if q.consumers is not None else online
        if consumers == 0:
            held[q.name] = {"queue": q.name, "depth": q.depth, "consumers": q.consumers, "workers_online": online}
    return held


def saga_stuck(rule: AlertRule, now: datetime, muted: set[str]) -> Observed:
    limit = rule.threshold or 300
    rows = SagaInstance.objects.filter(state__in=[SagaInstance.State.RUNNING, SagaInstance.State.COMPENSATING], updated_at__lt=now - timedelta(seconds=limit))
    if rule.scope == Scope.FLOW and rule.scope_value:
        rows = rows.filter(saga_type=rule.scope_value)
    count = rows.count()
    if not count:
        return {}
    oldest = [{"id": str(s.id), "saga_type": s.saga_type, "state": s.state, "step": s.current_step, "since": s.updated_at.isoformat()} for s in rows.order_by("updated_at")[:5]]
    return {"": {"stuck": count, "threshold_seconds": limit, "oldest": oldest}}


def spans(rule: AlertRule, now: datetime, muted: set[str]) -> Observed:
    """Drops are a counter: the rule remembers (in its memory) what it read over the window and
    holds while the counter moved within it. A backlog over `threshold` (default 10,000) holds too."""
    status = sink_status()
    seen = [(t, d) for t, d in rule.memory.get("dropped_seen", []) if t >= time.time() - rule.window_seconds]
    seen.append((time.time(), status["dropped"]))
    rule.memory["dropped_seen"] = seen[-50:]
    dropped_in_window = status["dropped"] - seen[0][1]
    limit = rule.threshold or 10_000
    if dropped_in_window > 0 or status["pending"] > limit:
        return {"": {"pending": status["pending"], "dropped_total": status["dropped"], "dropped_in_window": dropped_in_window, "pending_limit": limit}}
    return {}


CONDITIONS: dict[str, Condition] = {
    RuleKind.DEAD_LETTERS: dead_letters,
    RuleKind.FAILURE_GROUP: failure_group,
    RuleKind.ERROR_RATE: error_rate,
    RuleKind.P95_LATENCY: p95_latency,
    RuleKind.QUEUE_DEPTH: queue_depth,
    RuleKind.SAGA_STUCK: saga_stuck,
    RuleKind.NO_CONSUMER: no_consumer,
    RuleKind.SPANS: spans,
}


def summary(rule: AlertRule, subject: str, seen: dict[str, Any]) -> str:
    """One line for the notice's title and the history."""
    scope = f" ({rule.scope} {rule.scope_value})" if rule.scope != Scope.ALL and rule.scope_value else ""
    detail = {
        RuleKind.DEAD_LETTERS: lambda: f"{seen.get('dead_letters')} dead letters in {rule.window_seconds} s",
        RuleKind.FAILURE_GROUP: lambda: f"failure group {subject} {seen.get('why')}: {seen.get('count')} ({seen.get('error_type')})",
        RuleKind.ERROR_RATE: lambda: f"{seen.get('handler')} error rate {seen.get('error_rate_pct')} %",
        RuleKind.P95_LATENCY: lambda: f"{seen.get('handler')} p95 {seen.get('p95_ms')} ms",
        RuleKind.QUEUE_DEPTH: lambda: f"queue {subject} depth {seen.get('depth')} (limit {seen.get('limit')})",
        RuleKind.SAGA_STUCK: lambda: f"{seen.get('stuck')} sagas unchanged for over {seen.get('threshold_seconds')} s",
        RuleKind.NO_CONSUMER: lambda: f"no worker consuming queue {subject}",
        RuleKind.SPANS: lambda: f"spans: {seen.get('dropped_in_window')} dropped, {seen.get('pending')} waiting",
    }[RuleKind(rule.kind)]()
    return f"{rule.name}{scope}: {detail}"[:500]
