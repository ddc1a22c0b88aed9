"""The producer's API: one call per way of sending, each routed by its message type's pattern."""

from __future__ import annotations

from typing import Any

from flows.core.envelope import Envelope
from flows.core.errors import ConfigurationError
from flows.core.registry import catalog
from flows.models import SagaInstance
from flows.patterns import get_pattern
from flows.patterns.request_reply import PendingReply, RequestReply
from flows.patterns.saga_state import saga_start
from flows.produce.publishing import build_envelope


def send(
    message_type: str,
    payload: dict[str, Any],
    *,
    schema_version: int | None = None,
    correlation_id: str | None = None,
    headers: dict[str, Any] | None = None,
) -> Envelope:
    """Publish a command or an event: fire-and-forget, competing consumers or fan-out."""
    mtype = catalog.message_type(message_type)
    if mtype.pattern in ("request_reply", "saga"):
        use = "flows.request()" if mtype.pattern == "request_reply" else "flows.start_saga()"
        raise ConfigurationError(f"{message_type!r} is a {mtype.pattern} type: use {use}")
    envelope = build_envelope(message_type, payload, schema_version=schema_version, correlation_id=correlation_id, headers=headers)
    get_pattern(mtype.pattern).dispatch(envelope)
    return envelope


def request_async(message_type: str, payload: dict[str, Any], *, timeout: float = 10.0, **envelope_options: Any) -> PendingReply:
    """Send a request now; collect the reply later with `.result()`."""
    mtype = catalog.message_type(message_type)
    pattern = get_pattern(mtype.pattern)
    if not isinstance(pattern, RequestReply):
        raise ConfigurationError(f"{message_type!r} is a {mtype.pattern} type, not request_reply")
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    return pattern.request(message_type, payload, timeout=timeout, **envelope_options)


def request(message_type: str, payload: dict[str, Any], *, timeout: float = 10.0, **envelope_options: Any) -> dict[str, Any]:
    """Send a request and wait for its reply payload; ReplyTimeout or RequestFailed otherwise."""
    return request_async(message_type, payload, timeout=timeout, **envelope_options).result()


def start_saga(name: str, data: dict[str, Any], *, correlation_id: str | None = None) -> SagaInstance:
    return saga_start(name, data, correlation_id=correlation_id)
