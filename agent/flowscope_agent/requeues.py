"""Requeue and revoke orders from the console, sent on the app's own broker: its credentials never leave it.

One poller per worker, in its main process (started on worker_ready, which only the main process
sees; pool processes and producers never poll). Every FLOWSCOPE_REQUEUE_POLL_S seconds (1) it
leases the app's pending orders (GET FLOWSCOPE_URL/api/v1/agent/requeues), sends each with the
app's `send_task` (the recorded task, args, kwargs, queue, exchange, routing key and priority;
the `flowscope_requeue_of` header names the dead letter) inside the requeue span's trace
context, so the copy's `send` span starts the new trace the console opened, linked to the old
one; then acknowledges what it sent. Several workers of one app poll side by side: the console
leases each order to one of them. An order sent but not acknowledged (the console away, the
worker killed) is offered again when its lease runs out: sent at least once.

Revoke orders (GET /api/v1/agent/revokes) come the same way, in the same poll: each is carried
out with `app.control.revoke(task_id, terminate=..., signal=...)`, Celery's own broadcast to the
app's workers, then acknowledged. A revoke sent twice is harmless: the workers keep a set.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from flowscope_agent.config import Config
from flowscope_agent.deadletters import REQUEUE_OF

log = logging.getLogger("flowscope_agent")
PROPAGATOR = TraceContextTextMapPropagator()
MAX_PAUSE = 30.0


class Poller:
    def __init__(self, config: Config, app: Any, app_name: str) -> None:
        self.config = config
        self.app = app
        self.app_name = app_name
        self.stopped = threading.Event()
        self.sent = 0
        self.revoked = 0
        self.thread = threading.Thread(target=self._run, name="flowscope-agent-requeues", daemon=True)

    def start(self) -> None:
        self.thread.start()
        log.info("flowscope-agent: taking requeue orders for %s from %s every %gs", self.app_name, self.config.url, self.config.requeue_poll_s)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(self.config.export_timeout + 1)

    def _run(self) -> None:
        pause = self.config.requeue_poll_s
        while not self.stopped.wait(pause):
            try:
                self.poll_once()
                pause = self.config.requeue_poll_s
            except Exception as exc:  # the console away or refusing: try again, less often
                pause = min(MAX_PAUSE, max(self.config.requeue_poll_s, pause * 2))
                log.warning("flowscope-agent: taking requeue orders failed (%s); next try in %gs", exc, pause)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.config.token}"} if self.config.token else {})}
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.config.url + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=self.config.export_timeout) as answer:
            return json.loads(answer.read())

    def poll_once(self) -> int:
        """Lease, send, acknowledge, requeues then revokes; returns how many requeues were sent."""
        sent = self.requeue_once()
        self.revoke_once()
        return sent

    def revoke_once(self) -> int:
        query = urllib.parse.urlencode({"app": self.app_name})
        orders = self._call("GET", f"/api/v1/agent/revokes?{query}")["orders"]
        done = []
        for order in orders:
            try:
                self.app.control.revoke(order["task_id"], terminate=bool(order.get("terminate")), signal=order.get("signal") or "SIGTERM")
                done.append(order["id"])
                log.info("flowscope-agent: revoked task %s as the console ordered (terminate=%s, signal=%s)", order["task_id"], order.get("terminate"), order.get("signal"))
            except Exception:  # offered again when its lease runs out
                log.exception("flowscope-agent: revoking task %s (order %s) failed", order.get("task_id"), order.get("id"))
        if done:
            self._call("POST", "/api/v1/agent/revokes/ack", {"app": self.app_name, "ids": done})
            self.revoked += len(done)
        return len(done)

    def requeue_once(self) -> int:
        query = urllib.parse.urlencode({"app": self.app_name})
        orders = self._call("GET", f"/api/v1/agent/requeues?{query}")["orders"]
        sent = []
        for order in orders:
            try:
                self.send(order)
                sent.append(order["id"])
            except Exception:  # this one is offered again when its lease runs out
                log.exception("flowscope-agent: sending requeue order %s (%s) failed", order.get("id"), order.get("task"))
        if sent:
            self._call("POST", "/api/v1/agent/requeues/ack", {"app": self.app_name, "ids": sent})
            self.sent += len(sent)
        return len(sent)

    def send(self, order: dict[str, Any]) -> Any:
        """The recorded call, routed as it was, in the requeue's trace."""
        routing = order.get("routing") or {}
        options: dict[str, Any] = {k: routing[k] for k in ("queue", "exchange", "routing_key") if routing.get(k)}
        if routing.get("priority") is not None:
            options["priority"] = routing["priority"]
        token = otel_context.attach(PROPAGATOR.extract({"traceparent": order.get("traceparent") or ""}))
        try:
            return self.app.send_task(order["task"], args=order["args"], kwargs=order["kwargs"], headers={REQUEUE_OF: order[REQUEUE_OF]}, **options)
        finally:
            otel_context.detach(token)
