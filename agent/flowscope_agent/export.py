"""Spans out of the process in batches, off the task's path, into a bounded buffer.

One Reporter per process (the fork rule: a provider made before a fork must not be used after
it, so each pool process makes its own in worker_process_init, and any process whose pid
changed makes a new one on first use). Its provider is the agent's own, never the global one:
an app with OpenTelemetry of its own keeps its set-up untouched.

A span ends in the task's thread with a counter bump and a deque append; the SDK's
BatchSpanProcessor thread sends batches over OTLP/HTTP. While the console is slow or away the
buffer fills; past `max_queue` spans held (queued or being sent) a new span is dropped and
counted here, before the SDK's own queue would drop one silently, so no task ever waits.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Tracer

from flowscope_agent.config import Config

log = logging.getLogger("flowscope_agent")
VERSION = "0.1.0"


class Counts:
    """Spans by fate in this process: sent, refused or unreachable, dropped at the bound."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ended = 0  # handed to the batch processor
        self.exported = 0
        self.failed = 0  # the console refused them or could not be reached in time
        self.dropped = 0  # the buffer was full: never handed on

    def held(self) -> int:
        return self.ended - self.exported - self.failed

    def as_dict(self) -> dict[str, int]:
        with self.lock:
            return {"ended": self.ended, "exported": self.exported, "failed": self.failed, "dropped": self.dropped, "held": self.held()}


PAUSE_AFTER_FAILURE = 5.0  # seconds a failed export (retries spent) keeps the next batches from trying


class _CountingExporter(SpanExporter):
    """Counts each batch's fate. After a failed export (the console away or refusing, the
    exporter's own retries spent) batches are counted as failed unsent for a few seconds:
    encoding and retrying for a console that is down would only take CPU from the app's tasks."""

    def __init__(self, inner: SpanExporter, counts: Counts) -> None:
        self.inner = inner
        self.counts = counts
        self.paused_until = 0.0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if time.monotonic() < self.paused_until:
            result = SpanExportResult.FAILURE
        else:
            try:
                result = self.inner.export(spans)
            except Exception:  # an exporter bug must not kill the batch thread
                log.exception("flowscope-agent: exporting %d spans raised", len(spans))
                result = SpanExportResult.FAILURE
            if result is not SpanExportResult.SUCCESS:
                self.paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
        with self.counts.lock:
            if result is SpanExportResult.SUCCESS:
                self.counts.exported += len(spans)
            else:
                self.counts.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class _BoundedBatchProcessor(BatchSpanProcessor):
    def __init__(self, exporter: _CountingExporter, config: Config) -> None:
        super().__init__(exporter, max_queue_size=config.max_queue, schedule_delay_millis=config.export_delay_ms, max_export_batch_size=min(512, config.max_queue))
        self.counts = exporter.counts
        self.limit = config.max_queue

    def on_end(self, span: ReadableSpan) -> None:
        if not (span.context and span.context.trace_flags.sampled):
            return  # the SDK would not send it either: not counted as held
        with self.counts.lock:
            if self.counts.held() >= self.limit:
                self.counts.dropped += 1
                return
            self.counts.ended += 1
        super().on_end(span)


class KeptHashResource(Resource):
    """The SDK's Resource, its hash worked out once. The OTLP encoder groups a batch's spans by
    resource, hashing it once a span, and Resource hashes by dumping its attributes to JSON every
    time: about a fifth of encoding a batch (opentelemetry-sdk 1.45). A resource never changes."""

    def __init__(self, attributes: Any, schema_url: str | None = None) -> None:
        super().__init__(attributes, schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or super().__eq__(other)


class Reporter:
    """This process's provider, tracer and counts."""

    def __init__(self, config: Config, app_name: str) -> None:
        self.pid = os.getpid()
        self.config = config
        self.app_name = app_name
        self.counts = Counts()
        made = Resource.create({"service.name": app_name, "flowscope.app": app_name, "flowscope.agent.version": VERSION})
        resource = KeptHashResource(made.attributes, made.schema_url)
        # shutdown_on_exit=False: the agent flushes at the end of its own life (worker process
        # shutdown, interpreter exit) and says what became of the spans.
        self.provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        if config.url:  # without one, spans still carry the trace on; nothing is sent
            headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
            exporter = _CountingExporter(OTLPSpanExporter(endpoint=config.endpoint, headers=headers, timeout=config.export_timeout), self.counts)
            self.provider.add_span_processor(_BoundedBatchProcessor(exporter, config))
        self.tracer: Tracer = self.provider.get_tracer("flowscope_agent", VERSION)
        self.closed = False

    def shutdown(self) -> dict[str, int]:
        """Send what is held (within the export timeout), stop, and log the counts."""
        if not self.closed:
            self.closed = True
            # The SDK waits up to 30 s for its last batches; with the console away that would
            # hold up a worker's exit, so the wait is bounded by one export's timeout.
            closing = threading.Thread(target=self.provider.shutdown, name="flowscope-agent-shutdown", daemon=True)
            closing.start()
            closing.join(self.config.export_timeout + 1)
        counts = self.counts.as_dict()
        # What was still held when the processor stopped never left: count it as dropped.
        lost = counts["held"]
        counts["dropped"] += lost
        level = logging.WARNING if counts["failed"] or counts["dropped"] else logging.INFO
        log.log(
            level,
            "flowscope-agent: pid %d reported %d spans to %s; %d failed to send, %d dropped (buffer full or unsent at exit)",
            self.pid,
            counts["exported"],
            self.config.endpoint,
            counts["failed"],
            counts["dropped"],
        )
        return counts
