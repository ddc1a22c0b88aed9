"""p9: how fast the trace search answers on a big store. Spans and their traces' summaries are
written in bulk (COPY on PostgreSQL), as the collector would have left them but without going
through it, then a set of filtered searches is asked of the API, each several times; the
figure is the 95th percentile of all their server times. Rows are removed afterwards."""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.test.utils import override_settings
from django.utils import timezone

from tooling.bench.pages import _client, _p95
from tracing import summaries
from tracing.bulk import insert_rows
from tracing.collector import SPAN_COLUMNS, to_rows
from tracing.models import Span, TraceSummary

MARK = "beec"  # every bench trace id starts so: cleanup takes exactly those, on the trace id index
SERVICES = [f"svc-{i}" for i in range(12)]
APPS = ["shop", "billing", "shipping", ""]
TYPES = [f"type-{i}" for i in range(30)]
QUEUES = [f"q-{i}" for i in range(20)]
HANDLERS = [f"h-{i}" for i in range(40)]
TIERS = ["gold", "silver", "bronze", "bronze", "bronze"]
SPREAD_S = 7 * 86400  # traces started over the last week
CHUNK = 50_000  # spans a bulk insert


def _trace(rng: random.Random, n: int, start: int) -> list[dict[str, Any]]:
    """A trace of `n` spans from `start` (ns): a send, then process spans and their calls, a
    few services, an error in about 3 of 100."""
    trace_id = MARK + os.urandom(14).hex()
    app = rng.choice(APPS)
    services = rng.sample(SERVICES, rng.randint(1, 4))
    failing = rng.random() < 0.03
    common = {"order.id": trace_id[-12:], "customer.tier": rng.choice(TIERS), **({"flowscope.app": app} if app else {})}
    spans, parent, at = [], "", start
    for i in range(n):
        mtype, queue, handler = rng.choice(TYPES), rng.choice(QUEUES), rng.choice(HANDLERS)
        kind = 3 if i == 0 else rng.choice((4, 4, 2, 0))
        duration = int(rng.lognormvariate(2.0, 1.2) * 1_000_000)  # ms, median about 7
        span_id = os.urandom(8).hex()
        attributes: dict[str, Any] = {**common, "messaging.destination.name": queue, "flowscope.message_type": mtype}
        if kind == 4:
            attributes.update({"flowscope.consumer": handler, "flowscope.attempt": 1 if rng.random() < 0.94 else rng.choice((2, 3)), "flowscope.queue_wait_ms": round(rng.random() * 20, 2)})
        name = {3: f"send {mtype}", 4: f"process {mtype}", 2: "http call", 0: "db query"}[kind]
        error = failing and i == n - 1
        spans.append(
            {
                "t": trace_id,
                "s": span_id,
                "p": parent,
                "n": name,
                "k": kind,
                "sv": services[i % len(services)],
                "st": at,
                "en": at + duration,
                "sc": 2 if error else 1,
                "sm": "",
                "e": [],
                "l": [],
                "a": attributes,
            }
        )
        parent = span_id if kind != 0 else parent
        at += duration // 3
    return spans


def build_store(n: int, progress: Callable[[str], None], seed: int = 9) -> tuple[list[str], int]:
    """`n` spans in traces of 4 to 16; returns some of their trace ids, and how many traces."""
    rng, written, kept, traces = random.Random(seed), 0, [], 0
    # Oldest first, as the collector stores them: traces arrive in about the order they start.
    start, step = time.time_ns() - SPREAD_S * 1_000_000_000, SPREAD_S * 1_000_000_000 * 10 // n
    while written < n:
        chunk: list[dict[str, Any]] = []
        while len(chunk) < CHUNK and written + len(chunk) < n:
            start += rng.randrange(2 * step)
            chunk += _trace(rng, min(rng.randint(4, 16), n - written - len(chunk)), start)
        kept.append(chunk[0]["t"])
        rows, _ = to_rows(chunk)
        rows.sort()
        folded = summaries.partials(chunk)
        traces += len(folded)
        with transaction.atomic():
            insert_rows(Span._meta.db_table, SPAN_COLUMNS, rows)
            insert_rows(TraceSummary._meta.db_table, summaries.COLUMNS, summaries.rows_of(folded))
        written += len(chunk)
        progress(f"trace search: {written}/{n} spans inserted")
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("ANALYZE")
        else:
            cursor.execute(f"ANALYZE {Span._meta.db_table}")
            cursor.execute(f"ANALYZE {TraceSummary._meta.db_table}")
    return kept, traces


def searches(known: list[str]) -> dict[str, str]:
    """The searches measured: single filters, mixes, both orders, rare and common attributes,
    a time window and a second page."""
    recent = (timezone.now() - timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "latest": "",
        "service": "service=svc-3",
        "errors": "status=error",
        "service+errors": "service=svc-5&status=error",
        "queue+min_duration": "queue=q-7&min_duration_ms=200",
        "type by duration": "message_type=type-11&sort=duration",
        "app+handler": "app=billing&handler=h-12",
        "rare attribute": f"attr=order.id={known[len(known) // 2][-12:]}",
        "attribute+service": "attr=customer.tier=gold&service=svc-2",
        "attempt+errors": "attr=flowscope.attempt=3&status=error",
        "window+span name": f"since={recent}&span_name=process%20type-4",
    }


def ask(known: list[str], progress: Callable[[str], None], runs: int) -> dict[str, list[float]]:
    """Each search asked of the API `runs` times (after one unmeasured asking); ms each time."""
    times: dict[str, list[float]] = {}
    with override_settings(ALLOWED_HOSTS=[*settings.ALLOWED_HOSTS, "testserver"]):
        client = _client()
        asked = searches(known)
        second = client.get("/api/v1/traces?service=svc-3&limit=50", secure=True).json()["next_cursor"]
        asked["service, page 2"] = f"service=svc-3&cursor={second}"
        for name, query in asked.items():
            url = f"/api/v1/traces?{query}&limit=50" if query else "/api/v1/traces?limit=50"
            client.get(url, secure=True)  # warm: the first asking parses and plans
            times[name] = []
            for _ in range(runs):
                t0 = time.perf_counter()
                response = client.get(url, secure=True)
                times[name].append((time.perf_counter() - t0) * 1000)
                if response.status_code != 200:
                    raise RuntimeError(f"{url} answered {response.status_code}: {response.content[:200]!r}")
            progress(f"trace search: {name} asked {runs} times")
    return times


def figures(times: dict[str, list[float]]) -> dict[str, Any]:
    every = [t for ts in times.values() for t in ts]
    return {
        "p9_trace_search_p95_ms": _p95(every),
        "p9_trace_search_median_ms": round(statistics.median(every), 1),
        "p9_search_p95_ms": {name: _p95(ts) for name, ts in times.items()},
    }


def trace_search_p95_ms(n: int, progress: Callable[[str], None], runs: int = 10) -> dict[str, Any]:
    started = time.monotonic()
    known, traces = build_store(n, progress)
    built_s = time.monotonic() - started
    try:
        times = ask(known, progress, runs)
    finally:
        progress("trace search: cleaning up")
        Span.objects.filter(trace_id__startswith=MARK)._raw_delete(Span.objects.db)
        TraceSummary.objects.filter(trace_id__startswith=MARK)._raw_delete(TraceSummary.objects.db)
    return {"p9_spans": n, "p9_traces": traces, **figures(times), "p9_store_build_s": round(built_s, 1)}
