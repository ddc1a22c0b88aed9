"""Spans for the engine's hops, with W3C trace context carried in the envelope headers.

    send <type>      PRODUCER, one per copy published (each fan-out subscriber, each saga step)
    process <type>   CONSUMER, one per delivery attempt, child of the send that carried it
    requeue <type>   PRODUCER, the root of a new trace linked to the dead letter's original one,
                     and the send of the copy (flows.operate.requeue)
    saga <name>, request <type>, await reply <type>: the roots and ends of those patterns

Attributes follow the OpenTelemetry messaging conventions plus flowscope.* for the rest.
"""

from __future__ import annotations

import contextlib
import json
import traceback
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode

from flows.core.envelope import PATTERN, SAGA_ID, SAGA_PHASE, SAGA_STEP, SAGA_TYPE, TRACEPARENT, Envelope
from flows.core.message import current_message
from tracing import setup
from tracing.redaction import redact, redact_text

_CONTEXT_HEADERS = ("traceparent", "tracestate", "baggage")
# On a process span whose payload was read at a newer schema version than it was sent in: the
# version the consumer read it at (flowscope.schema_version keeps the version sent).
UPCAST_TO = "flowscope.upcast_to"
# On an "await reply" span: how the wait ended, "ok", "timeout" or "failed".
REPLY_OUTCOME = "flowscope.reply"
_STATUS_OK = Status(StatusCode.OK)


class _ContextHeaders(Getter[dict[str, Any]]):
    """An envelope's headers as a propagator reads them: only the trace context headers, and
    only string values (headers are untrusted input). Read in place, where a filtered copy of
    the headers and the default getter's checks cost as much as the extraction itself."""

    def get(self, carrier: dict[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key) if key in _CONTEXT_HEADERS else None
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: dict[str, Any]) -> list[str]:
        return [key for key in _CONTEXT_HEADERS if isinstance(carrier.get(key), str)]


_CONTEXT_GETTER = _ContextHeaders()


def message_attributes(envelope: Envelope, *, queue: str, operation: str) -> dict[str, Any]:
    headers = envelope.headers
    attributes: dict[str, Any] = {
        "messaging.system": "celery",
        "messaging.destination.name": queue,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.message.id": str(envelope.message_id),
        "messaging.message.conversation_id": envelope.correlation_id,
        "flowscope.message_type": envelope.type,
        "flowscope.schema_version": envelope.schema_version,
        "flowscope.pattern": str(headers.get(PATTERN, "")),
        "flowscope.flow": str(headers.get(SAGA_TYPE) or envelope.type),
        "flowscope.attempt": envelope.attempt,
    }
    if headers.get(SAGA_ID):
        attributes.update(
            {
                "flowscope.saga_id": str(headers[SAGA_ID]),
                "flowscope.saga_step": int(headers.get(SAGA_STEP, -1)) if isinstance(headers.get(SAGA_STEP), int) else -1,
                "flowscope.saga_phase": str(headers.get(SAGA_PHASE, "")),
            }
        )
    if settings.TRACING_CAPTURE_PAYLOAD:
        attributes["flowscope.payload"] = json.dumps(redact(envelope.payload), default=str)[:4096]
    return attributes


def _producer_node() -> str:
    """The flow graph's name for whoever sends: the handler it runs in, else its service."""
    message = current_message.get()
    if message is not None:
        return f"handler:{message.handler.consumer}"
    return f"service:{setup.provider().resource.attributes.get('service.name', 'flowscope')}"


def traced_headers(envelope: Envelope, *, queue: str) -> Envelope:
    """Record a send span for this copy and carry its context in the copy's headers."""
    tracer = setup.tracer()
    attributes = message_attributes(envelope, queue=queue, operation="send")
    attributes["flowscope.producer"] = _producer_node()
    with tracer.start_as_current_span(f"send {envelope.type}", kind=SpanKind.PRODUCER, attributes=attributes):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
    return envelope.with_headers(**{name: carrier.get(name) for name in _CONTEXT_HEADERS})


def context_of(headers: dict[str, Any]) -> otel_context.Context:
    return propagate.extract(headers, getter=_CONTEXT_GETTER)


def process_span(envelope: Envelope | None, *, queue: str, consumer: str, worker: str) -> contextlib.AbstractContextManager[trace.Span]:
    """The delivery's span, current while it runs (the SDK's own context manager, unwrapped: it
    is entered on every hop)."""
    tracer = setup.tracer()
    if envelope is None:  # not even an envelope: a root span of its own, so the failure is seen
        return tracer.start_as_current_span("process (malformed)", kind=SpanKind.CONSUMER, attributes={"flowscope.consumer": consumer, "flowscope.worker": worker, "messaging.destination.name": queue})
    attributes = message_attributes(envelope, queue=queue, operation="process")
    attributes["messaging.consumer.group.name"] = attributes["flowscope.consumer"] = consumer
    attributes["flowscope.worker"] = worker
    return tracer.start_as_current_span(
        f"process {envelope.type}", context=context_of(envelope.headers), kind=SpanKind.CONSUMER, attributes=attributes, record_exception=False, set_status_on_exception=False
    )


def set_outcome(outcome: str) -> None:
    span = trace.get_current_span()
    span.set_attribute("flowscope.outcome", outcome)
    if outcome in ("ok", "duplicate"):  # "handled" keeps the error status its attempt set
        span.set_status(_STATUS_OK)


def record_upcast(target_version: int) -> None:
    trace.get_current_span().set_attribute(UPCAST_TO, target_version)


def record_failure(exc: BaseException, *, final: bool) -> None:
    """The attempt failed: an exception event (redacted) and, on the last attempt, error status."""
    span = trace.get_current_span()
    span.add_event(
        "exception",
        {
            "exception.type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "exception.message": redact_text(str(exc)),
            "exception.stacktrace": redact_text("".join(traceback.format_exception(exc))),
        },
    )
    span.set_status(Status(StatusCode.ERROR, redact_text(f"{type(exc).__name__}: {exc}")[:500]))
    span.set_attribute("flowscope.final_attempt", final)


@contextlib.contextmanager
def child_span(name: str, *, parent_headers: dict[str, Any] | None = None, kind: SpanKind = SpanKind.INTERNAL, attributes: dict[str, Any] | None = None) -> Iterator[trace.Span]:
    """A span under the current one, or under the context carried in `parent_headers`."""
    context = context_of(parent_headers) if parent_headers else None
    with setup.tracer().start_as_current_span(name, context=context, kind=kind, attributes=attributes or {}) as span:
        yield span


@contextlib.contextmanager
def continuing(headers: dict[str, Any]) -> Iterator[None]:
    """Inside a span already: nothing changes. Outside (the sweeper): continue the trace in `headers`."""
    if trace.get_current_span().get_span_context().is_valid or not headers:
        yield
        return
    token = otel_context.attach(context_of(headers))
    try:
        yield
    finally:
        otel_context.detach(token)


def current_headers() -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def trace_id_of(headers: dict[str, Any]) -> str:
    """The trace id a traceparent header names, or ''."""
    parts = str(headers.get(TRACEPARENT, "")).split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""
