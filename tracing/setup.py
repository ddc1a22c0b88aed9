"""OpenTelemetry set-up: one tracer provider per process, honouring the standard OTEL_* variables.

The provider is made on first use in each process and made anew after a fork (Celery's prefork
children each get their own, with a live export thread), and flushed when the process ends,
including a pool child recycled by worker_max_tasks_per_child (see tracing.celery_hooks).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading

from django.conf import settings
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tracing.sink import RedisStreamExporter

log = logging.getLogger(__name__)
_lock = threading.Lock()
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_pid = 0
_default_service = "flowscope"


def set_default_service(name: str) -> None:
    """The service name when OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES) is unset."""
    global _default_service
    _default_service = name


def _resource() -> Resource:
    resource = Resource.create()  # reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: _default_service}))
    return resource


def _onward_export_configured() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def _build() -> TracerProvider:
    # The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (the SDK reads them).
    provider = TracerProvider(resource=_resource())
    delay = None if "OTEL_BSP_SCHEDULE_DELAY" in os.environ else settings.TRACING_EXPORT_DELAY_MS
    provider.add_span_processor(BatchSpanProcessor(RedisStreamExporter(), schedule_delay_millis=delay))
    if _onward_export_configured():
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def provider() -> TracerProvider:
    global _provider, _tracer, _pid
    # A fork clears these (_forget_after_fork), so the check on every hop is not a getpid call.
    if _provider is None:
        with _lock:
            if _provider is None:
                made = _build()
                _tracer = trace.NoOpTracer() if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true" else made.get_tracer("flowscope")
                _provider, _pid = made, os.getpid()
    return _provider


def _forget_after_fork() -> None:
    """In a forked child: the parent's provider (and its export thread) did not come along."""
    global _provider, _tracer, _pid, _lock
    _provider, _tracer, _pid, _lock = None, None, 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def tracer() -> trace.Tracer:
    """The process's tracer, made once per process (get_tracer is too dear for every hop)."""
    if _tracer is None:
        provider()
    assert _tracer is not None
    return _tracer


def flush(timeout_millis: int = 10_000) -> bool:
    """Export every span this process still holds; True when all went out in time."""
    if _provider is None or _pid != os.getpid():
        return True
    return _provider.force_flush(timeout_millis)


def shutdown() -> None:
    global _provider, _tracer, _pid
    if _provider is not None and _pid == os.getpid():
        _provider.shutdown()
    _provider, _tracer, _pid = None, None, 0


atexit.register(flush)
