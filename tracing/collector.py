"""The collector: drains the span sink into the database and keeps the flow graph's aggregates.

1. Read a few batches from the stream through a consumer group (first our own unacknowledged
   ones, left by a crash, then new ones; also those another collector left idle too long).
2. Skip spans already stored (a batch redelivered after a crash, an OTLP client's retry), so
   the aggregates count each span once.
3. Insert spans and links and update the aggregates in one transaction.
4. Acknowledge and delete the batches, and lower the sink's pending count.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from datetime import datetime, timezone
from typing import Any

import redis
from django.db import transaction

from flows.redis import get_redis
from tracing import aggregates
from tracing.models import Span, SpanLink
from tracing.sink import GROUP, PENDING, STREAM

log = logging.getLogger(__name__)
RECLAIM_IDLE_MS = 30_000


def _time(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, timezone.utc)


def _text(value: Any, limit: int) -> str:
    return str(value or "")[:limit]


def to_rows(spans: list[dict[str, Any]]) -> tuple[list[Span], list[SpanLink]]:
    rows, links = [], []
    for s in spans:
        attributes = s.get("a") or {}
        start = _time(s["st"])
        rows.append(
            Span(
                trace_id=s["t"],
                span_id=s["s"],
                parent_span_id=s.get("p") or "",
                name=_text(s.get("n"), 300),
                kind=int(s.get("k") or 0),
                service=_text(s.get("sv"), 200),
                start_time=start,
                duration_us=max(0, (s["en"] - s["st"]) // 1000),
                status_code=int(s.get("sc") or 0),
                status_message=_text(s.get("sm"), 2000),
                attributes=attributes,
                events=[{"name": e[0], "time": _time(e[1]).isoformat(), "attributes": e[2]} for e in s.get("e") or []],
                links=[{"trace_id": link[0], "span_id": link[1], "attributes": link[2]} for link in s.get("l") or []],
                message_id=_text(attributes.get("messaging.message.id"), 64),
                correlation_id=_text(attributes.get("messaging.message.conversation_id"), 128),
                saga_id=_text(attributes.get("flowscope.saga_id"), 64),
            )
        )
        links += [SpanLink(trace_id=s["t"], span_id=s["s"], linked_trace_id=link[0], linked_span_id=link[1], start_time=start) for link in s.get("l") or []]
    return rows, links


def store(spans: list[dict[str, Any]]) -> int:
    """Store spans not stored before and count them into the aggregates; returns how many were new."""
    if not spans:
        return 0
    with transaction.atomic():
        seen = set(
            Span.objects.filter(trace_id__in={s["t"] for s in spans}, span_id__in={s["s"] for s in spans}).values_list("trace_id", "span_id")
        )
        fresh, ids = [], set()
        for s in spans:
            key = (s["t"], s["s"])
            if key not in seen and key not in ids:
                ids.add(key)
                fresh.append(s)
        rows, links = to_rows(fresh)
        Span.objects.bulk_create(rows, batch_size=500)
        SpanLink.objects.bulk_create(links, batch_size=500, ignore_conflicts=True)
        aggregates.apply(fresh)
    return len(fresh)


class Collector:
    def __init__(self, *, name: str | None = None, batches_per_read: int = 20, block_ms: int = 200) -> None:
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.batches_per_read = batches_per_read
        self.block_ms = block_ms
        self.stored = 0
        self._recovering = True  # first read our own unacknowledged entries

    def ensure_group(self) -> None:
        try:
            get_redis().xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def step(self) -> int:
        """One read-store-acknowledge round; returns how many spans it read."""
        r = get_redis()
        entries = self._read(r)
        if not entries:
            return 0
        ids = [entry_id for entry_id, _ in entries]
        spans = [span for _, fields in entries for span in json.loads(fields[b"b"])]
        self.stored += store(spans)
        pipe = r.pipeline(transaction=True)
        pipe.xack(STREAM, GROUP, *ids)
        pipe.xdel(STREAM, *ids)
        pipe.decrby(PENDING, len(spans))
        pipe.execute()
        return len(spans)

    def _read(self, r: redis.Redis) -> list[tuple[bytes, dict[bytes, bytes]]]:
        if self._recovering:
            reply = r.xreadgroup(GROUP, self.name, {STREAM: "0"}, count=self.batches_per_read)
            entries = reply[0][1] if reply else []
            if entries:
                return entries
            self._recovering = False
            claimed = r.xautoclaim(STREAM, GROUP, self.name, min_idle_time=RECLAIM_IDLE_MS, count=self.batches_per_read)
            if claimed[1]:
                return claimed[1]
        reply = r.xreadgroup(GROUP, self.name, {STREAM: ">"}, count=self.batches_per_read, block=self.block_ms)
        return reply[0][1] if reply else []

    def run(self, stop: threading.Event) -> None:
        self.ensure_group()
        backoff = 0.5
        while not stop.is_set():
            try:
                self.step()
                backoff = 0.5
            except (redis.ConnectionError, redis.TimeoutError):
                log.warning("span sink unreachable; retrying in %.1fs", backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10)
                self._recover()
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._recover()  # the stream was deleted, or Redis restarted without persistence

    def _recover(self) -> None:
        self._recovering = True
        try:
            self.ensure_group()
        except redis.RedisError:
            pass
