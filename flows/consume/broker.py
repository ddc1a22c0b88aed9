"""The Redis broker transport, hardened against what a foreign producer may push onto a queue.

Kombu's Redis transport decodes each queue item inside the worker's consumer loop, and one item
that is not a Celery message (not JSON, or JSON of another shape) ends the whole worker with
"Unrecoverable error". Here such an item becomes a dead letter that keeps what arrived and says
what is wrong with it, and the worker goes on with the next item. Celery messages themselves
(well-formed, any content) pass through untouched: the runtime judges their contents. A message
naming a task no worker has, or with a body that cannot be decoded, Celery's consumer refuses
and drops (with an error in the log); the consumer below dead-letters it first.

The two methods below are kombu 5's own (pinned in requirements.lock) with the decoding guarded.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.message import Message as KombuMessage
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from flows.consume.worker_consumer import Consumer as ReconnectingConsumer

log = logging.getLogger(__name__)


def read_item(raw: str) -> tuple[Any, str | None]:
    """The queue item decoded (once: this is every delivery's path), and what is wrong with it
    as a Celery message, or None if it is one."""
    try:
        message = loads(raw)
    except ValueError as exc:
        return None, f"queue item is not JSON: {exc}"
    if not isinstance(message, dict):
        return None, f"queue item is JSON but not a message: a {type(message).__name__}, not an object"
    missing = [key for key in ("body", "properties", "headers") if key not in message]
    if missing:
        return None, f"queue item is not a Celery message: no {', '.join(missing)}"
    if not isinstance(message["properties"], dict) or not isinstance(message["headers"], dict):
        return None, "queue item is not a Celery message: properties and headers must be objects"
    return message, None


def record_garbage(raw: Any, queue: str, problem: str) -> None:
    from flows.consume.dead_letters import dead_letter_record
    from flows.core.errors import EnvelopeError

    log.warning("dead on arrival on %s: %s", queue, problem)
    try:
        dead_letter_record(envelope={"unparsed": (raw if isinstance(raw, str) else repr(raw))[:10_000]}, consumer="", queue=queue, exc=EnvelopeError(problem), attempts=1, poison=True)
    except Exception:  # noqa: BLE001 - the worker must live on; the warning above remains
        log.exception("could not store the unreadable item from %s as a dead letter", queue)


class Channel(kombu_redis.Channel):
    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise kombu_redis.Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            raw = bytes_to_str(item)
            message, problem = read_item(raw)
            if problem:
                record_garbage(raw, dest, problem)
                raise kombu_redis.Empty()
            self.connection._deliver(message, dest)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _get(self, queue: str) -> Any:
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))
                if item:
                    self._maybe_update_queues_expire(client, queue)
                    raw = bytes_to_str(item)
                    message, problem = read_item(raw)
                    if problem:
                        record_garbage(raw, queue, problem)
                        continue
                    return message
            self._maybe_update_queues_expire(client, queue)
            raise kombu_redis.Empty()


class Transport(kombu_redis.Transport):
    Channel = Channel


class Consumer(ReconnectingConsumer):
    """The worker's consumer (it reconnects where Celery would exit), dead-lettering the
    well-formed messages Celery would drop."""

    def on_unknown_task(self, body: Any, message: KombuMessage, exc: Exception) -> None:
        task = message.headers.get("task") if isinstance(message.headers, dict) else None
        record_garbage(message.body, _queue(message), f"message names task {task!r}, which no worker has")
        super().on_unknown_task(body, message, exc)

    def on_decode_error(self, message: KombuMessage, exc: Exception) -> None:
        record_garbage(message.body, _queue(message), f"message body cannot be decoded: {exc}")
        super().on_decode_error(message, exc)


def _queue(message: KombuMessage) -> str:
    info = message.delivery_info if isinstance(message.delivery_info, dict) else {}
    return str(info.get("routing_key") or "")[:200]
