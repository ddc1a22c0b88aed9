"""How many spans a second the collector stores: synthetic process spans, pushed to a stream of
the benchmark's own, drained by one collector in this process (one core)."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable

from tracing.collector import Collector
from tracing.models import EdgeHour, EdgeStat, Span
from tracing.redis import get_redis, key
from tracing.sink import sink_status

STREAM = key("bench", "spans")
PENDING = key("bench", "spans", "pending")
SERVICE = "flowscope-bench"
BATCH = 512


def synthetic_batch(size: int, now_ns: int) -> list[dict]:
    spans = []
    for _ in range(size):
        trace, queue = os.urandom(16).hex(), random.choice(("bench.a", "bench.b", "bench.c"))
        duration = random.randint(200_000, 20_000_000)
        spans.append(
            {
                "t": trace,
                "s": os.urandom(8).hex(),
                "p": os.urandom(8).hex(),
                "n": "process bench.ping",
                "k": 4,
                "sv": SERVICE,
                "st": now_ns - duration,
                "en": now_ns,
                "sc": 2 if random.random() < 0.02 else 1,
                "sm": "",
                "e": [],
                "l": [],
                "a": {
                    "messaging.system": "celery",
                    "messaging.destination.name": queue,
                    "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "messaging.message.id": str(os.urandom(16).hex()),
                    "messaging.message.conversation_id": trace,
                    "messaging.consumer.group.name": "bench_ping",
                    "flowscope.consumer": "bench_ping",
                    "flowscope.message_type": "bench.ping",
                    "flowscope.schema_version": 1,
                    "flowscope.pattern": "fire_and_forget",
                    "flowscope.flow": "bench.ping",
                    "flowscope.attempt": 1,
                    "flowscope.worker": "bench@host/1",
                    "flowscope.outcome": "ok",
                },
            }
        )
    return spans


def collector_rate(n: int, progress: Callable[[str], None]) -> float:
    redis = get_redis()
    redis.delete(STREAM, PENDING)
    now = time.time_ns()
    pushed = 0
    while pushed < n:
        size = min(BATCH, n - pushed)
        redis.xadd(STREAM, {"b": json.dumps(synthetic_batch(size, now), separators=(",", ":"))})
        pushed += size
        if pushed % (BATCH * 40) == 0:
            progress(f"spans: {pushed}/{n} in the sink")
    redis.set(PENDING, n)
    collector = Collector(name="bench", stream=STREAM, pending_key=PENDING, block_ms=1)
    collector.ensure_group()
    started = time.perf_counter()
    read = 0
    while read < n:
        read += collector.step()
        progress(f"spans: {read}/{n} stored")
    elapsed = time.perf_counter() - started
    redis.delete(STREAM, PENDING)
    Span.objects.filter(service=SERVICE)._raw_delete(Span.objects.db)
    for model in (EdgeStat, EdgeHour):
        model.objects.filter(source__startswith="queue:bench.").delete()
    return n / elapsed


def wait_sink_empty(progress: Callable[[str], None], *, what: str, timeout: float = 300) -> None:
    """Until the collector has stored every span in the sink; RuntimeError after `timeout`."""
    deadline = time.monotonic() + timeout
    while (pending := sink_status()["pending"]) > 0:
        progress(f"{what}: {pending} spans waiting to be stored")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {pending} spans still waiting to be stored after {timeout:.0f}s")
        time.sleep(0.1)
