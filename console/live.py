"""The live state the console pushes over the websocket: one snapshot, whole each time, so a
frame the channel layer drops costs nothing but a second of freshness.

Heavier parts (dead-letter counts and groups) are recomputed at most every few seconds.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from console.alerts.silences import group_silences
from flows.consume.stats import workers_online
from flows.models import RequeueJob
from flows.operate.live_selectors import live_summary
from flows.operate.selectors import OWN_FLOWS, DeadLetterFilter, dead_letter_counts, dead_letter_groups, saga_counts
from flows.produce.backpressure import queue_statuses
from tracing import histogram
from tracing.models import EdgeStat
from tracing.selectors import flow_graph
from tracing.sink import sink_status

GROUP = "live"
WINDOW = timedelta(minutes=15)
_cache: dict[str, tuple[float, Any]] = {}


def _cached(name: str, seconds: float, compute: Callable[[], Any]) -> Any:
    now = time.monotonic()
    hit = _cache.get(name)
    if hit is None or now - hit[0] > seconds:
        hit = (now, compute())
        _cache[name] = hit
    return hit[1]


def graph_app(chosen: str) -> str | None:
    """The flow graph's app filter from a page's or request's ?app=: None for every app, "" for
    Flowscope's own flows (chosen as OWN_FLOWS, as on the dead-letter page), else the app."""
    if not chosen:
        return None
    return "" if chosen == OWN_FLOWS else chosen


def _newest_groups() -> list[dict[str, Any]]:
    """The day's five biggest causes, each with the silence muting it, if any."""
    groups = dead_letter_groups(DeadLetterFilter(since=timezone.now() - timedelta(hours=24), state="dead"), limit=5)
    muted = group_silences(g["fingerprint"] for g in groups)
    return [{**g, "first_seen": g["first_seen"].isoformat(), "last_seen": g["last_seen"].isoformat(), "silence": muted.get(g["fingerprint"])} for g in groups]


def series(window: timedelta = WINDOW) -> dict[str, Any]:
    """Messages handled a second, error rate and p95 per bucket over the window (handler edges)."""
    since = timezone.now() - window
    buckets: dict[Any, dict[str, Any]] = {}
    for row in EdgeStat.objects.filter(bucket__gte=since, target__startswith="handler:").order_by("bucket"):
        b = buckets.setdefault(row.bucket, {"count": 0, "errors": 0, "histogram": histogram.empty()})
        b["count"] += row.count
        b["errors"] += row.errors
        histogram.merge(b["histogram"], row.histogram)
    size = settings.TRACING_EDGE_BUCKET_SECONDS
    times = sorted(buckets)
    return {
        "t": [t.isoformat() for t in times],
        "rate": [round(buckets[t]["count"] / size, 2) for t in times],
        "error_rate": [round(buckets[t]["errors"] / buckets[t]["count"], 4) if buckets[t]["count"] else 0 for t in times],
        "p95_ms": [histogram.percentile(buckets[t]["histogram"], 0.95) for t in times],
    }


def snapshot() -> dict[str, Any]:
    recent = series()
    last = {k: v[-2:] for k, v in recent.items()}  # the newest bucket is still filling; use the one before too
    jobs = [
        {"id": j.pk, "state": j.state, "total": j.total, "done": j.done, "skipped": j.skipped, "progress": round(j.progress, 4)}
        for j in RequeueJob.objects.filter(created_at__gte=timezone.now() - timedelta(hours=1)).order_by("-id")[:10]
    ]
    return {
        "at": timezone.now().isoformat(),
        "series": recent,
        "now": {
            "rate": max(last["rate"], default=0),
            "error_rate": last["error_rate"][-1] if last["error_rate"] else 0,
            "p95_ms": last["p95_ms"][-1] if last["p95_ms"] else None,
        },
        "queues": [dataclasses.asdict(q) for q in queue_statuses()],
        "dead_letters": _cached(
            "dead_letters",
            3.0,
            lambda: {"counts": dead_letter_counts(), "groups": _newest_groups()},
        ),
        "sagas": _cached("sagas", 3.0, saga_counts),
        "workers": workers_online(),
        "attached": _cached("attached", 0.5, live_summary),  # attached apps' workers and a mark that moves with their tasks
        "graph": flow_graph(window=timedelta(minutes=5)),
        "jobs": jobs,
        "sink": sink_status(),
    }
