"""Spans from Celery events, in the span sink's form (tracing.sink.encode), with the attributes the
agent's spans carry (flowscope_agent.hooks), so the console reads both alike.

Ids are derived, never random: the trace id from the task's root_id, a span id from the task id,
the attempt and the side (send or process). The same event seen twice (a watcher restarted, two
watchers) makes the same span, which the collector stores once.
"""

from __future__ import annotations

import builtins
import hashlib
import uuid
from typing import Any

from tracing.redaction import redact_text

PRODUCER, CONSUMER = 3, 4  # the SDK's SpanKind values, as the sink carries them
UNSET, OK, ERROR = 0, 1, 2

# The agent's attribute keys (flowscope_agent.hooks, which the engine may not import).
SYSTEM, DESTINATION, OPERATION, MESSAGE_ID, CONVERSATION = "messaging.system", "messaging.destination.name", "messaging.operation.type", "messaging.message.id", "messaging.message.conversation_id"
CONSUMER_GROUP = "messaging.consumer.group.name"
MESSAGE_TYPE, APP, PRODUCER_NAME, CONSUMER_NAME, WORKER = "flowscope.message_type", "flowscope.app", "flowscope.producer", "flowscope.consumer", "flowscope.worker"
ATTEMPT, OUTCOME, FINAL, STATE = "flowscope.attempt", "flowscope.outcome", "flowscope.final_attempt", "flowscope.state"
SCHEDULED, SCHEDULED_FOR, QUEUE_WAIT_MS = "flowscope.scheduled", "flowscope.scheduled_for", "flowscope.queue_wait_ms"
RUNTIME_MS, SOURCE = "flowscope.runtime_ms", "flowscope.source"
FROM_EVENTS = "celery-events"  # SOURCE's value: what the agent would have seen, read from the app's events


def trace_id_of(root_id: str) -> str:
    """A UUID root id is the trace id as written (so a root task id finds its trace); any other
    id is hashed into one."""
    try:
        value = uuid.UUID(root_id).hex
    except ValueError:
        value = ""
    if value and value != "0" * 32:
        return value
    return hashlib.sha256(f"celery-root:{root_id}".encode()).hexdigest()[:32]


def span_id_of(task_id: str, side: str, retries: int) -> str:
    """`side` is "send" or "process"; `retries` the attempt's retry count (0 for the first)."""
    digest = hashlib.sha256(f"{task_id}:{side}:{retries}".encode()).hexdigest()[:16]
    return digest if digest != "0" * 16 else "1" * 16


def ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def common(*, app: str, name: str, task_id: str, operation: str, queue: str, root_id: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {SYSTEM: "celery", OPERATION: operation, "messaging.operation.name": operation, MESSAGE_TYPE: name, APP: app, MESSAGE_ID: task_id, SOURCE: FROM_EVENTS}
    if queue:
        attributes[DESTINATION] = queue
    if root_id:
        attributes[CONVERSATION] = root_id
    return attributes


def exception_type(exception: str, traceback: str) -> str:
    """The exception's type as the agent writes it ("module.Qualname"), from what the event has:
    the traceback's last line names it with its module ("shop.errors.Declined: ..."), a builtin
    without one ("ValueError: ..."); the repr only by class ("Declined('...')")."""
    last = traceback.strip().rsplit("\n", 1)[-1] if traceback.strip() else ""
    head = last.split(":", 1)[0].strip()
    if not (head and " " not in head and head.replace(".", "").replace("_", "").isalnum()):
        head = exception.split("(", 1)[0].strip()
    if not head or " " in head:
        return "Exception"
    return f"builtins.{head}" if "." not in head and isinstance(getattr(builtins, head, None), type) else head


def span(
    *,
    trace_id: str,
    span_id: str,
    parent: str,
    name: str,
    kind: int,
    app: str,
    start: float,
    end: float,
    status: int,
    message: str = "",
    attributes: dict[str, Any],
    error: tuple[str, str, str] | None = None,
) -> dict[str, Any]:
    """`error` is (type, message, traceback) for an exception event, as the agent records it.

    The attributes are this module's keys with names, ids and hosts for values, never a task's
    data: only the exception's text, which may quote it, is redacted (the per-key redaction of
    the OTLP receiver cost four fifths of the watcher's time, profiled at 10,000 tasks)."""
    events = []
    if error is not None:
        events.append(["exception", ns(end), {"exception.type": error[0], "exception.message": redact_text(error[1][:2000]), "exception.stacktrace": redact_text(error[2][-8000:])}])
    return {
        "t": trace_id,
        "s": span_id,
        "p": parent,
        "n": redact_text(name),
        "k": kind,
        "sv": app,
        "st": ns(start),
        "en": ns(max(start, end)),
        "sc": status,
        "sm": redact_text(message)[:500],
        "a": attributes,
        "e": events,
        "l": [],
    }
