"""Live reports for the console's workers and tasks pages, Flower's view of the app.

    received   task_received, in the worker's main process: name, args and kwargs as the
               message's own repr (argsrepr/kwargsrepr: what the app chose to show), queue
    started    task_prerun, in the process that runs it
    succeeded  task_success, with its run time
    failed     task_failure (in the main process for a worker lost or a time limit), the exception
    retried    task_retry, the reason
    revoked    task_revoked, in the main process

A change is a dict appended to this process's bounded outbox (FLOWSCOPE_MAX_QUEUE; past it the
change is dropped and counted, a task never waits); one thread sends batches to
FLOWSCOPE_URL/api/v1/agent/live, lingering up to LiveOutbox.LINGER for a batch to fill. A change
of a task whose last change is still waiting is folded into it: one entry with the newest state
and every detail reported, carrying `started_at` (and `received_at`) when it folded a "started"
(a "received") in, which the console records as if it had come alone. A pool process so sends
one entry per task instead of "started" and "succeeded" apart. The console keeps the newest
state per task, so changes sent by the main and pool processes in any order end in the right state.

A receipt goes only while its task still waits in the worker: the pool process's "started"
carries what the receipt said (the call's reprs, the queue, the trace, and the time of receipt,
which the main process leaves on the request it hands the pool), so a task that has started or
finished by the time the main process sends its batch is one change at the console, not two.

The worker's main process also sends a heartbeat every FLOWSCOPE_HEARTBEAT_S (5) seconds from a
thread of its own, off the task path: pool, concurrency, active and processed counts from
Celery's worker state (what `celery inspect stats` reads), and this worker's dropped count; and
a last one saying offline on worker_shutdown. A worker whose heartbeats stop is shown offline by
the console after its timeout.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import signals
from celery.worker import state as worker_state

from flowscope_agent.config import Config
from flowscope_agent.deadletters import Outbox

MAX_REPR = 1024  # Celery's own argsrepr bound (argsrepr_maxsize): a list row, not the call
MAX_EXCEPTION = 2000
MAX_TIMED = 4096  # tasks timed at once per process; past it the oldest is forgotten
RECEIVED_AT = "flowscope_received_at"  # on a worker's request: when its main process received it
RECEIPT = "receipt"  # a "received" change the process running the task may report for it (LiveOutbox.superseded)


class LiveOutbox(Outbox):
    """Task changes and heartbeats: 200 a request keeps a full batch well under the console's 1 MiB.

    A change a task makes while its last one waits replaces it (a heartbeat, the worker's last):
    the console keeps only the newest state, and a request per change took more of a worker's
    main process than handing tasks to its pool did. A request costs the console's web process
    several milliseconds of CPU whatever it carries (under daphne, about 7 ms for a change alone
    here, 0.1 ms more a change), so a busy process's changes wait up to a second to travel together."""

    PATH = "/api/v1/agent/live"
    BATCH = 200
    LINGER = 1.0
    THREAD = "flowscope-agent-live"
    WHAT = "task changes and heartbeats"

    def key(self, kind: str, report: dict[str, Any]) -> tuple[str, str] | None:
        return ("task", report["id"]) if kind in ("task", RECEIPT) else (kind, report.get("hostname", "")) if kind == "worker" else None

    def fold(self, held: dict[str, Any], report: dict[str, Any]) -> None:
        """A newer change of one task over its older one, in one process (so in order). The
        steps the console times a task by stay as their own times: the first receipt, the last start."""
        if held.get("state") == "received":
            held["received_at"] = min(held["at"], held.get("received_at", held["at"]))
        elif held.get("state") == "started":
            held["started_at"] = held["at"]
        held.update(report)

    def body(self, batch: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        return {"app": self.app_name, "tasks": [r for k, r in batch if k in ("task", RECEIPT)], "workers": [r for k, r in batch if k == "worker"]}

    def superseded(self, batch: list[tuple[str, dict[str, Any]]]) -> set[int]:
        """Receipts of tasks a pool process has taken or finished by now: its own change carries
        everything the receipt said, its time included (Live.prerun), so the console stores one
        change a task instead of two. A task still waiting in this worker keeps its receipt: it is
        the only word of it until it starts. Read from Celery's worker state, as `celery inspect
        reserved` does; a task held for its ETA or a rate limit is never a RECEIPT (Live.received)."""
        receipts = [i for i, (kind, report) in enumerate(batch) if kind == RECEIPT and report.get("state") == "received"]
        if not receipts:
            return set()
        reserved, active = _ids(worker_state.reserved_requests), _ids(worker_state.active_requests)
        if reserved is None or active is None:
            return set()  # not read: every receipt goes, as before
        return {i for i in receipts if batch[i][1]["id"] in active or batch[i][1]["id"] not in reserved}


def _ids(requests: Any) -> set[Any] | None:
    """The ids in one of Celery's worker-state sets (weak sets, which the consumer changes while
    this thread reads: an iteration it interrupts is tried again); None if it never held still."""
    for _ in range(5):
        try:
            return {getattr(r, "id", None) for r in list(requests)}
        except RuntimeError:  # changed size during iteration
            continue
    return None


def _short(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _trace_id(traceparent: Any) -> str | None:
    parts = traceparent.split("-") if isinstance(traceparent, str) else []
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def _retries(value: Any) -> int | None:
    """Celery's retries count of an attempt (0 for the first): orders a retry's copy after the attempt that asked for it."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _pool_name(consumer: Any) -> str | None:
    """ "prefork", "solo", "threads", "eventlet", "gevent": the module of the worker's pool class."""
    pool = getattr(consumer, "pool", None)
    module = type(pool).__module__ if pool is not None else ""
    return {"thread": "threads"}.get(module.rsplit(".", 1)[-1], module.rsplit(".", 1)[-1]) if module.startswith("celery.concurrency") else (type(pool).__name__ if pool is not None else None)


class Live:
    """The live handlers and this process's outbox. `app_name` is the agent's, per process."""

    def __init__(self, config: Config, app_name: Callable[[], str]) -> None:
        self.config = config
        self.app_name = app_name
        self.lock = threading.Lock()
        self._outbox: LiveOutbox | None = None
        self.started: dict[str, float] = {}  # task id -> monotonic start, in the process running it
        self.beating: tuple[int, threading.Event, threading.Thread] | None = None
        self.worker: dict[str, Any] = {}
        self.handlers: list[tuple[Any, Callable[..., None]]] = [
            (signals.task_received, self.received),
            (signals.task_prerun, self.prerun),
            (signals.task_success, self.succeeded),
            (signals.task_failure, self.failed),
            (signals.task_retry, self.retried),
            (signals.task_revoked, self.revoked),
            (signals.worker_ready, self.worker_ready),
            (signals.worker_shutdown, self.worker_shutdown),
        ]

    def outbox(self) -> LiveOutbox:
        outbox = self._outbox
        if outbox is None or outbox.pid != os.getpid():  # first use, or the first after a fork
            with self.lock:
                if self._outbox is None or self._outbox.pid != os.getpid():
                    self._outbox = LiveOutbox(self.config, self.app_name())
                outbox = self._outbox
        return outbox

    def stats(self) -> dict[str, int]:
        outbox = self._outbox
        return dict(outbox.counts) if outbox is not None and outbox.pid == os.getpid() else {"queued": 0, "folded": 0, "superseded": 0, "sent": 0, "failed": 0, "dropped": 0}

    def close(self) -> dict[str, int] | None:
        beating, self.beating = self.beating, None
        if beating is not None and beating[0] == os.getpid():
            beating[1].set()
            beating[2].join(self.config.export_timeout + 1)
        outbox, self._outbox = self._outbox, None
        return outbox.close() if outbox is not None and outbox.pid == os.getpid() else None

    def _task(self, task_id: Any, state: str, *, kind: str = "task", at: float | None = None, **facts: Any) -> None:
        if not self.config.url or not self.config.live or not task_id:
            return
        self.outbox().put(kind, {"id": str(task_id)[:200], "state": state, "at": time.time() if at is None else at, **{k: v for k, v in facts.items() if v is not None}})

    def _runtime(self, task_id: Any) -> float | None:
        started = self.started.pop(str(task_id), None)
        return round(time.monotonic() - started, 6) if started is not None else None

    # --- tasks ---

    def received(self, request: Any = None, **_: Any) -> None:
        delivery = getattr(request, "delivery_info", None) or {}
        headers = getattr(request, "request_dict", None)
        at = time.time()
        # A task the worker runs at once may be reported by the process that runs it alone, which
        # then needs the time of receipt: the request's dict goes to that process with the task
        # (celery 5.7.0's Request.execute_using_pool passes request_dict; there is no public way
        # to hand the pool a value). One held for an ETA or a rate limit keeps its own receipt.
        if not self.config.url or not self.config.live:
            return  # nothing reported: the request is left as it came
        held = bool(getattr(request, "eta", None)) or bool(getattr(getattr(request, "task", None), "rate_limit", None))
        if isinstance(headers, dict):
            headers[RECEIVED_AT] = at
        else:
            headers, held = {}, True
        self._task(
            getattr(request, "id", None),
            "received",
            kind="task" if held else RECEIPT,
            at=at,
            name=_short(getattr(request, "name", None), 200),
            args=_short(getattr(request, "argsrepr", None), MAX_REPR),
            kwargs=_short(getattr(request, "kwargsrepr", None), MAX_REPR),
            worker=_short(getattr(request, "hostname", None), 200),
            queue=_short(delivery.get("routing_key") or None, 200),
            trace_id=_trace_id(headers.get("traceparent") if isinstance(headers, dict) else None),
            retries=_retries(headers.get("retries") if isinstance(headers, dict) else None),
        )

    def prerun(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if task_id is None:
            return
        if len(self.started) >= MAX_TIMED:
            self.started.pop(next(iter(self.started)))
        self.started[str(task_id)] = time.monotonic()
        request = getattr(task, "request", None)
        received_at = getattr(request, RECEIVED_AT, None)
        delivery = getattr(request, "delivery_info", None) or {}
        self._task(
            task_id,
            "started",
            name=_short(getattr(task, "name", None), 200),
            worker=_short(getattr(request, "hostname", None), 200),
            retries=_retries(getattr(request, "retries", None)),
            # What the receipt said, for when the main process leaves its receipt out (LiveOutbox.superseded).
            received_at=received_at if isinstance(received_at, float) else None,
            args=_short(getattr(request, "argsrepr", None), MAX_REPR),
            kwargs=_short(getattr(request, "kwargsrepr", None), MAX_REPR),
            queue=_short(delivery.get("routing_key") or None, 200) if isinstance(delivery, dict) else None,
            trace_id=_trace_id(getattr(request, "traceparent", None)),
        )

    def succeeded(self, sender: Any = None, **_: Any) -> None:
        request = getattr(sender, "request", None)
        task_id = getattr(request, "id", None)
        self._task(task_id, "succeeded", runtime_s=self._runtime(task_id), name=_short(getattr(sender, "name", None), 200), retries=_retries(getattr(request, "retries", None)))

    def failed(self, sender: Any = None, task_id: str | None = None, exception: BaseException | None = None, **_: Any) -> None:
        text = f"{type(exception).__name__}: {exception}" if exception is not None else None
        request = getattr(sender, "request", None)  # the failing attempt's, in the process that ran it (not where the main process reports)
        retries = _retries(getattr(request, "retries", None)) if getattr(request, "id", None) == task_id else None
        self._task(task_id, "failed", runtime_s=self._runtime(task_id), exception=_short(text, MAX_EXCEPTION), name=_short(getattr(sender, "name", None), 200), retries=retries)

    def retried(self, sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
        task_id = getattr(request, "id", None)
        self._task(
            task_id,
            "retried",
            runtime_s=self._runtime(task_id),
            exception=_short(str(reason) if reason is not None else None, MAX_EXCEPTION),
            name=_short(getattr(sender, "name", None), 200),
            retries=_retries(getattr(request, "retries", None)),
        )

    def revoked(self, sender: Any = None, request: Any = None, terminated: bool = False, signum: Any = None, expired: bool = False, **_: Any) -> None:
        task_id = getattr(request, "id", None)
        why = "expired" if expired else (f"terminated (signal {int(signum)})" if terminated and signum is not None else "terminated" if terminated else "revoked")
        self._task(task_id, "revoked", runtime_s=self._runtime(task_id), exception=why, name=_short(getattr(sender, "name", None), 200))

    # --- the worker ---

    def worker_ready(self, sender: Any = None, **_: Any) -> None:
        """Only a worker's main process sees this: it alone sends heartbeats."""
        if not self.config.url or self.beating is not None:
            return
        controller = getattr(sender, "controller", None)
        self.worker = {"hostname": str(getattr(sender, "hostname", "") or "")[:200], "pool": _pool_name(sender), "concurrency": getattr(controller, "concurrency", None)}
        if not self.worker["hostname"]:
            return
        stop = threading.Event()
        thread = threading.Thread(target=self._beat, args=(stop,), name="flowscope-agent-heartbeat", daemon=True)
        self.beating = (os.getpid(), stop, thread)
        self.heartbeat(online=True)
        thread.start()

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self.config.heartbeat_s):
            self.heartbeat(online=True)

    def heartbeat(self, *, online: bool) -> None:
        concurrency = self.worker.get("concurrency")
        self.outbox().put(
            "worker",
            {
                **self.worker,
                "concurrency": concurrency if isinstance(concurrency, int) and concurrency >= 0 else None,
                "at": time.time(),
                "online": online,
                "active": len(worker_state.active_requests),
                "processed": sum(worker_state.total_count.values()),
                "dropped": self.stats()["dropped"],
            },
        )

    def worker_shutdown(self, **_: Any) -> None:
        """Say offline before the outbox closes (Agent.shutdown, on the same signal, sends what is held)."""
        beating, self.beating = self.beating, None
        if beating is None or beating[0] != os.getpid():
            return
        beating[1].set()
        beating[2].join(self.config.export_timeout + 1)
        self.heartbeat(online=False)
