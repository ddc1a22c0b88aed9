"""The collector: drains the span sink into the database and keeps the flow graph's aggregates.

1. Read a few batches from the stream through a consumer group (first our own unacknowledged
   ones, left by a crash, then new ones; also those another collector left idle too long).
2. Insert spans and links and update the aggregates and the traces' summaries in one
   transaction, skipping spans already stored (a batch redelivered after a crash, an OTLP
   client's retry), so the aggregates and summaries count each span once.
3. Acknowledge and delete the batches, and lower the sink's pending count.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis
from django.db import DatabaseError, IntegrityError, close_old_connections, connection, reset_queries, transaction

from tracing import aggregates, summaries
from tracing.bulk import insert_rows
from tracing.models import Span, SpanLink
from tracing.redis import get_redis
from tracing.sink import GROUP, PENDING, STREAM

log = logging.getLogger(__name__)
RECLAIM_IDLE_MS = 30_000
RECLAIM_EVERY_S = 5.0
SQLITE_CACHE_KIB = 16 * 1024


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = _EPOCH.replace(tzinfo=None)


def _time(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def _text(value: Any, limit: int) -> str:
    return str(value or "")[:limit]


def _json(value: Any) -> str:
    if not value:
        return "[]" if isinstance(value, list) else "{}"
    return orjson.dumps(value, default=str).decode()


def _time_column() -> Callable[[int], Any]:
    """ns since the epoch as the start_time column takes it in a raw insert. SQLite stores text,
    which Django writes as str() of the naive UTC time; made here directly, as going through
    connection.ops for each of 20,000 spans cost a fifth of the collector's time (profiled)."""
    if connection.vendor == "sqlite":
        return lambda ns: str(_NAIVE_EPOCH + timedelta(microseconds=ns // 1000))
    return _time


SPAN_COLUMNS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "service",
    "start_time",
    "duration_us",
    "status_code",
    "status_message",
    "attributes",
    "events",
    "links",
    "message_id",
    "correlation_id",
    "saga_id",
)
LINK_COLUMNS = ("trace_id", "span_id", "linked_trace_id", "linked_span_id", "start_time")


def to_rows(spans: list[dict[str, Any]]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rows for the span and link tables, in SPAN_COLUMNS and LINK_COLUMNS order."""
    rows, links = [], []
    column_time = _time_column()
    for s in spans:
        attributes = s.get("a") or {}
        start = column_time(s["st"])
        events, span_links = s.get("e"), s.get("l")
        rows.append(
            (
                s["t"],
                s["s"],
                s.get("p") or "",
                _text(s.get("n"), 300),
                int(s.get("k") or 0),
                _text(s.get("sv"), 200),
                start,
                max(0, (s["en"] - s["st"]) // 1000),
                int(s.get("sc") or 0),
                _text(s.get("sm"), 2000),
                _json(attributes),
                _json([{"name": e[0], "time": _time(e[1]).isoformat(), "attributes": e[2]} for e in events]) if events else "[]",
                _json([{"trace_id": link[0], "span_id": link[1], "attributes": link[2]} for link in span_links]) if span_links else "[]",
                _text(attributes.get("messaging.message.id"), 64),
                _text(attributes.get("messaging.message.conversation_id"), 128),
                _text(attributes.get("flowscope.saga_id"), 64),
            )
        )
        if span_links:
            links += [(s["t"], s["s"], link[0], link[1], start) for link in span_links]
    return rows, links


def _already_stored(spans: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """Which of these spans the table holds: one raw query per 500 on the unique index (the ORM
    spent more preparing 20,000 parameters than the database spent answering)."""
    table, seen = connection.ops.quote_name(Span._meta.db_table), set()
    with connection.cursor() as cursor:
        for i in range(0, len(spans), 500):  # 1,000 parameters: within every database's limit
            chunk = spans[i : i + 500]
            pairs = " OR ".join(["(trace_id = %s AND span_id = %s)"] * len(chunk))
            cursor.execute(f"SELECT trace_id, span_id FROM {table} WHERE {pairs}", [v for s in chunk for v in (s["t"], s["s"])])
            seen.update((t, sp) for t, sp in cursor.fetchall())
    return seen


def _insert(spans: list[dict[str, Any]]) -> None:
    rows, links = to_rows(spans)
    # In key order, consecutive inserts land on neighbouring pages of the (trace_id, span_id)
    # and (trace_id, start_time) indexes instead of a random page each.
    rows.sort()
    insert_rows(Span._meta.db_table, SPAN_COLUMNS, rows)
    # Links may repeat (an OTLP client's retry of a span stored in an earlier batch is
    # filtered out with its span, so only a link listed twice in one span can): keep one of each.
    insert_rows(SpanLink._meta.db_table, LINK_COLUMNS, list(dict.fromkeys(links)))


def store(spans: list[dict[str, Any]]) -> int:
    """Store spans not stored before and count them into the aggregates; returns how many were new.

    Optimistic: nearly every batch is new, so it is inserted as it comes and the unique index on
    (trace_id, span_id) is the check. Only when that refuses a row (a batch redelivered after a
    crash, an OTLP client's retry) does it look up which spans are stored and insert the rest.
    """
    if not spans:
        return 0
    fresh, ids = [], set()
    for s in spans:
        key = (s["t"], s["s"])
        if key not in ids:  # listed twice in one batch: once
            ids.add(key)
            fresh.append(s)
    with transaction.atomic():
        if connection.vendor == "sqlite":
            # Keep the span table's index pages at hand: with SQLite's default 2 MiB cache, an
            # insert at 100,000 stored spans cost 2.5 times one into an empty table (profiled);
            # with 16 MiB about 1.5 times. Filled within the first 20,000 spans, so the
            # collector's memory does not grow with the table after that.
            with connection.cursor() as cursor:
                cursor.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
        if connection.vendor == "postgresql":
            # Yield rather than deadlock: a TRUNCATE or a long migration holding one of our
            # three tables makes this transaction give up after a moment; the batch stays
            # unacknowledged and is stored on the next round.
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '500ms'")
        try:
            with transaction.atomic():  # a savepoint: a refused insert leaves the transaction usable
                _insert(fresh)
        except (IntegrityError, connection.Database.IntegrityError):
            seen = _already_stored(fresh)
            fresh = [s for s in fresh if (s["t"], s["s"]) not in seen]
            _insert(fresh)
        aggregates.apply(fresh)
        summaries.apply(fresh)
    return len(fresh)


class Collector:
    def __init__(self, *, name: str | None = None, batches_per_read: int = 20, block_ms: int = 200, stream: str = STREAM, pending_key: str = PENDING) -> None:
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.stream, self.pending_key = stream, pending_key
        self.batches_per_read = batches_per_read
        self.block_ms = block_ms
        self.stored = 0
        self._recovering = True  # first read our own unacknowledged entries
        self._next_claim = 0.0  # then others' left idle (monotonic time of the next look)

    def ensure_group(self) -> None:
        try:
            get_redis().xgroup_create(self.stream, GROUP, id="0", mkstream=True)
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
        spans = [span for _, fields in entries for span in orjson.loads(fields[b"b"])]
        self.stored += store(spans)
        pipe = r.pipeline(transaction=True)
        pipe.xack(self.stream, GROUP, *ids)
        pipe.xdel(self.stream, *ids)
        pipe.decrby(self.pending_key, len(spans))
        pipe.execute()
        return len(spans)

    def _read(self, r: redis.Redis) -> list[tuple[bytes, dict[bytes, bytes]]]:
        if self._recovering:
            reply = r.xreadgroup(GROUP, self.name, {self.stream: "0"}, count=self.batches_per_read)
            entries = reply[0][1] if reply else []
            if entries:
                return entries
            self._recovering = False
        # Batches another collector read and never acknowledged (it was killed, or lost its
        # database) are taken over once idle long enough; looked for at start, after an error and
        # every RECLAIM_EVERY_S while running, so a survivor stores what a dead collector held.
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + RECLAIM_EVERY_S
            claimed = r.xautoclaim(self.stream, GROUP, self.name, min_idle_time=RECLAIM_IDLE_MS, count=self.batches_per_read)
            if claimed[1]:
                self._next_claim = 0.0  # more may wait: look again next round
                return claimed[1]
        reply = r.xreadgroup(GROUP, self.name, {self.stream: ">"}, count=self.batches_per_read, block=self.block_ms)
        return reply[0][1] if reply else []

    def run(self, stop: threading.Event) -> None:
        self.ensure_group()
        backoff = 0.5
        while not stop.is_set():
            try:
                self.step()
                backoff = 0.5
                # With DEBUG on, Django logs every query of a connection until a request ends;
                # this thread serves none, so its log would grow to 9,000 entries (seen in p7).
                reset_queries()
            except (redis.ConnectionError, redis.TimeoutError):
                log.warning("span sink unreachable; retrying in %.1fs", backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10)
                self._recover()
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._recover()  # the stream was deleted, or Redis restarted without persistence
            except DatabaseError:
                # The database away, or a lock not granted in time: the batch was not
                # acknowledged, so the next round reads it again.
                log.warning("could not store a batch of spans; retrying in %.1fs", backoff, exc_info=True)
                close_old_connections()
                connection.close()
                stop.wait(backoff)
                backoff = min(backoff * 2, 10)
                self._recover()

    def _recover(self) -> None:
        self._recovering = True
        self._next_claim = 0.0
        try:
            self.ensure_group()
        except redis.RedisError:
            pass
