"""p8's other peer: the plain app (tooling.bench.plain_app) with OpenTelemetry's own Celery
instrumentation, exporting over OTLP/HTTP to the same console the agent reports to.

It pays what the agent pays: an SDK span a publish and a run, the SDK's batch processor and
OTLP exporter (at the SDK's defaults), and a console on the same machine storing what it sends,
but no task states and no dead letters. Endpoint,
headers and service name come from OpenTelemetry's own environment variables
(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_HEADERS, OTEL_SERVICE_NAME).

    celery -A tooling.bench.otel_app worker ...      instrumented in each pool process, as
                                                    OpenTelemetry's Celery docs say for prefork
    python -m tooling.bench.otel_app N BACKLOG DONE_KEY FIRST_KEY LAST_KEY
                                                    the plain app's producer, instrumented
"""

from __future__ import annotations

import sys
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tooling.bench.plain_app import app, noop, send

__all__ = ["app", "noop", "instrument"]


def instrument() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument(tracer_provider=provider)
    return provider


_provider: TracerProvider | None = None


@worker_process_init.connect(weak=False)
def _in_each_pool_process(**_: Any) -> None:
    global _provider
    _provider = instrument()


@worker_process_shutdown.connect(weak=False)
def _flush_on_the_way_out(**_: Any) -> None:
    # The batch processor sends every 5 s: a pool process stopped sooner would take its spans along.
    if _provider is not None:
        _provider.shutdown()


if __name__ == "__main__":
    count, bound, *done_keys = sys.argv[1:]
    provider = instrument()
    try:
        send(int(count), int(bound), done_keys)
    finally:
        provider.shutdown()  # every send span out before the process ends
