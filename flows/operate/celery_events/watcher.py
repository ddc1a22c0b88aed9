"""The watcher's loop: consume an app's events from its broker, translate, write in batches.

1. Connect with a Celery app object of the watcher's own (the broker URL, nothing of the app's)
   and consume through `app.events.Receiver`: a queue of the watcher's own bound to the app's
   event exchange, so it takes nothing from the app's queues. The queue is kept across
   reconnects (on RabbitMQ, events that come meanwhile wait in it, each up to QUEUE_TTL_S) and
   deleted when the watcher stops; one left by a killed watcher expires after QUEUE_EXPIRES_S.
2. Check each event (validation.checked); a malformed or oversized one is counted and skipped.
3. Translate (translate.Translator) into an Output; write it every `flush_seconds` or once it
   holds `batch` items, whichever comes first, also while no event comes.
4. The broker gone: say so, keep what is unwritten, reconnect with backoff, say so again.
   A write that fails (Redis or the database away) is held and tried again at the next flush,
   up to MAX_HELD items, past which the oldest are dropped and counted.

One thread does all of it (Flower's "one owner of the state"): no locks.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery
from django.db import DatabaseError, close_old_connections
from kombu.exceptions import OperationalError

from flows.operate.celery_events.translate import Output, Translator
from flows.operate.celery_events.validation import MAX_MESSAGE_BYTES, Malformed, Oversized, checked
from flows.operate.live_tasks import LiveReportError
from tracing.sink import SinkFull

log = logging.getLogger("flows.celery_events")
MAX_HELD = 20_000  # spans, tasks and dead letters held for a retry while their store is away
QUEUE_TTL_S = 60.0  # an event waits this long in the watcher's queue (Celery's default, 5 s, loses events behind one slow write)
QUEUE_EXPIRES_S = 600.0  # the queue outlives its consumer by this long: a reconnect finds what came meanwhile (RabbitMQ)
REASONS_LOGGED = 20  # malformed events described in the log; the rest only counted
STATS_EVERY_S = 60.0


@dataclasses.dataclass
class Writers:
    """The stores, given rather than imported so a test can count what reaches them."""

    spans: Callable[[list[dict[str, Any]]], None]
    tasks: Callable[[str, list[dict[str, Any]]], None]
    workers: Callable[[str, list[dict[str, Any]]], None]
    deaths: Callable[[str, list[dict[str, Any]]], Any]


@dataclasses.dataclass
class Counts:
    events: int = 0
    malformed: int = 0
    oversized: int = 0
    spans: int = 0
    tasks: int = 0
    dead_letters: int = 0
    dropped: int = 0
    reconnects: int = 0

    def line(self) -> str:
        return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in dataclasses.asdict(self).items())


class Watcher:
    def __init__(self, *, broker: str, app: str, writers: Writers, batch: int = 500, flush_seconds: float = 1.0, check_seconds: float = 20.0) -> None:
        self.app_name = app
        self.broker = broker
        # The watcher's own app object: the broker URL and Celery's defaults (the event exchange
        # "celeryev", json events); nothing of the watched app is imported or changed.
        self.celery = Celery(f"flowscope-watch-{app}", broker=broker, set_as_current=False)
        self.where = self.celery.connection_for_read(broker).as_uri()  # the password masked
        self.writers = writers
        self.translator = Translator(app)
        self.batch, self.flush_seconds, self.check_seconds = batch, flush_seconds, check_seconds
        self.out = Output()
        self.held = Output()  # written before and refused: tried again first
        self.counts = Counts()
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.last_flush = self.last_stats = time.monotonic()
        self.heartbeats: dict[str, tuple[int, int]] = {}  # hostname -> processed at first and latest heartbeat
        self.warned: set[str] = set()
        self.node_id = f"flowscope-watch-{uuid.uuid4().hex[:12]}"  # one queue for the life of this watcher, reconnects included

    # --- the broker ---

    def run(self) -> Counts:
        backoff = 1.0
        while not self.stop.is_set():
            # The URL given again: Celery prefers CELERY_BROKER_URL (the engine's broker, in Flowscope's
            # environment) to broker= (celery 5.7.0's Celery.__init__).
            connection = self.celery.connection_for_read(self.broker)
            errors = (OperationalError, *connection.connection_errors, *connection.channel_errors)
            try:
                with connection:
                    connection.ensure_connection(max_retries=1)
                    receiver = self._receiver(connection)
                    backoff = 1.0
                    for _ in receiver.consume(limit=None, timeout=None, safety_interval=min(1.0, self.flush_seconds)):
                        pass
                    receiver.queue.bind(connection.default_channel).delete()  # stopped: nothing is to wait in it
            except errors as exc:
                self.counts.reconnects += 1
                log.warning("broker %s unreachable (%s: %s); reconnecting in %.0fs", self.where, type(exc).__name__, exc, backoff)
                self.flush()
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
        self.flush()
        if len(self.held):
            log.warning("stopping with %d item(s) not written (their stores unreachable)", len(self.held))
        log.info("watcher stopped: %s", self.counts.line())
        return self.counts

    def _receiver(self, connection: Any) -> Any:
        watcher = self

        class Receiver(self.celery.events.Receiver):  # type: ignore[name-defined,misc]
            """Celery's receiver, fed to the watcher: its public hooks, not its private _receive
            (which would raise out of the consumer on an event without a type)."""

            @property
            def should_stop(self) -> bool:  # type: ignore[override]
                return watcher.stop.is_set()

            def get_consumers(self, Consumer: Any, channel: Any) -> list[Any]:  # noqa: N803 - kombu's name
                return [Consumer(queues=[self.queue], callbacks=[watcher.on_message], no_ack=True, accept=self.accept)]

            def on_decode_error(self, message: Any, exc: Exception) -> None:
                watcher.skip(Malformed(f"a message that is not {', '.join(sorted(self.accept))}: {exc}"))

            def on_iteration(self) -> None:
                watcher.tick()
                self.waited += 1
                if self.waited == 2:
                    # Said once the first wait for events is over: by then the subscription is in
                    # place on every transport (Redis subscribes to its fanout channel there),
                    # so what is sent after this line is seen.
                    log.info("watching the events of Celery app %r on %s, queue %s%s", watcher.app_name, watcher.where, self.queue.name, " (reconnected)" if watcher.counts.reconnects else "")

        receiver = Receiver(connection, app=self.celery, node_id=self.node_id, queue_ttl=QUEUE_TTL_S, queue_expires=QUEUE_EXPIRES_S, queue_durable=True, queue_exclusive=False)
        receiver.waited = 0
        return receiver

    # --- events ---

    def on_message(self, body: Any, message: Any) -> None:
        raw = getattr(message, "body", b"") or b""
        if len(raw) > MAX_MESSAGE_BYTES:
            self.skip(Oversized(f"a message of {len(raw)} bytes, over {MAX_MESSAGE_BYTES}"))
            return
        for event in body if isinstance(body, list) else [body]:
            self.on_event(event)
        if len(self.out) >= self.batch:
            self.flush()

    def on_event(self, event: Any) -> None:
        self.counts.events += 1
        try:
            event = checked(event)
            if event is not None:
                self.translator.take(event, self.out)
        except Malformed as exc:
            self.skip(exc)
        except Exception as exc:  # noqa: BLE001 - an event we failed to foresee must not end the watch
            log.exception("could not use an event; skipped")
            self.skip(Malformed(f"{type(exc).__name__}: {exc}"))

    def skip(self, reason: Malformed) -> None:
        if isinstance(reason, Oversized):
            self.counts.oversized += 1
        else:
            self.counts.malformed += 1
        if self.counts.malformed + self.counts.oversized <= REASONS_LOGGED:
            log.warning("skipped an event: %s", reason)

    # --- writing ---

    def tick(self) -> None:
        now = time.monotonic()
        if now - self.last_flush >= self.flush_seconds:
            self.flush()
        if now - self.started >= self.check_seconds:
            self.check_events_sent()
        if now - self.last_stats >= STATS_EVERY_S:
            self.last_stats = now
            log.info("watching %r: %s", self.app_name, self.counts.line())

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        out, self.out = self.out, Output()
        self._note_heartbeats(out)
        work = self.held
        work.spans += out.spans
        work.tasks += out.tasks
        work.workers.update(out.workers)
        work.deaths += out.deaths
        self.held = Output()
        self._write("spans", work.spans, lambda rows: self.writers.spans(rows), self.held.spans, (redis.RedisError, SinkFull))
        self._write("tasks", work.tasks, lambda rows: self.writers.tasks(self.app_name, rows), self.held.tasks, (DatabaseError,))
        held_workers: list[dict[str, Any]] = []
        self._write("workers", list(work.workers.values()), lambda rows: self.writers.workers(self.app_name, rows), held_workers, (DatabaseError,))
        self.held.workers = {w["hostname"]: w for w in held_workers}
        self._write("dead_letters", work.deaths, lambda rows: self.writers.deaths(self.app_name, rows), self.held.deaths, (DatabaseError,))

    def _write(self, what: str, rows: list[dict[str, Any]], write: Callable[[list[dict[str, Any]]], Any], held: list[dict[str, Any]], retry_on: tuple[type[Exception], ...]) -> None:
        for start in range(0, len(rows), self.batch):
            chunk = rows[start : start + self.batch]
            try:
                write(chunk)
            except SinkFull as exc:  # counted by the sink as dropped: not held
                self.counts.dropped += len(chunk)
                log.warning("%s", exc)
            except retry_on as exc:
                if isinstance(exc, DatabaseError):
                    close_old_connections()
                log.warning("could not write %d %s (%s: %s); held for the next try", len(chunk), what.replace("_", " "), type(exc).__name__, exc)
                held.extend(rows[start:])
                overflow = len(held) - MAX_HELD
                if overflow > 0:
                    del held[:overflow]
                    self.counts.dropped += overflow
                return
            except LiveReportError as exc:  # an event the live list refuses: this batch is lost, the next is not
                self.counts.dropped += len(chunk)
                log.warning("the live task list refused %d %s: %s", len(chunk), what, exc)
            except Exception:  # noqa: BLE001 - a store failing in a way not foreseen loses this batch, not the watch
                self.counts.dropped += len(chunk)
                log.exception("could not write %d %s; dropped", len(chunk), what.replace("_", " "))
            else:
                if hasattr(self.counts, what):
                    setattr(self.counts, what, getattr(self.counts, what) + len(chunk))

    # --- is anything being sent? ---

    def _note_heartbeats(self, out: Output) -> None:
        for hostname, worker in out.workers.items():
            processed = worker.get("processed")
            if isinstance(processed, int):
                first = self.heartbeats.get(hostname, (processed, processed))[0]
                self.heartbeats[hostname] = (first, processed)

    def check_events_sent(self) -> None:
        """Say (once each) what the app's workers and producers do not send: the watcher never
        turns events on, the app's operators choose."""
        if not self.heartbeats and "no-workers" not in self.warned:
            self.warned.add("no-workers")
            log.warning(
                "no worker of %r sent a heartbeat in %.0fs on %s: are its workers running on this broker? (workers started with --without-heartbeat send none)",
                self.app_name,
                self.check_seconds,
                self.where,
            )
        for hostname, (first, latest) in self.heartbeats.items():
            if latest > first and not self.translator.task_events.get(hostname) and hostname not in self.warned:
                self.warned.add(hostname)
                log.warning(
                    "worker %s ran %d task(s) since the watcher started but sent no task events: start it with -E "
                    "(or set worker_send_task_events = True, or run `celery -A <app> control enable_events`); the watcher does not turn them on",
                    hostname,
                    latest - first,
                )
        if self.translator.task_events and not self.translator.sent_events and "no-sent" not in self.warned:
            self.warned.add("no-sent")
            log.info("no task-sent events from %r's producers: queue names and queue wait stay unknown (set task_send_sent_event = True in the app to have them)", self.app_name)
