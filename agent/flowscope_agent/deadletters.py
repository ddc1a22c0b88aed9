"""Tasks that failed for good, and requeued copies that succeeded, sent to the console off the task's path.

A task that fails for good is one Celery gives up on: task_failure fires for an exception with
no retry left (`max_retries` exceeded included: a retry still pending fires task_retry instead),
a soft or hard time limit, a worker lost, and a `Reject` without requeue (celery 5.7.0). Its
report carries the exact call: task name, args and kwargs as JSON (when they are not JSON, a
repr, and the report says it cannot be requeued as it was), the routing it arrived by, the
attempts, the exception and the trace context of the failing execution.

The task's thread only builds the report and appends it to a bounded deque (FLOWSCOPE_MAX_QUEUE
reports; past it a report is dropped and counted); one thread per process posts batches to
FLOWSCOPE_URL/api/v1/agent/reports. While the console is away a batch waits and is retried with
a growing pause; a batch the console refuses (4xx) is counted as failed, not retried.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import celery

from flowscope_agent.config import Config

log = logging.getLogger("flowscope_agent")
REQUEUE_OF = "flowscope_requeue_of"  # header on a requeued copy: "<dead letter id>:<series>"
MAX_CALL_BYTES = 256 * 1024  # args and kwargs as JSON; above it the call is kept as a repr only
MAX_BATCH = 50
_CELERY_DIR = str(Path(celery.__file__).resolve().parent)


def call_of(args: Any, kwargs: Any) -> dict[str, Any]:
    """The call as JSON when it is JSON (and not too big), else a repr marked not requeueable."""
    args, kwargs = list(args or ()), dict(kwargs or {})
    try:
        size = len(json.dumps([args, kwargs], allow_nan=False))
        if size <= MAX_CALL_BYTES:
            return {"args": args, "kwargs": kwargs, "requeueable": True, "call_repr": ""}
        reason = f"args and kwargs are {size} bytes as JSON, over {MAX_CALL_BYTES}"
    except (TypeError, ValueError) as exc:
        reason = f"not JSON-serialisable ({exc})"
    return {"args": None, "kwargs": None, "requeueable": False, "call_repr": f"{reason}: args={args!r:.4000} kwargs={kwargs!r:.4000}"}


def frames_of(tb: Any) -> list[str]:
    """The innermost frames outside Celery, "module:function": the cause, for grouping."""
    frames = [f for f in traceback.extract_tb(tb) if not f.filename.startswith(_CELERY_DIR)] if tb is not None else []
    return [f"{Path(f.filename).stem}:{f.name}" for f in frames[-3:]]


def requeue_of(value: Any) -> dict[str, int] | None:
    """The dead letter and series a requeued copy's header names, or None."""
    try:
        pk, series = str(value).split(":")
        return {"dead_letter_id": int(pk), "series": int(series)}
    except (TypeError, ValueError):
        return None


class Outbox:
    """This process's reports waiting for the console: bounded, sent by one thread of its own.

    A kind of report names where it goes (PATH), how many go in one request (BATCH) and the body
    (`body`): dead letters here, live task changes and heartbeats in flowscope_agent.live."""

    PATH = "/api/v1/agent/reports"
    BATCH = MAX_BATCH
    THREAD = "flowscope-agent-deadletters"
    WHAT = "dead letters and resolutions"

    def __init__(self, config: Config, app_name: str) -> None:
        self.pid = os.getpid()
        self.config = config
        self.app_name = app_name
        self.url = config.url + self.PATH
        self.items: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self.cond = threading.Condition()
        self.counts = {"queued": 0, "sent": 0, "failed": 0, "dropped": 0}
        self.closing = False
        self.sending = 0
        self.thread: threading.Thread | None = None

    def put(self, kind: str, report: dict[str, Any]) -> bool:
        """Hand a report on; never waits beyond the lock. False when it was dropped (buffer full)."""
        with self.cond:
            if len(self.items) + self.sending >= self.config.max_queue or not self.config.url or self.closing:
                self.counts["dropped"] += 1
                return False
            self.items.append((kind, report))
            self.counts["queued"] += 1
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name=self.THREAD, daemon=True)
                self.thread.start()
            self.cond.notify()
        return True

    def _run(self) -> None:
        pause = 0.0
        while True:
            with self.cond:
                while not self.items and not self.closing:
                    self.cond.wait()
                if not self.items:
                    return
                batch = [self.items.popleft() for _ in range(min(self.BATCH, len(self.items)))]
                self.sending = len(batch)
            outcome = self._post(batch)
            with self.cond:
                self.sending = 0
                if outcome == "retry" and not self.closing:
                    self.items.extendleft(reversed(batch))  # first in, first out, when the console is back
                elif outcome == "retry":
                    self.counts["failed"] += len(batch)
                else:
                    self.counts[outcome] += len(batch)
                self.cond.notify_all()
            if outcome == "retry":
                pause = min(30.0, max(0.5, pause * 2))
                with self.cond:
                    self.cond.wait_for(lambda: self.closing, timeout=pause)
            else:
                pause = 0.0

    def body(self, batch: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        return {"app": self.app_name, "dead": [r for k, r in batch if k == "dead"], "resolved": [r for k, r in batch if k == "resolved"]}

    def _post(self, batch: list[tuple[str, dict[str, Any]]]) -> str:
        body = self.body(batch)
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.config.token}"} if self.config.token else {})}
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.export_timeout) as answer:
                answer.read()
            return "sent"
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode(errors="replace")
            if exc.code >= 500 or exc.code == 429:
                log.warning("flowscope-agent: the console answered %d to %d reports; trying again later: %s", exc.code, len(batch), detail)
                return "retry"
            log.error("flowscope-agent: the console refused %d reports (%d): %s", len(batch), exc.code, detail)
            return "failed"
        except (OSError, ValueError) as exc:  # unreachable, timed out
            log.warning("flowscope-agent: could not reach the console for %d reports (%s); trying again later", len(batch), exc)
            return "retry"

    def close(self) -> dict[str, int]:
        """Send what is held, within the export timeout, and give the counts (unsent counted as dropped)."""
        deadline = time.monotonic() + self.config.export_timeout + 1
        with self.cond:
            self.cond.wait_for(lambda: not self.items and not self.sending, timeout=max(0.0, deadline - time.monotonic()))
            self.closing = True
            self.counts["dropped"] += len(self.items)  # a batch still in flight counts as it ends
            self.items.clear()
            self.cond.notify_all()
            counts = dict(self.counts)
        if counts["queued"]:
            level = logging.WARNING if counts["failed"] or counts["dropped"] else logging.INFO
            log.log(level, "flowscope-agent: pid %d reported %d %s to %s; %d refused, %d dropped", self.pid, counts["sent"], self.WHAT, self.url, counts["failed"], counts["dropped"])
        return counts
