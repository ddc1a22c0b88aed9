"""Until the console pages land: a status page for the demo and a health check for scripts."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from flows.backpressure import queue_statuses
from flows.models import DeadLetter, SagaInstance
from flows.redis import get_redis


@login_required
def home(request: HttpRequest) -> HttpResponse:
    context = {
        "dead_letters": dict(DeadLetter.objects.values_list("state").annotate(n=Count("id")).order_by()),
        "sagas": dict(SagaInstance.objects.values_list("state").annotate(n=Count("id")).order_by()),
        "queues": queue_statuses(),
    }
    return render(request, "console/home.html", context)


def healthz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    try:
        get_redis().ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        checks["redis"] = f"error: {exc}"
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["database"] = f"error: {exc}"
    healthy = all(v == "ok" for v in checks.values())
    return JsonResponse({"status": "ok" if healthy else "degraded", "checks": checks}, status=200 if healthy else 503)
