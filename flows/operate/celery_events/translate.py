"""From checked Celery events to spans, task states, workers and dead letters.

One Translator per watched app, fed events in the order the broker gives them, by one thread.
It remembers what each task's earlier events said (its name, call reprs, root and parent, when it
was sent, received and started), since a later event does not repeat it (task-failed carries no
name); at most MAX_TASKS tasks, the oldest forgotten first. A task whose first events it missed
(the watcher started late) still gets its span, named "unknown" when nothing said its name.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

from flows.operate.celery_events import spans as s

MAX_TASKS = 50_000
MAX_OPEN_ATTEMPTS = 4
MAX_REPR = 2_000  # args and kwargs reprs kept per task: Celery truncates its own, a custom one may not

# Event type -> (the live task list's state, Celery's state name as the agent's flowscope.state has it).
STATES = {
    "task-received": ("received", "RECEIVED"),
    "task-started": ("started", "STARTED"),
    "task-succeeded": ("succeeded", "SUCCESS"),
    "task-failed": ("failed", "FAILURE"),
    "task-retried": ("retried", "RETRY"),
    "task-revoked": ("revoked", "REVOKED"),
}
ENDS = {"task-succeeded": "succeeded", "task-failed": "failed", "task-retried": "retried", "task-revoked": "revoked", "task-rejected": "rejected"}


@dataclasses.dataclass(slots=True)
class Attempt:
    """One execution of a task: what its own events said."""

    retries: int
    sent_at: float | None = None  # from its task-sent event, when the app sends them
    received_at: float | None = None
    started_at: float | None = None
    worker: str = ""


@dataclasses.dataclass(slots=True)
class Memo:
    """What earlier events said of one task, and of its attempts not yet ended.

    Only task-sent and task-received name the attempt (retries); started, retried, succeeded
    and failed do not, and a retry's task-received may come before the task-retried of the
    attempt that sent it (the copy is published while that attempt still runs). So an attempt
    starts at the lowest open attempt not yet started, task-retried ends the lowest open one,
    and a final outcome the highest."""

    name: str = ""
    root_id: str = ""
    parent_id: str = ""
    args: str = ""
    kwargs: str = ""
    retries: int = 0  # the highest attempt seen
    queue: str = ""
    exchange: str = ""
    routing_key: str = ""
    eta: str = ""
    worker: str = ""
    ran: int | None = None  # retries of its last execution that ended: its children's parent span
    open: dict[int, Attempt] = dataclasses.field(default_factory=dict)

    def attempt(self, retries: int) -> Attempt:
        found = self.open.get(retries)
        if found is None:
            if len(self.open) >= MAX_OPEN_ATTEMPTS:  # attempts whose end never came
                self.open.pop(min(self.open))
            found = self.open[retries] = Attempt(retries)
        return found

    def to_start(self) -> Attempt:
        waiting = [a for r, a in sorted(self.open.items()) if a.started_at is None]
        return waiting[0] if waiting else self.attempt(self.retries)

    def to_end(self, *, final: bool) -> Attempt:
        if not self.open:
            return self.attempt(self.retries)
        return self.open.pop(max(self.open) if final else min(self.open))


@dataclasses.dataclass
class Output:
    """What a batch of events made, for the watcher to write."""

    spans: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    tasks: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    workers: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # the latest per hostname
    deaths: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.spans) + len(self.tasks) + len(self.workers) + len(self.deaths)


class Translator:
    def __init__(self, app: str, *, max_tasks: int = MAX_TASKS) -> None:
        self.app = app
        self.max_tasks = max_tasks
        self.tasks: OrderedDict[str, Memo] = OrderedDict()
        self.sent_events = 0  # task-sent seen: without any, queues and queue waits stay unknown
        self.task_events: dict[str, int] = {}  # per worker hostname, task events seen
        self.forgotten = 0

    def memo(self, task_id: str) -> Memo:
        memo = self.tasks.get(task_id)
        if memo is None:
            if len(self.tasks) >= self.max_tasks:
                self.tasks.popitem(last=False)
                self.forgotten += 1
            memo = self.tasks[task_id] = Memo()
        else:
            self.tasks.move_to_end(task_id)
        return memo

    def trace_of(self, task_id: str, memo: Memo) -> str:
        return s.trace_id_of(memo.root_id or task_id)

    def parent_execution(self, memo: Memo) -> str:
        """The process span a task was sent from: its parent task's last execution, else none."""
        if not memo.parent_id:
            return ""
        parent = self.tasks.get(memo.parent_id)
        retries = parent.ran if parent is not None and parent.ran is not None else (parent.retries if parent is not None else 0)
        return s.span_id_of(memo.parent_id, "process", retries)

    def take(self, event: dict[str, Any], out: Output) -> None:
        kind = event["type"]
        if kind.startswith("worker-"):
            self._worker(event, out)
            return
        task_id, at = event["uuid"], float(event["timestamp"])
        memo = self.memo(task_id)
        self._note(memo, event)
        hostname = (event.get("hostname") or "") if kind != "task-sent" else ""  # a producer's host is no worker
        if hostname:
            memo.worker = hostname
            self.task_events[hostname] = self.task_events.get(hostname, 0) + 1
        if kind == "task-sent":
            self.sent_events += 1
            attempt = memo.attempt(event.get("retries") or 0)
            attempt.sent_at = at
            out.spans.append(self._send_span(task_id, memo, attempt, at))
            return
        if kind == "task-received":
            attempt = memo.attempt(event.get("retries") or 0)
            attempt.received_at = at
        elif kind == "task-started":
            attempt = memo.to_start()
            attempt.started_at = at
        elif kind in ENDS:
            attempt = memo.to_end(final=kind != "task-retried")
            memo.ran = attempt.retries
            out.spans.append(self._process_span(task_id, memo, attempt, event, at))
        else:
            return
        attempt.worker = hostname or attempt.worker
        if kind in STATES:
            out.tasks.append(self._task_row(task_id, memo, attempt, event, at))
        if kind == "task-failed":
            out.deaths.append(self._death(task_id, memo, attempt, event))

    @staticmethod
    def _note(memo: Memo, event: dict[str, Any]) -> None:
        for field in ("name", "root_id", "parent_id", "queue", "exchange", "routing_key", "eta"):
            value = event.get(field)
            if value:
                setattr(memo, field, value)
        for field in ("args", "kwargs"):
            if event.get(field):
                setattr(memo, field, event[field][:MAX_REPR])
        if isinstance(event.get("retries"), int):
            memo.retries = max(memo.retries, event["retries"])

    def _send_span(self, task_id: str, memo: Memo, attempt: Attempt, at: float) -> dict[str, Any]:
        name = memo.name or "unknown"
        attributes = s.common(app=self.app, name=name, task_id=task_id, operation="send", queue=memo.queue or memo.routing_key, root_id=memo.root_id)
        attributes[s.PRODUCER_NAME] = self._sender(memo)
        attributes[s.ATTEMPT] = attempt.retries + 1
        if memo.eta:
            attributes[s.SCHEDULED], attributes[s.SCHEDULED_FOR] = True, memo.eta
        # A retry is sent by the attempt that failed; a first attempt by the task it was sent from.
        parent = s.span_id_of(task_id, "process", attempt.retries - 1) if attempt.retries else self.parent_execution(memo)
        return s.span(
            trace_id=self.trace_of(task_id, memo),
            span_id=s.span_id_of(task_id, "send", attempt.retries),
            parent=parent,
            name=f"send {name}",
            kind=s.PRODUCER,
            app=self.app,
            start=at,
            end=at,
            status=s.OK,
            attributes=attributes,
        )

    def _sender(self, memo: Memo) -> str:
        """Who sent the task: the task it was sent from, else the app's producer (a retry keeps its first sender)."""
        parent_memo = self.tasks.get(memo.parent_id) if memo.parent_id else None
        return f"handler:{parent_memo.name}" if parent_memo is not None and parent_memo.name else f"service:{self.app}"

    def _process_span(self, task_id: str, memo: Memo, attempt: Attempt, event: dict[str, Any], at: float) -> dict[str, Any]:
        kind, name = event["type"], memo.name or "unknown"
        outcome = ENDS[kind]
        runtime = event.get("runtime")
        start = attempt.started_at or (at - runtime if runtime is not None else attempt.received_at or at)
        attributes = s.common(app=self.app, name=name, task_id=task_id, operation="process", queue=memo.queue or memo.routing_key, root_id=memo.root_id)
        # The sender too, as the agent's process spans carry it: the flow graph draws task to task.
        attributes.update(
            {s.CONSUMER_GROUP: name, s.CONSUMER_NAME: name, s.PRODUCER_NAME: self._sender(memo), s.WORKER: attempt.worker or memo.worker, s.ATTEMPT: attempt.retries + 1, s.OUTCOME: outcome}
        )
        if kind in STATES:
            attributes[s.STATE] = STATES[kind][1]
        if kind in ("task-failed", "task-retried"):
            attributes[s.FINAL] = kind == "task-failed"
        if runtime is not None:
            attributes[s.RUNTIME_MS] = round(runtime * 1000, 3)
        if attempt.sent_at is not None and attempt.started_at is not None:
            attributes[s.QUEUE_WAIT_MS] = round(max(0.0, attempt.started_at - attempt.sent_at) * 1000, 3)
        if memo.eta:
            attributes[s.SCHEDULED], attributes[s.SCHEDULED_FOR] = True, memo.eta
        error, status, message = None, s.OK, ""
        if kind != "task-succeeded":
            status = s.ERROR
            exception, traceback = event.get("exception") or "", event.get("traceback") or ""
            message = exception or outcome
            if exception or traceback:
                error = (s.exception_type(exception, traceback), exception, traceback)
            if kind == "task-revoked":
                message = "expired" if event.get("expired") else ("terminated" if event.get("terminated") else "revoked")
        # Its own send span when the app sends task-sent events; else the execution it was sent from.
        if attempt.sent_at is not None:
            parent = s.span_id_of(task_id, "send", attempt.retries)
        else:
            parent = s.span_id_of(task_id, "process", attempt.retries - 1) if attempt.retries else self.parent_execution(memo)
        return s.span(
            trace_id=self.trace_of(task_id, memo),
            span_id=s.span_id_of(task_id, "process", attempt.retries),
            parent=parent,
            name=f"process {name}",
            kind=s.CONSUMER,
            app=self.app,
            start=start,
            end=at,
            status=status,
            message=message,
            attributes=attributes,
            error=error,
        )

    def _task_row(self, task_id: str, memo: Memo, attempt: Attempt, event: dict[str, Any], at: float) -> dict[str, Any]:
        return {
            "id": task_id,
            "name": memo.name,
            "state": STATES[event["type"]][0],
            "at": at,
            # The attempt, so the live list orders a retry's copy after the attempt that sent it
            # whatever the clocks say: the copy may succeed in one pool process before the other
            # process's task-retried is sent.
            "retries": attempt.retries,
            "worker": attempt.worker or memo.worker,
            "queue": memo.queue or memo.routing_key,
            "runtime_s": event.get("runtime"),
            "args": memo.args,
            "kwargs": memo.kwargs,
            "exception": event.get("exception") or "",
            "trace_id": self.trace_of(task_id, memo),
        }

    def _death(self, task_id: str, memo: Memo, attempt: Attempt, event: dict[str, Any]) -> dict[str, Any]:
        """The agent's dead-letter report (console.api.agent.Death), from what events tell: no call."""
        exception, traceback = event.get("exception") or "", event.get("traceback") or ""
        error_type = s.exception_type(exception, traceback)
        last = traceback.strip().rsplit("\n", 1)[-1] if traceback.strip() else ""
        short = error_type.removeprefix("builtins.")
        message = last.split(":", 1)[1].strip() if last.startswith(short + ":") else exception
        trace_id = self.trace_of(task_id, memo)
        return {
            "task": memo.name or "unknown",
            "task_id": task_id,
            "args": None,
            "kwargs": None,
            "requeueable": False,
            "call_repr": f"{NOT_REQUEUEABLE} Seen as: args={memo.args or '?'} kwargs={memo.kwargs or '?'}"[:10_000],
            "routing": {"queue": memo.queue, "exchange": memo.exchange, "routing_key": memo.routing_key},
            "error_type": error_type[:300],
            "error_message": message[:20_000],
            "traceback": traceback[-100_000:],
            "frames": [],
            "attempts": attempt.retries + 1,
            "traceparent": f"00-{trace_id}-{s.span_id_of(task_id, 'process', attempt.retries)}-01",
            "root_id": memo.root_id,
            "parent_id": memo.parent_id,
            "worker": attempt.worker or memo.worker,
        }

    def _worker(self, event: dict[str, Any], out: Output) -> None:
        hostname = event["hostname"]
        out.workers[hostname] = {
            "hostname": hostname,
            "at": float(event["timestamp"]),
            "online": event["type"] != "worker-offline",
            "pool": "",  # not in Celery's heartbeats
            "concurrency": None,
            "active": event.get("active"),
            "processed": event.get("processed"),
        }


NOT_REQUEUEABLE = (
    "Seen through Celery's events only (manage.py watch_celery, no flowscope-agent in the app): events carry args and kwargs as "
    "truncated reprs, not the call, so this task cannot be requeued exactly, and no agent runs in the app to send a requeue on "
    "its broker. Run its workers through flowscope-agent for exact requeue."
)
