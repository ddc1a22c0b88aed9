"""What the agent sees, through Celery's public signals only; connected in connect(), disconnected in disconnect().

    send <task>      PRODUCER, one per publish (a retry's republish too), in the publisher's trace
    process <task>   CONSUMER, one per execution, child of the send that carried it

The W3C traceparent of the send span goes into the task message's headers on publish and comes
out of the task's request on execution; the process span is the current span while the task
runs, so a task sent from a task is a child of it: one trace from the first publish to the last
task (a new trace per task is opentelemetry-python-contrib #609).

Nothing here changes the app: no setting, route, serializer or task behaviour. The only writes
are message headers: the trace context (the ones every OpenTelemetry propagator adds), the
publish time (for queue wait) and who sent it (the flow graph's task-to-task edge: the worker
running the task cannot tell otherwise which task, or which producer, sent it). A handler that
fails logs and lets the task go on.

Canvases need nothing of their own: Celery 5.7 sends a chain's next step, and (with a result
backend that joins chords natively, such as Redis) a chord's callback from on_chord_part_return,
inside the trace of the task that just finished, before task_postrun: its process span is still
current, so that task is the sender. A group is one send per member from whoever applied it.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import traceback
import types
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery import current_app, signals
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from flowscope_agent.config import Config
from flowscope_agent.deadletters import REQUEUE_OF, Outbox, call_of, frames_of, requeue_of
from flowscope_agent.export import Reporter
from flowscope_agent.live import Live
from flowscope_agent.requeues import Poller

log = logging.getLogger("flowscope_agent")
PROPAGATOR = TraceContextTextMapPropagator()
PUBLISHED = "flowscope_published"  # header: epoch seconds of the publish, for queue wait
SENT_BY = "flowscope_sent_by"  # header: the sender's graph node, handler:<task> or service:<app>
CONTEXT_HEADERS = ("traceparent", "tracestate")
MAX_RECEIVED = 4096  # requests noted on receipt in a worker's main process; past it the oldest is forgotten
MAX_OPEN = 10_000  # spans open at once per process; past it the oldest is ended (a publish that raised)

# Attribute keys (OpenTelemetry messaging conventions, flowscope.* for the rest). Every span is
# encoded in the app's process and decoded by the console, so a key that only repeats another
# is left out: messaging.operation.name (= the operation type) and messaging.consumer.group.name
# (= flowscope.consumer, which the console's graph reads first).
SYSTEM, DESTINATION, OPERATION, MESSAGE_ID, CONVERSATION = "messaging.system", "messaging.destination.name", "messaging.operation.type", "messaging.message.id", "messaging.message.conversation_id"
MESSAGE_TYPE, APP, PRODUCER, CONSUMER, WORKER = "flowscope.message_type", "flowscope.app", "flowscope.producer", "flowscope.consumer", "flowscope.worker"
ATTEMPT, OUTCOME, FINAL, STATE = "flowscope.attempt", "flowscope.outcome", "flowscope.final_attempt", "flowscope.state"
SCHEDULED, SCHEDULED_FOR, QUEUE_WAIT_MS = "flowscope.scheduled", "flowscope.scheduled_for", "flowscope.queue_wait_ms"


def _quiet(handler: Callable[..., None]) -> Callable[..., None]:
    """A signal handler that never raises into Celery: the app runs on whatever the agent does."""

    @functools.wraps(handler)
    def safe(*args: Any, **kwargs: Any) -> None:
        try:
            handler(*args, **kwargs)
        except Exception:
            log.exception("flowscope-agent: %s failed; the task is not affected", handler.__name__)

    return safe


def _get(carrier: Any, key: str) -> Any:
    """A header from a task request (protocol 2 lifts headers onto it) or a headers dict."""
    value = carrier.get(key) if isinstance(carrier, dict) else getattr(carrier, key, None)
    if value is None:
        headers = carrier.get("headers") if isinstance(carrier, dict) else getattr(carrier, "headers", None)
        if isinstance(headers, dict):
            value = headers.get(key)
    return value


def _facts(request: Any) -> dict[str, Any]:
    """What a dead letter needs from a request: a task's Context (in the process running it) or a
    worker's Request (task_received, in the main process; its headers in request_dict)."""
    headers = getattr(request, "request_dict", None)

    def get(key: str) -> Any:
        return headers.get(key) if isinstance(headers, dict) else _get(request, key)

    return {
        "delivery": dict(getattr(request, "delivery_info", None) or {}),
        "traceparent": get("traceparent"),
        "requeue_of": get(REQUEUE_OF),
        "retries": get("retries"),
        "root_id": get("root_id"),
        "parent_id": get("parent_id"),
        "hostname": getattr(request, "hostname", None),
    }


def _context_of(carrier: Any) -> otel_context.Context:
    found = {k: v for k in CONTEXT_HEADERS if isinstance(v := _get(carrier, k), str)}
    return PROPAGATOR.extract(found)


def _error_status(span: Span, exc: BaseException | str | None) -> None:
    if isinstance(exc, BaseException):
        span.add_event(
            "exception",
            {
                "exception.type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "exception.message": str(exc)[:2000],
                "exception.stacktrace": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:],
            },
        )
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))
    else:
        span.set_status(Status(StatusCode.ERROR, str(exc or "failed")[:500]))


class Agent:
    """The handlers and the spans they hold open, per process."""

    def __init__(self, config: Config, app: Any = None) -> None:
        self.config = config
        self.app = app
        self.lock = threading.Lock()
        self._reporter: Reporter | None = None
        self._outbox: Outbox | None = None
        self.poller: tuple[int, Poller] | None = None
        self.received: dict[str, dict[str, Any]] = {}  # task id -> _facts, in the process that receives
        self.publishing: dict[str, Span] = {}
        self.running: dict[str, tuple[Span, object]] = {}
        self.live = Live(config, self.app_name)
        # The live handlers first: on worker_shutdown the worker says offline before the outboxes close.
        self.handlers: list[tuple[Any, Callable[..., None]]] = [(signal, _quiet(handler)) for signal, handler in self.live.handlers] + [
            (signals.before_task_publish, self.before_publish),
            (signals.after_task_publish, self.after_publish),
            (signals.task_prerun, self.prerun),
            (signals.task_retry, self.retried),
            (signals.task_failure, self.failed),
            (signals.task_failure, self.dead),
            (signals.task_success, self.succeeded),
            (signals.task_received, self.received_request),
            (signals.worker_ready, self.worker_ready),
            (signals.task_postrun, self.postrun),
            (signals.task_revoked, self.revoked),
            (signals.task_rejected, self.rejected),
            (signals.task_unknown, self.unknown),
            (signals.worker_process_init, self.process_init),
            (signals.worker_process_shutdown, self.process_shutdown),
            (signals.worker_shutdown, self.process_shutdown),
        ]

    # --- connecting ---

    def connect(self) -> None:
        for signal, handler in self.handlers:
            signal.connect(handler, weak=False)

    def disconnect(self) -> dict[str, int] | None:
        for signal, handler in self.handlers:
            signal.disconnect(handler)
        return self.shutdown()

    # --- this process's reporter ---

    def app_name(self) -> str:
        """FLOWSCOPE_APP, else the app's main name; fixed with this process's reporter."""
        reporter = self._reporter
        if reporter is not None and reporter.pid == os.getpid():
            return reporter.app_name
        return self.config.app_name or getattr(self.app or current_app, "main", None) or "celery"

    def reporter(self) -> Reporter:
        reporter = self._reporter
        if reporter is None or reporter.pid != os.getpid():  # first use, or the first after a fork
            with self.lock:
                if self._reporter is None or self._reporter.pid != os.getpid():
                    self._reporter = Reporter(self.config, self.app_name())
                    self.publishing.clear()
                    self.running.clear()
                reporter = self._reporter
        return reporter

    def stats(self) -> dict[str, int]:
        reporter = self._reporter
        if reporter is None or reporter.pid != os.getpid():
            return {"ended": 0, "exported": 0, "failed": 0, "dropped": 0, "held": 0}
        return reporter.counts.as_dict()

    def outbox(self) -> Outbox:
        """This process's dead-letter reports (made on first use, and anew after a fork)."""
        outbox = self._outbox
        if outbox is None or outbox.pid != os.getpid():
            with self.lock:
                if self._outbox is None or self._outbox.pid != os.getpid():
                    self._outbox = Outbox(self.config, self.app_name())
                outbox = self._outbox
        return outbox

    def shutdown(self) -> dict[str, int] | None:
        self.live.close()
        poller, self.poller = self.poller, None
        if poller is not None and poller[0] == os.getpid():
            poller[1].stop()
        outbox, self._outbox = self._outbox, None
        if outbox is not None and outbox.pid == os.getpid():
            outbox.close()
        reporter, self._reporter = self._reporter, None
        if reporter is None or reporter.pid != os.getpid():
            return None
        return reporter.shutdown()

    @_quiet
    def process_init(self, **_: Any) -> None:
        self._reporter = None  # the parent's, if any, belongs to the parent
        self.received = {}
        self.reporter()

    @_quiet
    def process_shutdown(self, **_: Any) -> None:
        self.shutdown()

    def _common(self, name: str, queue: str | None, task_id: str | None, operation: str) -> dict[str, Any]:
        attributes: dict[str, Any] = {SYSTEM: "celery", OPERATION: operation, MESSAGE_TYPE: name, APP: self.app_name()}
        if queue:
            attributes[DESTINATION] = queue
        if task_id:
            attributes[MESSAGE_ID] = task_id
        return attributes

    @staticmethod
    def _hold(table: dict[str, Any], key: str, value: Any) -> None:
        if len(table) >= MAX_OPEN:  # a publish that raised never reaches after_task_publish
            stale = table.pop(next(iter(table)))
            (stale[0] if isinstance(stale, tuple) else stale).end()
        table[key] = value

    # --- publishing ---

    @_quiet
    def before_publish(
        self, sender: Any = None, body: Any = None, exchange: str | None = None, routing_key: str | None = None, headers: dict[str, Any] | None = None, declare: Any = None, **_: Any
    ) -> None:
        if headers is None:
            return  # nowhere to carry the context: the start-up check says why
        task_id = headers.get("id") or (body.get("id") if isinstance(body, dict) else None)
        name = str(headers.get("task") or sender or "unknown")
        queues = [q.name for q in declare or () if getattr(q, "name", None)]
        attributes = self._common(name, queues[0] if queues else (routing_key or exchange), task_id, "send")
        # Sent from a running task (its process span is current): the task is the producer.
        running = getattr(trace.get_current_span(), "attributes", None) or {}
        parent_name = running.get(CONSUMER)
        attributes[PRODUCER] = f"handler:{parent_name}" if parent_name else f"service:{self.app_name()}"
        attributes[ATTEMPT] = int(headers.get("retries") or 0) + 1
        if headers.get("root_id"):
            attributes[CONVERSATION] = str(headers["root_id"])
        if headers.get("eta"):
            attributes[SCHEDULED], attributes[SCHEDULED_FOR] = True, str(headers["eta"])
        span = self.reporter().tracer.start_span(f"send {name}", kind=SpanKind.PRODUCER, attributes=attributes)
        PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
        headers[PUBLISHED] = time.time()
        # A retry, republished by the failing attempt itself, carries that attempt's sender on: the
        # graph counts every attempt of a task on the edge from whoever sent it first.
        retry = attributes[ATTEMPT] > 1 and parent_name == name and isinstance(running.get(PRODUCER), str)
        headers[SENT_BY] = running[PRODUCER] if retry else attributes[PRODUCER]
        if task_id:
            self._hold(self.publishing, str(task_id), span)
        else:
            span.end()

    @_quiet
    def after_publish(self, sender: Any = None, body: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
        task_id = (headers or {}).get("id") or (body.get("id") if isinstance(body, dict) else None)
        span = self.publishing.pop(str(task_id), None)
        if span is not None:
            span.set_status(Status(StatusCode.OK))
            span.end()

    # --- executing ---

    @_quiet
    def prerun(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if task is None or task_id is None:
            return
        request = task.request
        started = time.time()
        delivery = getattr(request, "delivery_info", None) or {}
        attributes = self._common(task.name, delivery.get("routing_key") or delivery.get("exchange"), task_id, "process")
        attributes.update({CONSUMER: task.name, WORKER: str(getattr(request, "hostname", "") or ""), ATTEMPT: int(getattr(request, "retries", 0) or 0) + 1})
        if getattr(request, "root_id", None):
            attributes[CONVERSATION] = str(request.root_id)
        eta = getattr(request, "eta", None)
        if eta:
            attributes[SCHEDULED], attributes[SCHEDULED_FOR] = True, eta.isoformat() if isinstance(eta, datetime) else str(eta)
        published = _get(request, PUBLISHED)
        if isinstance(published, (int, float)):
            attributes[QUEUE_WAIT_MS] = round(max(0.0, started - published) * 1000, 3)
        sent_by = _get(request, SENT_BY)
        if isinstance(sent_by, str) and sent_by:
            attributes[PRODUCER] = sent_by[:300]
        span = self.reporter().tracer.start_span(f"process {task.name}", context=_context_of(request), kind=SpanKind.CONSUMER, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        self._hold(self.running, str(task_id), (span, token))

    @_quiet
    def retried(self, request: Any = None, reason: Any = None, **_: Any) -> None:
        held = self.running.get(str(getattr(request, "id", "")))
        if held is not None:
            held[0].set_attribute(OUTCOME, "retried")
            held[0].set_attribute(FINAL, False)
            _error_status(held[0], getattr(reason, "exc", None) or reason)

    @_quiet
    def failed(self, task_id: str | None = None, exception: BaseException | None = None, **_: Any) -> None:
        held = self.running.get(str(task_id))
        if held is not None:
            held[0].set_attribute(OUTCOME, "failed")
            held[0].set_attribute(FINAL, True)
            _error_status(held[0], exception)

    @_quiet
    def dead(self, sender: Any = None, task_id: str | None = None, exception: BaseException | None = None, args: Any = None, kwargs: Any = None, einfo: Any = None, **signal: Any) -> None:
        """task_failure: the task failed for good (a retry still pending is task_retry): report the exact call."""
        if sender is None or exception is None:
            return
        request = getattr(sender, "request", None)
        # In the pool process the failing request is current. Where the main process reports (a
        # reject, a worker lost: celery 5.7.0 pushes no request there) it noted the request on receipt.
        if request is not None and getattr(request, "id", None) == task_id:
            facts = _facts(request)
            self.received.pop(str(task_id), None)
        else:
            facts = self.received.pop(str(task_id), None) or {}
        held = self.running.get(str(task_id))
        traceparent = facts.get("traceparent") if isinstance(facts.get("traceparent"), str) else ""  # the trace it was sent in
        if held is not None:  # the failing execution's own span
            context = held[0].get_span_context()
            traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
        # A traceback object in the pool process; the pool process's text of it where the main
        # process reports (a worker lost, a reject: celery 5.7.0's Request.on_failure).
        given = signal.get("traceback")
        tb = given if isinstance(given, types.TracebackType) else exception.__traceback__
        if isinstance(given, str) and given:
            text = given
        elif tb is not None:
            text = "".join(traceback.format_exception(type(exception), exception, tb))
        else:
            text = str(getattr(einfo, "traceback", "") or "")
        report = {
            "task": str(sender.name),
            "task_id": str(task_id),
            **call_of(args, kwargs),
            "routing": self._routing(sender, facts.get("delivery") or {}),
            "error_type": f"{type(exception).__module__}.{type(exception).__qualname__}"[:300],
            "error_message": str(exception)[:20_000],
            "traceback": text[-100_000:],
            "frames": frames_of(tb),
            "attempts": int(facts.get("retries") or 0) + 1,
            "traceparent": traceparent,
            "root_id": str(facts.get("root_id") or ""),
            "parent_id": str(facts.get("parent_id") or ""),
            "worker": str(facts.get("hostname") or ""),
        }
        again = requeue_of(facts.get("requeue_of"))
        if again:
            report["requeue_of"] = again
        self.outbox().put("dead", report)

    @staticmethod
    def _routing(task: Any, delivery: dict[str, Any]) -> dict[str, Any]:
        """How the message arrived, and the app's queue bound that way: what a requeue sends it by."""
        exchange, routing_key = str(delivery.get("exchange") or ""), str(delivery.get("routing_key") or "")
        queues = task.app.amqp.queues
        # Celery sends to a direct queue of the same name through the default exchange (""),
        # which routes by queue name.
        queue = routing_key if not exchange and routing_key in queues else ""
        if not queue and (exchange or routing_key):
            for candidate in queues.values():
                if candidate.routing_key == routing_key and (getattr(candidate.exchange, "name", "") or "") == exchange:
                    queue = candidate.name
                    break
        routing: dict[str, Any] = {"queue": queue, "exchange": exchange, "routing_key": routing_key}
        if isinstance(delivery.get("priority"), int):
            routing["priority"] = delivery["priority"]
        return routing

    @_quiet
    def received_request(self, request: Any = None, **_: Any) -> None:
        """task_received, in the worker's main process: what a failure reported there will need."""
        task_id = getattr(request, "id", None)
        if task_id:
            if len(self.received) >= MAX_RECEIVED:
                self.received.pop(next(iter(self.received)))
            self.received[str(task_id)] = _facts(request)

    @_quiet
    def succeeded(self, sender: Any = None, **_: Any) -> None:
        """task_success of a requeued copy: its dead letter is resolved."""
        request = getattr(sender, "request", None)
        if request is None:
            return
        self.received.pop(str(request.id), None)  # a solo or threads pool receives and runs in one process
        again = requeue_of(_get(request, REQUEUE_OF))
        if again:
            self.outbox().put("resolved", {"task_id": str(request.id), "requeue_of": again})

    @_quiet
    def worker_ready(self, sender: Any = None, **_: Any) -> None:
        """Only a worker's main process sees this: the one process of the worker that takes requeue orders."""
        if not self.config.url or self.poller is not None:
            return
        poller = Poller(self.config, getattr(sender, "app", None) or self.app or current_app, self.app_name())
        self.poller = (os.getpid(), poller)
        poller.start()

    @_quiet
    def postrun(self, task_id: str | None = None, state: str | None = None, **_: Any) -> None:
        held = self.running.pop(str(task_id), None)
        if held is None:
            return
        span, token = held
        if state:
            span.set_attribute(STATE, state)
        if state == "SUCCESS":
            span.set_attribute(OUTCOME, "succeeded")
            span.set_status(Status(StatusCode.OK))
        elif state and not span.attributes.get(OUTCOME):  # type: ignore[attr-defined]
            span.set_attribute(OUTCOME, state.lower())
        try:
            otel_context.detach(token)  # type: ignore[arg-type]
        finally:
            span.end()

    # --- never ran ---

    def _never_ran(self, name: str, task_id: str | None, carrier: Any, outcome: str, worker: str, reason: str) -> None:
        attributes = self._common(name, None, task_id, "process")
        attributes.update({CONSUMER: name, OUTCOME: outcome, WORKER: worker})
        span = self.reporter().tracer.start_span(f"process {name}", context=_context_of(carrier), kind=SpanKind.CONSUMER, attributes=attributes)
        span.set_status(Status(StatusCode.ERROR, reason[:500]))
        span.end()

    @_quiet
    def revoked(self, sender: Any = None, request: Any = None, terminated: bool = False, expired: bool = False, **_: Any) -> None:
        """`request` is the task's Context (headers lifted onto it), in the process that revoked it."""
        task_id = str(getattr(request, "id", "") or "")
        held = self.running.get(task_id)
        outcome = "expired" if expired else "revoked"
        if held is not None:  # terminated while running: postrun ends it
            held[0].set_attribute(OUTCOME, outcome)
            held[0].set_status(Status(StatusCode.ERROR, outcome))
            return
        name = str(getattr(sender, "name", None) or getattr(request, "task", None) or "unknown")
        self._never_ran(name, task_id or None, request, outcome, str(getattr(request, "hostname", "") or ""), f"{outcome} before it ran")

    @_quiet
    def rejected(self, message: Any = None, exc: BaseException | None = None, **_: Any) -> None:
        headers = getattr(message, "headers", None) or {}
        self._never_ran(str(headers.get("task") or "unknown"), headers.get("id"), headers, "rejected", "", f"rejected: {exc}")

    @_quiet
    def unknown(self, message: Any = None, exc: BaseException | None = None, name: str | None = None, id: str | None = None, **_: Any) -> None:
        headers = getattr(message, "headers", None) or {}
        self._never_ran(str(name or "unknown"), id, headers, "unknown", "", f"no worker task named {name!r}")
