"""Tasks that failed for good, and requeued copies that succeeded, sent to the console off the task's path.

A task that fails for good is one Celery gives up on: task_failure fires for an exception with
no retry left (`max_retries` exceeded included: a retry still pending fires task_retry instead),
a soft or hard time limit, a worker lost, and a `Reject` without requeue (celery 5.7.0). Its
report carries the exact call: task name, args and kwargs as JSON (when they are not JSON, a
repr, and the report says it cannot be requeued as it was), the routing it arrived by, the
attempts, the exception and the trace context of the failing execution.

The task's thread only builds the report and appends it to a bounded deque (FLOWSCOPE_MAX_QUEUE
reports; past it a report is dropped and counted); one thread per process posts batches to
FLOWSCOPE_URL/api/v1/agent/reports over one kept-alive HTTP connection (opened again after an
error). While the console is away a batch waits and is retried with a growing pause; a batch the
console refuses (4xx) is counted as failed, not retried.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import os
import threading
import time
import traceback
import urllib.parse
from collections.abc import Hashable
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

    A kind of report names where it goes (PATH), how many go in one request (BATCH), how long the
    thread lingers for a batch to fill (LINGER: each request costs the process CPU that its tasks
    could use, so frequent reports wait to travel together), the body (`body`), and which reports
    still waiting a newer one may be folded into (`key`, `fold`): dead letters here, live task
    changes and heartbeats in flowscope_agent.live."""

    PATH = "/api/v1/agent/reports"
    BATCH = MAX_BATCH
    LINGER = 0.0  # seconds; a dead letter is rare and an operator may be waiting for it
    THREAD = "flowscope-agent-deadletters"
    WHAT = "dead letters and resolutions"

    def __init__(self, config: Config, app_name: str) -> None:
        self.pid = os.getpid()
        self.config = config
        self.app_name = app_name
        self.url = config.url + self.PATH
        self.items: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self.waiting: dict[Hashable, dict[str, Any]] = {}  # key -> its report still in `items`, to fold a newer one into
        self.cond = threading.Condition()
        self.counts = {"queued": 0, "folded": 0, "superseded": 0, "sent": 0, "failed": 0, "dropped": 0}
        self.closing = False
        self.flushing = False  # close() is waiting: no lingering
        self.sending = 0
        self.thread: threading.Thread | None = None
        self.connection: http.client.HTTPConnection | None = None  # the sending thread's only

    def key(self, kind: str, report: dict[str, Any]) -> Hashable | None:
        """What a report is about, when a newer report on it may replace it while both wait; None never folds."""
        return None

    def fold(self, held: dict[str, Any], report: dict[str, Any]) -> None:
        """Fold `report` into `held`, an older report of the same key still waiting (in place)."""
        held.update(report)

    def superseded(self, batch: list[tuple[str, dict[str, Any]]]) -> set[int]:
        """Positions in `batch`, taken to be sent, of reports that another process's report now
        says all of: counted as superseded, not sent. None here."""
        return set()

    def put(self, kind: str, report: dict[str, Any]) -> bool:
        """Hand a report on; never waits beyond the lock. False when it was dropped (buffer full)."""
        key = self.key(kind, report)
        with self.cond:
            if not self.config.url or self.closing:
                self.counts["dropped"] += 1
                return False
            held = self.waiting.get(key) if key is not None else None
            if held is not None:  # takes no room: the buffer's bound is not in question
                self.fold(held, report)
                self.counts["folded"] += 1
                return True
            if len(self.items) + self.sending >= self.config.max_queue:
                self.counts["dropped"] += 1
                return False
            self.items.append((kind, report))
            if key is not None:
                self.waiting[key] = report
            self.counts["queued"] += 1
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name=self.THREAD, daemon=True)
                self.thread.start()
            if len(self.items) == 1 or len(self.items) == self.BATCH:  # what the sender waits for; waking it more only takes the task's CPU
                self.cond.notify()
        return True

    def _take(self) -> list[tuple[str, dict[str, Any]]] | None:
        """The next batch, once BATCH reports wait or the first has lingered; None when closed and empty."""
        with self.cond:
            while True:
                while not self.items and not self.closing:
                    self.cond.wait()
                if self.LINGER > 0:
                    self.cond.wait_for(lambda: len(self.items) >= self.BATCH or self.closing or self.flushing, timeout=self.LINGER)
                if not self.items:
                    return None
                batch = [self.items.popleft() for _ in range(min(self.BATCH, len(self.items)))]
                for kind, report in batch:  # on its way: a newer report is a new entry
                    key = self.key(kind, report)
                    if key is not None and self.waiting.get(key) is report:
                        del self.waiting[key]
                covered = self.superseded(batch)
                if covered:
                    self.counts["superseded"] += len(covered)
                    batch = [item for i, item in enumerate(batch) if i not in covered]
                if batch:
                    self.sending = len(batch)
                    return batch
                self.cond.notify_all()  # close() may wait for the buffer to empty

    def _run(self) -> None:
        pause = 0.0
        try:
            while (batch := self._take()) is not None:
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
        finally:
            self._disconnect()

    def body(self, batch: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        return {"app": self.app_name, "dead": [r for k, r in batch if k == "dead"], "resolved": [r for k, r in batch if k == "resolved"]}

    def _connect(self) -> http.client.HTTPConnection:
        if self.connection is None:
            parts = urllib.parse.urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"FLOWSCOPE_URL must be an http(s) URL, got {self.config.url!r}")
            kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            self.connection = kind(parts.hostname, parts.port, timeout=self.config.export_timeout)
        return self.connection

    def _disconnect(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()

    def _exchange(self, data: bytes) -> tuple[int, bytes]:
        """POST one body on the kept connection. A connection the console closed while it idled
        fails before any answer: that one is opened again and the body sent once more."""
        parts = urllib.parse.urlsplit(self.url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.config.token}"} if self.config.token else {})}
        for attempt in (1, 2):
            reused = self.connection is not None and self.connection.sock is not None
            connection = self._connect()
            try:
                connection.request("POST", target, body=data, headers=headers)
                answer = connection.getresponse()
                content = answer.read()  # read whole, or the connection cannot carry the next request
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._disconnect()
                if reused and attempt == 1:
                    continue
                raise
            except (OSError, http.client.HTTPException):
                self._disconnect()
                raise
            if answer.will_close:
                self._disconnect()
            return answer.status, content
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _post(self, batch: list[tuple[str, dict[str, Any]]]) -> str:
        try:
            status, content = self._exchange(json.dumps(self.body(batch)).encode())
        except (OSError, ValueError, http.client.HTTPException) as exc:  # unreachable, timed out, not HTTP
            log.warning("flowscope-agent: could not reach the console for %d reports (%s); trying again later", len(batch), exc)
            return "retry"
        if 200 <= status < 300:
            return "sent"
        detail = content[:500].decode(errors="replace")
        if status >= 500 or status == 429:
            log.warning("flowscope-agent: the console answered %d to %d reports; trying again later: %s", status, len(batch), detail)
            return "retry"
        log.error("flowscope-agent: the console refused %d reports (%d): %s", len(batch), status, detail)
        return "failed"

    def close(self) -> dict[str, int]:
        """Send what is held, within the export timeout, and give the counts (unsent counted as dropped)."""
        deadline = time.monotonic() + self.config.export_timeout + 1
        with self.cond:
            self.flushing = True
            self.cond.notify_all()
            self.cond.wait_for(lambda: not self.items and not self.sending, timeout=max(0.0, deadline - time.monotonic()))
            self.closing = True
            self.counts["dropped"] += len(self.items)  # a batch still in flight counts as it ends
            self.items.clear()
            self.waiting.clear()
            self.cond.notify_all()
            counts = dict(self.counts)
        if counts["queued"]:
            level = logging.WARNING if counts["failed"] or counts["dropped"] else logging.INFO
            log.log(level, "flowscope-agent: pid %d reported %d %s to %s; %d refused, %d dropped", self.pid, counts["sent"], self.WHAT, self.url, counts["failed"], counts["dropped"])
        return counts
