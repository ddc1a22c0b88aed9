"""Stored spans, the links between traces, and the flow graph's rolling aggregates."""

from __future__ import annotations

import json
from typing import Any

from django.db import models


class Span(models.Model):
    trace_id = models.CharField(max_length=32, help_text="32 lowercase hex characters")
    span_id = models.CharField(max_length=16)
    parent_span_id = models.CharField(max_length=16, blank=True)
    name = models.CharField(max_length=300)
    kind = models.PositiveSmallIntegerField(default=0, help_text="OpenTelemetry SpanKind: 0 internal, 1 server, 2 client, 3 producer, 4 consumer")
    service = models.CharField(max_length=200, blank=True)
    start_time = models.DateTimeField()
    duration_us = models.BigIntegerField()
    status_code = models.PositiveSmallIntegerField(default=0, help_text="0 unset, 1 ok, 2 error")
    status_message = models.TextField(blank=True)
    attributes = models.JSONField(default=dict)
    events = models.JSONField(default=list)
    links = models.JSONField(default=list)
    # Lifted out of the attributes so the console can find a message, conversation or saga fast.
    message_id = models.CharField(max_length=64, blank=True)
    correlation_id = models.CharField(max_length=128, blank=True)
    saga_id = models.CharField(max_length=64, blank=True)

    class Meta:
        # start_time too: on PostgreSQL the table is partitioned by it, and a partitioned table's
        # unique constraints must hold the partition key (tracing.partitions). A re-sent span has
        # its start time too, so it is still refused; one rule on both databases.
        constraints = [models.UniqueConstraint(fields=["trace_id", "span_id", "start_time"], name="span_once")]
        indexes = [
            models.Index(fields=["trace_id", "start_time"], name="span_trace"),
            models.Index(fields=["start_time"], name="span_time"),
            models.Index(fields=["message_id"], name="span_message"),
            models.Index(fields=["correlation_id"], name="span_correlation"),
            models.Index(fields=["saga_id"], name="span_saga"),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.trace_id}/{self.span_id}"


class SpanLink(models.Model):
    """A span's link to a span of another trace, indexed both ways (a requeue and its dead letter)."""

    trace_id = models.CharField(max_length=32)
    span_id = models.CharField(max_length=16)
    linked_trace_id = models.CharField(max_length=32)
    linked_span_id = models.CharField(max_length=16)
    start_time = models.DateTimeField(help_text="when the linking span started; retention goes by it")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["trace_id", "span_id", "linked_trace_id", "linked_span_id", "start_time"], name="spanlink_once")]
        indexes = [
            models.Index(fields=["linked_trace_id"], name="spanlink_reverse"),
            models.Index(fields=["trace_id"], name="spanlink_forward"),
            models.Index(fields=["start_time"], name="spanlink_time"),
        ]


class EdgeCounts(models.Model):
    """Counts and a latency histogram for one flow-graph edge of one app over one span of time.

    An edge is sender -> queue (a publish), queue -> handler (an execution whose sender is not
    known), or sender -> handler through `queue` (an attached app's execution: task to task)."""

    app = models.CharField(max_length=100, blank=True, default="", help_text="the attached app (flowscope.app); empty for Flowscope's own flows")
    source = models.CharField(max_length=300)
    target = models.CharField(max_length=300)
    queue = models.CharField(max_length=300, blank=True, default="", help_text="the queue a sender -> handler edge went through; empty otherwise")
    count = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    dead = models.BigIntegerField(default=0)
    histogram = models.JSONField(default=list, help_text="latency counts per bucket of tracing.histogram.BOUNDS_MS")
    waits = models.JSONField(default=list, blank=True, help_text="queue-wait counts per bucket of tracing.histogram.BOUNDS_MS; empty when no span said")

    class Meta:
        abstract = True


class EdgeStat(EdgeCounts):
    """An edge over one time bucket (EDGE_BUCKET_SECONDS): the live graph and short windows."""

    bucket = models.DateTimeField(help_text="start of the bucket (EDGE_BUCKET_SECONDS long)")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["bucket", "app", "source", "target", "queue"], name="edgestat_once")]
        indexes = [models.Index(fields=["bucket"], name="edgestat_time")]


class EdgeHour(EdgeCounts):
    """An edge over one whole hour: EdgeStat's rows of that hour summed, kept by the collector in
    the same transaction, so a day's graph reads 24 rows an edge instead of 8,640."""

    bucket = models.DateTimeField(help_text="start of the hour")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["bucket", "app", "source", "target", "queue"], name="edgehour_once")]
        indexes = [models.Index(fields=["bucket"], name="edgehour_time")]


class TagsField(models.Field):
    """A list of short strings: text[] on PostgreSQL, whose planner keeps statistics of an
    array's elements (not of a jsonb list's), so a containment test takes the GIN index for a
    rare tag and walks the time index for a common one; JSON text on SQLite."""

    def db_type(self, connection: Any) -> str:
        return "text[]" if connection.vendor == "postgresql" else "text"

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> list[str]:
        if value is None:
            return []
        return list(value) if isinstance(value, list) else json.loads(value)

    def to_python(self, value: Any) -> list[str]:
        if value is None:
            return []
        return json.loads(value) if isinstance(value, str) else list(value)

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        if value is None:
            return None
        return list(value) if connection.vendor == "postgresql" else json.dumps(list(value))


class TraceSummary(models.Model):
    """One row per trace, kept by the collector as its spans arrive (tracing.summaries), so the
    trace search reads one row a trace instead of aggregating the span table.

    `tags` holds what a search filters on, as "kind:value" (service, app, type, queue, handler,
    name), so one containment test (a GIN index on PostgreSQL) answers any mix of them."""

    trace_id = models.CharField(max_length=32, primary_key=True)
    start_time = models.DateTimeField(help_text="start of the trace's earliest span")
    end_time = models.DateTimeField(help_text="end of the trace's latest span")
    duration_us = models.BigIntegerField()
    root_name = models.CharField(max_length=300, blank=True)
    root_start = models.DateTimeField(help_text="start of the span root_name was taken from")
    rooted = models.BooleanField(default=False, help_text="root_name is a span without a parent (else the earliest span seen so far)")
    spans = models.IntegerField(default=0)
    errors = models.IntegerField(default=0)
    wait_us = models.BigIntegerField(default=0, help_text="queue wait its process spans reported (flowscope.queue_wait_ms), summed")
    work_us = models.BigIntegerField(default=0, help_text="time in its process (consumer) spans, summed")
    tags = TagsField(default=list)

    class Meta:
        indexes = [
            models.Index(fields=["start_time", "trace_id"], name="tracesummary_start"),
            models.Index(fields=["duration_us", "trace_id"], name="tracesummary_duration"),
            # Errors only, newest first: a few traces in a hundred fail, so walking the whole
            # time index for them read about thirty rows for each one shown.
            models.Index(fields=["start_time", "trace_id"], condition=models.Q(errors__gt=0), name="tracesummary_failed"),
        ]

    @property
    def services(self) -> list[str]:
        return [t.split(":", 1)[1] for t in self.tags if t.startswith("service:")]
