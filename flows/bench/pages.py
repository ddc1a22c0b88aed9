"""Server time of the console's heaviest pages at scale: the filtered dead-letter list with a
million dead letters, and a trace of 20,000 spans. Rows are bulk-inserted (they need not pass
through the workers) and removed afterwards."""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test import Client
from django.test.utils import override_settings
from django.utils import timezone

from flows.models import DeadLetter
from tracing.collector import SPAN_COLUMNS, _insert
from tracing.models import Span

MARK = "bench.page"  # every row this module makes carries it, so cleanup takes exactly those
QUEUES = [f"bench.q{i}" for i in range(20)]


def _client() -> Client:
    user, _ = get_user_model().objects.get_or_create(username="flowscope-bench", defaults={"is_superuser": True})
    client = Client()
    client.force_login(user)
    return client


def _timed(client: Client, url: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(url, secure=True)
        times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}")
    return times


def _p95(values: list[float]) -> float:
    return round(statistics.quantiles(values, n=20)[-1], 1) if len(values) >= 2 else round(values[0], 1)


def dead_letter_page_ms(n: int, progress: Callable[[str], None], runs: int = 40) -> dict[str, float]:
    columns = ("message_id", "message_type", "schema_version", "correlation_id", "causation_id", "queue", "consumer", "pattern", "envelope", "error_type",
               "error_message", "traceback", "fingerprint", "poison", "attempts", "state", "series", "times_dead", "first_dead_at", "dead_at", "trace_id", "requeue_trace_id", "requeued_by", "discarded_by", "discard_reason")
    now = timezone.now()
    as_db = connection.ops.adapt_datetimefield_value if connection.vendor == "sqlite" else (lambda t: t)
    states = ["dead"] * 6 + ["resolved", "requeued", "discarded"]
    batch = 20_000
    for start in range(0, n, batch):
        rows = []
        for i in range(start, min(start + batch, n)):
            at = as_db(now - timedelta(seconds=i))
            rows.append((str(uuid.uuid4()) if connection.vendor == "postgresql" else uuid.uuid4().hex, MARK, 1, f"order-{i}", "", QUEUES[i % 20], f"handler_{i % 7}", "fire_and_forget",
                         '{"type": "bench.page", "payload": {}}', "builtins.ValueError", "bench", "", f"{i % 50:016x}", False, 3, states[i % 9], 0, 1, at, at, "", "", "", "", ""))
        with transaction.atomic():
            _insert(DeadLetter._meta.db_table, columns, rows)
        progress(f"dead letters: {min(start + batch, n)}/{n} inserted")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE" if connection.vendor == "sqlite" else f"ANALYZE {DeadLetter._meta.db_table}")
    try:
        with override_settings(ALLOWED_HOSTS=[*settings.ALLOWED_HOSTS, "testserver"]):
            client = _client()
            page = _timed(client, "/deadletters/?state=dead&queue=bench.q7", runs)
            deep_cursor = client.get("/api/v1/deadletters?state=dead&queue=bench.q7&limit=50", secure=True).json()["next_cursor"]
            api = _timed(client, f"/api/v1/deadletters?state=dead&queue=bench.q7&limit=50&cursor={deep_cursor}", runs)
    finally:
        progress("dead letters: cleaning up")
        DeadLetter.objects.filter(message_type=MARK)._raw_delete(DeadLetter.objects.db)
    return {"p4_deadletters": n, "p4_deadletter_page_p95_ms": _p95(page), "p4_deadletter_api_page2_p95_ms": _p95(api)}


def trace_page_ms(spans: int, progress: Callable[[str], None], runs: int = 5) -> dict[str, float]:
    trace_id = os.urandom(16).hex()
    start = timezone.now()
    as_db = connection.ops.adapt_datetimefield_value if connection.vendor == "sqlite" else (lambda t: t)
    root = os.urandom(8).hex()
    rows, parents = [], [root]
    for i in range(spans):
        span_id = root if i == 0 else os.urandom(8).hex()
        parent = "" if i == 0 else parents[(i * 7919) % len(parents)]
        rows.append((trace_id, span_id, parent, f"process bench.step{i % 13}", 4, "bench", as_db(start + timedelta(microseconds=i * 150)), 120, 1, "",
                     '{"messaging.destination.name": "bench.q", "flowscope.attempt": 1}', "[]", "[]", "", "", ""))
        if i % 3 == 0:
            parents.append(span_id)
    with transaction.atomic():
        _insert(Span._meta.db_table, SPAN_COLUMNS, rows)
    progress(f"trace: {spans} spans inserted")
    try:
        with override_settings(ALLOWED_HOSTS=[*settings.ALLOWED_HOSTS, "testserver"]):
            client = _client()
            page = [a + b for a, b in zip(_timed(client, f"/traces/{trace_id}/", runs), _timed(client, f"/api/v1/traces/{trace_id}?limit=500", runs))]
    finally:
        Span.objects.filter(trace_id=trace_id)._raw_delete(Span.objects.db)
    return {"p5_trace_spans": spans, "p5_trace_20k_ms": round(statistics.median(page), 1)}
