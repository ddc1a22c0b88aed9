"""Server time of the console's heaviest pages at scale: the filtered dead-letter list with a
million dead letters, and a trace of 20,000 spans (and that page in the browser, where Chromium
is). Rows are bulk-inserted (they need not pass through the workers) and removed afterwards."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test import Client
from django.test.utils import override_settings
from django.utils import timezone

from flows.models import DeadLetter
from tooling.bench import trace_browser
from tooling.bench.rows import dead_letter_row, insert_dead_letters
from tracing.bulk import db_datetime, insert_rows
from tracing.collector import SPAN_COLUMNS
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
    now = timezone.now()
    states = ["dead"] * 6 + ["resolved", "requeued", "discarded"]
    batch = 20_000
    for start in range(0, n, batch):
        insert_dead_letters(
            [
                dead_letter_row(
                    message_type=MARK,
                    queue=QUEUES[i % 20],
                    consumer=f"handler_{i % 7}",
                    envelope='{"type": "bench.page", "payload": {}}',
                    fingerprint=f"{i % 50:016x}",
                    state=states[i % 9],
                    at=now - timedelta(seconds=i),
                    correlation_id=f"order-{i}",
                )
                for i in range(start, min(start + batch, n))
            ]
        )
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
    root = os.urandom(8).hex()
    rows, parents = [], [root]
    for i in range(spans):
        span_id = root if i == 0 else os.urandom(8).hex()
        parent = "" if i == 0 else parents[(i * 7919) % len(parents)]
        rows.append(
            (
                trace_id,
                span_id,
                parent,
                f"process bench.step{i % 13}",
                4,
                "bench",
                db_datetime(start + timedelta(microseconds=i * 150)),
                120,
                1,
                "",
                '{"messaging.destination.name": "bench.q", "flowscope.attempt": 1}',
                "[]",
                "[]",
                "",
                "",
                "",
            )
        )
        if i % 3 == 0:
            parents.append(span_id)
    with transaction.atomic():
        insert_rows(Span._meta.db_table, SPAN_COLUMNS, rows)
    progress(f"trace: {spans} spans inserted")
    try:
        with override_settings(ALLOWED_HOSTS=[*settings.ALLOWED_HOSTS, "testserver"]):
            client = _client()
            # The page's HTML, then the whole tree as the page asks for it (trace.js).
            page = [a + b for a, b in zip(_timed(client, f"/traces/{trace_id}/", runs), _timed(client, f"/api/v1/traces/{trace_id}?limit=20000&attributes=false", runs))]
        figures = {"p5_trace_spans": spans, "p5_trace_20k_ms": round(statistics.median(page), 1)}
        if trace_browser.installed():
            figures.update(trace_browser.trace_page_in_browser_ms(trace_id, client, progress))
        else:
            progress(f"trace page in the browser: skipped, {trace_browser.NOT_INSTALLED}")
    finally:
        Span.objects.filter(trace_id=trace_id)._raw_delete(Span.objects.db)
    return figures
