"""Machine endpoints: a health check for load balancers, Prometheus metrics for scrapers."""

from __future__ import annotations

from celery import current_app
from django.db import connection
from django.db.models import Count, Sum
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_safe

from console.alerts.models import Alert, AlertRule, AlertState, Delivery, DeliveryState
from console.api.auth import principal_of
from console.models import Role
from flows.consume.idempotency import duplicate_counts
from flows.consume.stats import processed_totals, workers_online
from flows.core.brokers import RABBITMQ, broker_kind
from flows.models import DeadLetter, SagaInstance
from flows.produce.backpressure import queue_statuses
from tracing.redis import get_redis
from tracing.sink import sink_status


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    try:
        get_redis().ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        checks["redis"] = f"error: {exc}"
    if broker_kind() == RABBITMQ:  # on Redis the check above is the broker's too
        try:
            with current_app.connection_for_write() as broker:
                broker.ensure_connection(max_retries=1, timeout=2)
            checks["broker"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["broker"] = f"error: {exc}"
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["database"] = f"error: {exc}"
    healthy = all(v == "ok" for v in checks.values())
    return JsonResponse({"status": "ok" if healthy else "degraded", "checks": checks}, status=200 if healthy else 503)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format; a viewer's session or a bearer API token (any role)."""
    principal = principal_of(request)
    if principal is None or not principal.can(Role.VIEWER):
        return HttpResponse("authentication required: a session or 'Authorization: Bearer <token>'\n", status=401, content_type="text/plain")
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            rendered = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{rendered}}} {value}" if rendered else f"{name} {value}")

    totals = processed_totals()
    metric("flowscope_deliveries_total", "counter", "Deliveries by pattern, handler and outcome.", [({"pattern": p, "consumer": c, "outcome": o}, n) for (p, c, o), n in sorted(totals.items())])
    metric("flowscope_duplicates_total", "counter", "Redeliveries recognised as duplicates, by handler.", [({"consumer": c}, n) for c, n in sorted(duplicate_counts().items())])
    metric("flowscope_dead_letters", "gauge", "Dead letters by state.", [({"state": s}, n) for s, n in sorted(DeadLetter.objects.values_list("state").annotate(n=Count("id")).order_by())])
    metric("flowscope_requeues_total", "counter", "Requeues of dead letters.", [({}, DeadLetter.objects.aggregate(n=Sum("series"))["n"] or 0)])
    metric(
        "flowscope_sagas",
        "gauge",
        "Sagas by type and state.",
        [({"saga_type": t, "state": s}, n) for t, s, n in SagaInstance.objects.values_list("saga_type", "state").annotate(n=Count("id")).order_by()],
    )
    statuses = queue_statuses()
    metric("flowscope_queue_depth", "gauge", "Messages waiting per queue.", [({"queue": q.name}, q.depth) for q in statuses])
    metric("flowscope_queue_consumers", "gauge", "Consumers attached per queue (RabbitMQ only).", [({"queue": q.name}, q.consumers) for q in statuses if q.consumers is not None])
    metric("flowscope_queue_throttled", "gauge", "1 while back-pressure throttles a queue.", [({"queue": q.name}, int(q.state == "throttled")) for q in statuses])
    sink = sink_status()
    metric("flowscope_span_ingest_pending", "gauge", "Spans waiting for the collector (ingest lag).", [({}, sink["pending"])])
    metric("flowscope_spans_dropped_total", "counter", "Spans dropped at the sink's bound or with Redis away.", [({}, sink["dropped"])])
    metric("flowscope_workers_online", "gauge", "Worker processes with a recent heartbeat.", [({}, len(workers_online()))])
    firing = dict(Alert.objects.filter(state=AlertState.FIRING).values_list("rule_id").annotate(n=Count("id")).order_by())
    rules = AlertRule.objects.order_by("id").values_list("id", "name", "kind")
    metric("flowscope_alerts_firing", "gauge", "Alerts firing now, per alert rule.", [({"rule_id": str(i), "rule": n, "kind": k}, firing.get(i, 0)) for i, n, k in rules])
    failed = Delivery.objects.filter(state=DeliveryState.FAILED).values_list("channel_id", "channel__name").annotate(n=Count("id")).order_by()
    metric("flowscope_alert_delivery_failures_total", "counter", "Alert notices that failed for good, per channel.", [({"channel_id": str(c), "channel": n}, k) for c, n, k in failed])
    return HttpResponse("\n".join(lines) + "\n", content_type="text/plain; version=0.0.4")
