"""The Redis broker transport: a message taken and recorded as held in one step, and hardened
against what a foreign producer may push onto a queue.

Taking a message (issue 12). Kombu's Redis transport takes a message with BRPOP and records it
in `unacked` afterwards, in a second round trip; a worker killed between the two lost it. Here
the channel claims instead (flows.consume.claim): one Lua script pops the first available item,
in kombu's priority and fair-rotation order, and records it in `unacked` / `unacked_index` as
kombu's QoS.append would, so the QoS below only notes it in memory. Order of steps on the
worker's event loop (kombu's MultiChannelPoller drives them as it drove BRPOP, on the same
connection, and only while QoS can take a message):

1. claim: EVALSHA over every queue and priority of the channel; a message comes back recorded,
   and the next claim is sent on the next turn of the loop (under load, no wait at all);
2. if every queue was empty: wait without taking, a BLMOVE of the queue it last took from onto
   itself (flows.consume.claim.wait_command) with a timeout of `claim_wait` seconds (a transport
   option, 0.05 by default), which returns at once when a message arrives on that queue and
   otherwise after the timeout; then 1 again. Redis 6.2 or later (BLMOVE).

The synchronous path (`basic_get`, `_get`) claims the same way, one queue at a time.

Items that are not Celery messages. Kombu decodes each queue item inside the worker's consumer
loop, and one item that is not a Celery message (not JSON, or JSON of another shape) ends the
whole worker with "Unrecoverable error". Here such an item becomes a dead letter that keeps what
arrived and says what is wrong with it, and the worker goes on with the next item. Celery
messages themselves (well-formed, any content) pass through untouched: the runtime judges their
contents. A message naming a task no worker has, or with a body that cannot be decoded,
Celery's consumer refuses and drops (with an error in the log); the consumer below dead-letters
it first.

Kombu's private names used here (`_brpop_start`, `_brpop_read`, `_poll_error`, `_get`,
`_in_poll`, `_brpop_sent_at`, `_queue_cycle`, `_q_for_pri`, `_flush_brpop_reauth`,
`_maybe_update_queues_expire`, `QoS._remove_from_indices`, `Transport._deliver`, and
`virtual.QoS.append` called past redis.QoS.append) were checked against kombu 5.7.0,
pinned in requirements.lock; a kombu upgrade must check them again (tests/test_broker_claim.py).
"""

from __future__ import annotations

import logging
from time import monotonic, time
from typing import Any

from kombu.message import Message as KombuMessage
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis import Redis
from redis.exceptions import NoScriptError

from flows.consume.claim import CLAIM_SCRIPT, claim_command, wait_command
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
    from django.db import close_old_connections

    from flows.consume.dead_letters import dead_letter_record
    from flows.core.errors import EnvelopeError

    log.warning("dead on arrival on %s: %s", queue, problem)
    # This runs in the worker's main process, which runs no task, so nothing else applies
    # Django's connection rules here: without this, a kept connection the server had dropped
    # (or one a failed write left broken) would fail every dead letter after it.
    try:
        close_old_connections()
        dead_letter_record(envelope={"unparsed": (raw if isinstance(raw, str) else repr(raw))[:10_000]}, consumer="", queue=queue, exc=EnvelopeError(problem), attempts=1, poison=True)
    except Exception:  # noqa: BLE001 - the worker must live on; the warning above remains
        log.exception("could not store the unreadable item from %s as a dead letter", queue)


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        claimed = self.channel.claimed_tags
        if delivery_tag in claimed:
            # The claim recorded it in Redis already; only kombu's in-memory bookkeeping is left
            # (kombu 5.7.0: virtual.QoS.append is the half of redis.QoS.append without Redis).
            claimed.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS
    #: Seconds an idle channel waits for a message on its most recently used queue before it
    #: claims again from all of them: the latency of a message on another idle queue.
    claim_wait = 0.05
    from_transport_options = (*kombu_redis.Channel.from_transport_options, "claim_wait")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before kombu's __init__, which registers the channel with the poller.
        self.claimed_tags: set[str] = set()  # recorded by a claim, not yet appended to QoS
        self._no_ack_queues: set[str] = set()
        self._pending: tuple[str, list[str]] | None = None  # ("claim", queues) or ("wait", [])
        self._wait_next = False  # the last claim found nothing
        self._last_taken = ""  # the queue of the last message claimed: the one an idle channel waits on
        self._get_no_ack = False
        self._restored_at = monotonic()
        super().__init__(*args, **kwargs)

    # -- what the claim needs to know --

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        (self._no_ack_queues.add if no_ack else self._no_ack_queues.discard)(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        self._get_no_ack = no_ack
        try:
            return super().basic_get(queue, no_ack=no_ack, **kwargs)
        finally:
            self._get_no_ack = False

    def _key(self, name: str) -> str:
        # Commands below are sent as they are, so a global key prefix is applied here.
        return f"{self.global_keyprefix}{name}"

    def _claim(self, queues: list[str], no_ack: dict[str, bool]) -> tuple[list[str], list[Any]]:
        """The queue of each list in claim order, and the command claiming from them."""
        order = [(queue, self._q_for_pri(queue, pri)) for pri in self.priority_steps for queue in queues]
        command = claim_command(
            unacked=self._key(self.unacked_key),
            unacked_index=self._key(self.unacked_index_key),
            queue_keys=[self._key(list_key) for _, list_key in order],
            record=[self.ack_emulation and not no_ack[queue] for queue, _ in order],
            now=time(),
        )
        return [queue for queue, _ in order], command

    def _load_claim_script(self) -> None:
        with self.conn_or_acquire() as client:
            Redis.script_load(client, CLAIM_SCRIPT)

    # -- the worker's event loop (kombu's MultiChannelPoller calls these as it did for BRPOP) --

    def _brpop_start(self, timeout: Any = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        if self._wait_next:
            self._pending = ("wait", [])
            watched = self._last_taken if self._last_taken in queues else queues[0]
            # Never 0, which BLMOVE reads as "for ever": the other queues would never be claimed from.
            command = wait_command(self._key(self._q_for_pri(watched, 0)), max(float(self.claim_wait), 0.001))
        else:
            order, command = self._claim(queues, {queue: queue in self._no_ack_queues for queue in queues})
            self._pending = ("claim", order)
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options: Any) -> bool:
        pending, self._pending = self._pending, None
        try:
            # Nothing sent: kombu reads anyway, which raises if the server closed the connection.
            kind, order = pending or ("none", [])
            try:
                reply = self.client.parse_response(self.client.connection, {"claim": "EVALSHA", "wait": "BLMOVE"}.get(kind, "BRPOP"), **options)
            except NoScriptError:
                # A new or restarted Redis: load the script (on another connection) and claim again.
                self._wait_next = False
                self._load_claim_script()
                raise kombu_redis.Empty() from None
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if kind != "claim":
                self._wait_next = False
                if kind == "wait" and reply is None:
                    self._restore_while_idle()
                raise kombu_redis.Empty()
            if not reply:
                self._wait_next = True
                raise kombu_redis.Empty()
            self._wait_next = False
            index, item, tag = reply
            queue = self._last_taken = order[int(index)]
            self._queue_cycle.rotate(queue)
            message = self._read_claimed(bytes_to_str(item), queue, bytes_to_str(tag))
            if message is None:
                raise kombu_redis.Empty()
            self.connection._deliver(message, queue)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _restore_while_idle(self) -> None:
        """Kombu restores what dead consumers held when a poll finds nothing; with waits of
        `claim_wait` a synchronous consumer's poll always finds a reply, so an idle channel
        restores here, every `unacked_restore_interval` seconds (the worker's event loop also
        restores on its own timer; restore_visible takes a mutex, so two never overlap)."""
        now = monotonic()
        if now - self._restored_at < self.unacked_restore_interval:
            return
        self._restored_at = now
        try:
            self.qos.restore_visible(num=self.unacked_restore_limit, interval=self.unacked_restore_throttle)
        except self.connection_errors:
            log.debug("restore while idle: connection error, will retry", exc_info=True)

    def _poll_error(self, type: str, **options: Any) -> Any:
        if type == "BRPOP":  # a claim's reply may carry a recorded message: read it as one
            return self._brpop_read(**options)
        return super()._poll_error(type, **options)

    # -- the synchronous path --

    def _get(self, queue: str) -> Any:
        with self.conn_or_acquire() as client:
            while True:
                _, command = self._claim([queue], {queue: self._get_no_ack or queue in self._no_ack_queues})
                try:
                    reply = Redis.execute_command(client, *command)  # Redis's own: the keys are prefixed already
                except NoScriptError:
                    self._load_claim_script()
                    reply = Redis.execute_command(client, *command)
                self._maybe_update_queues_expire(client, queue)
                if not reply:
                    raise kombu_redis.Empty()
                _, item, tag = reply
                message = self._read_claimed(bytes_to_str(item), queue, bytes_to_str(tag))
                if message is not None:
                    return message

    def _read_claimed(self, raw: str, queue: str, tag: str) -> Any:
        """The claimed item as a message, noted as recorded; None if it was poison, which is
        dead-lettered (and then no longer held)."""
        message, problem = read_item(raw)
        if problem:
            record_garbage(raw, queue, problem)
            if tag:  # the claim recorded it: the dead letter holds it now
                self.qos._remove_from_indices(tag).execute()
            return None
        if tag:
            self.claimed_tags.add(tag)
        return message


class Transport(kombu_redis.Transport):
    Channel = Channel


class Consumer(ReconnectingConsumer):
    """The worker's consumer (it reconnects where Celery would exit), dead-lettering the
    well-formed messages Celery would drop."""

    def on_unknown_task(self, body: Any, message: KombuMessage, exc: Exception) -> None:
        task = message.headers.get("task") if isinstance(message.headers, dict) else None
        record_garbage(message.body, _queue(message), f"message names task {task!r}, which no worker has")
        super().on_unknown_task(body, message, exc)

    def on_unknown_message(self, body: Any, message: KombuMessage) -> None:
        # A message that is no Celery task at all (no task header): on Redis the channel
        # catches such items first; on RabbitMQ they arrive here, and Celery would drop them.
        record_garbage(message.body, _queue(message), "message is not a Celery task: it names no task")
        super().on_unknown_message(body, message)

    def on_invalid_task(self, body: Any, message: KombuMessage, exc: Exception) -> None:
        record_garbage(message.body, _queue(message), f"message is not a valid Celery task: {exc}")
        super().on_invalid_task(body, message, exc)

    def on_decode_error(self, message: KombuMessage, exc: Exception) -> None:
        record_garbage(message.body, _queue(message), f"message body cannot be decoded: {exc}")
        super().on_decode_error(message, exc)


def _queue(message: KombuMessage) -> str:
    info = message.delivery_info if isinstance(message.delivery_info, dict) else {}
    return str(info.get("routing_key") or "")[:200]
