"""The span sink: batches of spans in a Redis stream, bounded, with every drop counted.

Workers and the web process export here (off the hot path, from the SDK's batch thread); the
OTLP receiver pushes here too; the collector drains it into the database. When the collector
is down, spans wait, up to TRACING_SINK_MAX_SPANS; past that a batch is refused and its spans
are added to a drop counter that the console shows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import orjson
import redis
from django.conf import settings
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from tracing.redis import get_redis, key

log = logging.getLogger(__name__)

STREAM = key("spans")
PENDING = key("spans", "pending")  # spans in the stream, not yet stored
DROPPED = key("spans", "dropped")  # spans refused at the bound, or lost with Redis away
GROUP = "collector"

# KEYS: stream, pending, dropped. ARGV: batch JSON, span count, bound. Returns 1 kept, 0 dropped.
_PUSH = """
local pending = tonumber(redis.call('GET', KEYS[2]) or '0')
local n = tonumber(ARGV[2])
if pending + n > tonumber(ARGV[3]) then
  redis.call('INCRBY', KEYS[3], n)
  return 0
end
redis.call('XADD', KEYS[1], '*', 'b', ARGV[1])
redis.call('INCRBY', KEYS[2], n)
return 1
"""


def _attributes(attributes: Any) -> dict[str, Any]:
    """A plain dict of a span's attributes. The SDK's mapping copies itself in one call
    (BoundedAttributes.copy, SDK 1.45), where dict() would read it key by key."""
    if not attributes:
        return {}
    copy = getattr(attributes, "copy", None)
    copied = copy() if copy is not None else None
    return copied if type(copied) is dict else dict(attributes)  # anything else: read it out


def encode(span: ReadableSpan) -> dict[str, Any]:
    """A span as the sink carries it: short keys, ids as lowercase hex, times in ns."""
    context = span.context
    assert context is not None
    parent = span.parent
    status = span.status
    return {
        "t": f"{context.trace_id:032x}",
        "s": f"{context.span_id:016x}",
        "p": f"{parent.span_id:016x}" if parent else "",
        "n": span.name,
        "k": span.kind.value,
        "sv": str(span.resource.attributes.get("service.name", "")),
        "st": span.start_time,
        "en": span.end_time,
        "sc": status.status_code.value,
        "sm": status.description or "",
        "a": _attributes(span.attributes),
        "e": [[e.name, e.timestamp, _attributes(e.attributes)] for e in span.events] if span.events else [],
        "l": [[f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}", _attributes(link.attributes)] for link in span.links] if span.links else [],
    }


class SinkFull(Exception):
    """The sink is at its bound: the spans were counted as dropped."""


def push(spans: list[dict[str, Any]]) -> None:
    """Put encoded spans in the sink; SinkFull at the bound, redis errors when Redis is away."""
    if not spans:
        return
    batch = orjson.dumps(spans, default=str, option=orjson.OPT_NON_STR_KEYS)
    kept = get_redis().eval(_PUSH, 3, STREAM, PENDING, DROPPED, batch, len(spans), settings.TRACING_SINK_MAX_SPANS)
    if not kept:
        raise SinkFull(f"span sink holds its limit of {settings.TRACING_SINK_MAX_SPANS} spans; {len(spans)} dropped")


class RedisStreamExporter(SpanExporter):
    def __init__(self) -> None:
        self._lost = 0  # dropped while Redis was unreachable: reported once it answers again
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        encoded = [encode(span) for span in spans]
        try:
            push(encoded)
        except SinkFull as exc:
            log.warning("%s", exc)
            return SpanExportResult.FAILURE
        except redis.RedisError:
            with self._lock:
                self._lost += len(encoded)
            log.warning("span sink unreachable; %d span(s) dropped so far", self._lost, exc_info=True)
            return SpanExportResult.FAILURE
        self._report_lost()
        return SpanExportResult.SUCCESS

    def _report_lost(self) -> None:
        with self._lock:
            lost, self._lost = self._lost, 0
        if lost:
            try:
                get_redis().incrby(DROPPED, lost)
            except redis.RedisError:
                with self._lock:
                    self._lost += lost

    def shutdown(self) -> None:
        self._report_lost()


def sink_status() -> dict[str, int]:
    redis_client = get_redis()
    pending, dropped = redis_client.mget(PENDING, DROPPED)
    return {"pending": int(pending or 0), "dropped": int(dropped or 0)}
