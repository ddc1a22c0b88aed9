"""The producer side on RabbitMQ: delays held by the broker, batches confirmed together, depths.

Delays. Celery's countdown holds a message inside a worker until its time, which quorum queues
and RabbitMQ's `consumer_timeout` punish. Kombu's native delayed delivery holds it in the broker
instead: 28 levels of TTL queues that dead-letter into one another, a message's delay written in
binary in its routing key, the last level handing it to `celery_delayed_delivery`, which routes
it back to its queue. Celery uses it only for quorum queues and only from `apply_async`; the
engine uses it for every delayed send on RabbitMQ, whatever the queue type, by publishing to the
top level itself. It declares the levels once per process and binds each target queue before
its first delayed message, so a delay works before any worker has started.

Batches. A publish with confirms (`confirm_publish`, on for every send through Celery) waits for
the broker's acknowledgement of each message: a round trip a message. A batch (a bulk requeue's)
is published on a channel of its own in confirm mode and its acknowledgements are awaited once,
at the end: the broker has every message of the batch on disk (quorum: on a majority) when
`publish_confirmed` returns, and a nack, a timeout or a broken connection raises, leaving the
caller's retry (the requeue's in-flight note) to send the batch again. Inside
`one_confirm_channel` (a bulk requeue job's slice) the batches share that channel and its
connection, opened anew when it was closed between batches. The task messages are Celery's own
(`TaskMessages`), their header table encoded once a batch rather than once a message.

Depths. A passive queue declare answers with the queue's ready messages and its consumers: no
management plugin needed.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import amqp
import orjson
from amqp import spec as amqp_spec
from amqp.exceptions import NotFound
from amqp.serialization import dumps as amqp_dumps
from celery import current_app
from kombu import Connection, Exchange, Queue
from kombu.entity import DELIVERY_MODES
from kombu.transport.native_delayed_delivery import (
    MAX_LEVEL,
    bind_queue_to_native_delayed_delivery_exchange,
    calculate_routing_key,
    declare_native_delayed_delivery_exchanges_and_queues,
    level_name,
)
from kombu.utils import json as kombu_json

from flows.core.errors import ConfigurationError, FlowsError

DELAYED_EXCHANGE = Exchange(level_name(MAX_LEVEL), type="topic")
CONFIRM_TIMEOUT_SECONDS = 30.0

_lock = threading.Lock()
_delay_ready: set[str] = set()  # "" once the levels are declared, then each queue bound to them


class PublishNotConfirmed(FlowsError):
    """The broker refused (nack) or did not confirm in time some messages of a batch."""


def work_queue(name: str) -> Queue:
    """The queue as Celery declares it (type and exchange from the settings)."""
    return current_app.amqp.queues[name]


def delayed_send_options(queue_name: str, countdown: float) -> dict[str, Any]:
    """`send_task` options that have the broker hold the message `countdown` seconds (rounded
    up to whole seconds, the resolution of the delay levels) before it reaches `queue_name`."""
    queue = work_queue(queue_name)
    _ensure_delay_route(queue)
    return {"queue": queue, "exchange": DELAYED_EXCHANGE, "routing_key": calculate_routing_key(max(1, math.ceil(countdown)), queue.routing_key)}


def _ensure_delay_route(queue: Queue) -> None:
    if queue.name in _delay_ready:
        return
    if queue.exchange is None or queue.exchange.type == "direct":
        raise ConfigurationError(f"queue {queue.name!r} is bound to a direct exchange: RabbitMQ's delayed delivery routes only through topic exchanges (task_create_missing_queue_exchange_type)")
    with _lock, current_app.connection_for_write() as connection:
        if "" not in _delay_ready:
            declare_native_delayed_delivery_exchanges_and_queues(connection, current_app.conf.broker_native_delayed_delivery_queue_type)
            _delay_ready.add("")
        queue.bind(connection.default_channel).declare()
        bind_queue_to_native_delayed_delivery_exchange(connection, queue)
        _delay_ready.add(queue.name)


class TaskMessages:
    """Celery task messages (protocol 2, JSON) of one task, made for AMQP the way `apply_async`
    makes them, for a batch: the headers and properties come from Celery's own
    `create_task_message` and are encoded once; each message gets only its own task id and body.

    py-amqp encodes a message's header table on every publish, and Celery's table of about twenty
    entries cost more than the rest of the publish together. Its encoding depends on the values'
    lengths only, so the table is encoded once with a placeholder id, and each message's id (a
    UUID, always 36 characters) is written over the placeholder's three places: `id`, `root_id`
    and the `correlation_id` property.
    """

    def __init__(self, app: Any, task: str, **options: Any) -> None:
        placeholder = str(uuid.uuid4())
        headers, properties, body, _ = app.amqp.create_task_message(placeholder, task, (), {}, **options)
        if not (isinstance(body, tuple) and len(body) == 3):
            raise ConfigurationError(f"task messages are made ready for RabbitMQ in Celery's protocol 2 only, not task_protocol={app.conf.task_protocol!r}")
        self._embed = body[2]
        mode = app.conf.task_default_delivery_mode
        template = amqp.Message(
            b"",
            content_type="application/json",
            content_encoding="utf-8",
            application_headers=headers,
            delivery_mode=DELIVERY_MODES.get(mode, mode),
            **properties,
        )
        # GenericContent._serialize_properties is private (py-amqp 5.4.2 checked): the one way to
        # encode properties apart from sending them.
        self._properties = template._serialize_properties()
        self._placeholder = placeholder.encode()
        if self._properties.count(self._placeholder) != 3:
            raise ConfigurationError(f"Celery's task message for {task!r} does not carry its id in exactly id, root_id and correlation_id")

    def message(self, args: list[Any], kwargs: dict[str, Any] | None = None) -> amqp.Message:
        task_id = str(uuid.uuid4()).encode()
        body = [args, kwargs or {}, self._embed]
        try:
            encoded = orjson.dumps(body)
        except TypeError:  # what orjson does not write (an integer past 64 bits), kombu's JSON does
            encoded = kombu_json.dumps(body).encode()
        return _Encoded(encoded, self._properties.replace(self._placeholder, task_id))


class _Encoded(amqp.Message):
    """A message whose properties are encoded already.

    py-amqp's frame writer asks the message for its encoded properties through
    `_serialize_properties` (private; py-amqp 5.4.2 checked), and for nothing else but its body.
    """

    def __init__(self, body: bytes, properties: bytes) -> None:
        super().__init__(body)
        self._encoded = properties

    def _serialize_properties(self) -> bytes:
        return self._encoded


# Frames are handed to the socket in writes of about this many bytes: a write for each message
# cost more than making its frames, and a whole batch in one write would leave the broker idle
# until all of it had arrived.
WRITE_BYTES = 64 * 1024


class _Frames:
    """Frames gathered for one write, and how many messages they hold."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.messages = 0

    def write(self, frames: Any) -> None:
        self.data += frames  # a view of the frame writer's own buffer: copied now


def _chunks(channel: Any, messages: Sequence[tuple[str, amqp.Message]]) -> Iterator[_Frames]:
    """The Basic.Publish frames of `messages` to the default exchange, in chunks of about
    WRITE_BYTES: what `channel.basic_publish` would write, without a socket write per message.

    py-amqp's own frame writer makes the frames (`Connection.frame_writer_cls`, given an object
    with a `write` in place of the transport), with `spec.Basic.Publish`'s arguments encoded as
    `basic_publish` encodes them (py-amqp 5.4.2 checked)."""
    connection = channel.connection
    chunk = _Frames()
    write_frames = connection.frame_writer_cls(connection, chunk)
    arguments: dict[str, bytes] = {}
    for queue, message in messages:
        if queue not in arguments:
            # Mandatory: a message no queue takes (its queue deleted since it was declared) comes
            # back, rather than being confirmed and lost.
            arguments[queue] = amqp_dumps("Bssbb", (0, "", queue, True, False))  # ticket, exchange, routing key, mandatory, immediate
        write_frames(1, channel.channel_id, amqp_spec.Basic.Publish, arguments[queue], message)
        chunk.messages += 1
        if len(chunk.data) >= WRITE_BYTES:
            yield chunk
            chunk.data, chunk.messages = bytearray(), 0
    if chunk.messages:
        yield chunk


class ConfirmedPublisher:
    """One connection and one channel in confirm mode, for batch after batch.

    Opened at the first batch; checked before each later one and opened anew if the broker or
    the network closed it meanwhile (nothing of that batch is sent yet, so nothing is sent twice);
    given up after any failure of a batch, whose messages' fate is then unknown (the caller's
    retry sends them again). Each queue is declared once a connection, not once a batch (a round
    trip each, through the leader on a quorum queue), and every message is mandatory, so that
    one whose queue was deleted since comes back as a failure of its batch instead of being
    confirmed and lost.
    """

    def __init__(self, app: Any) -> None:
        self._app = app
        self._connection: Connection | None = None
        self._channel: Any = None
        self._tags = 0  # delivery tags this channel has given so far
        self._unsettled: OrderedDict[int, None] = OrderedDict()  # published, neither confirmed nor refused
        self._refused = 0
        self._returned = 0  # messages the broker could route to no queue
        self._declared: set[str] = set()  # queues declared on this connection

    @property
    def connection(self) -> Connection | None:
        """The connection in use; None before the first batch, after a failure and once closed."""
        return self._connection

    def publish(self, messages: Sequence[tuple[str, amqp.Message]], *, timeout: float = CONFIRM_TIMEOUT_SECONDS) -> None:
        """Publish (queue, message) pairs and return once the broker has confirmed all of them;
        PublishNotConfirmed if it refused some, did not answer in time, or the connection broke."""
        if not messages:
            return
        channel = self._open()
        broke = self._connection.connection_errors  # type: ignore[union-attr]
        try:
            for name in dict.fromkeys(queue for queue, _ in messages):
                if name not in self._declared:
                    work_queue(name).bind(channel).declare()  # the queue may not be there yet: nothing would take the message
                    self._declared.add(name)
            self._refused = self._returned = 0
            sent = 0
            try:
                for chunk in _chunks(channel, messages):
                    first = self._tags + 1
                    self._tags += chunk.messages
                    self._unsettled.update(dict.fromkeys(range(first, self._tags + 1)))
                    channel.connection.transport.write(chunk.data)
                    sent += chunk.messages
                    self._take_answers()  # the confirms come in meanwhile: none left to pile up
                self._await_confirms(len(messages), timeout)
            except broke as exc:
                raise PublishNotConfirmed(f"the connection to RabbitMQ broke with {len(self._unsettled)} of {len(messages)} messages unconfirmed ({sent} sent): {exc}") from exc
        except BaseException:
            self._discard()
            raise

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except connection.connection_errors:
                connection.collect()  # the broker is gone already: drop the socket

    def _open(self) -> Any:
        if self._connection is not None and not self._usable():
            self._discard()
        if self._connection is None:
            # A connection of its own, without per-message confirms: this channel awaits them together.
            connection = self._app.connection_for_write(transport_options={"confirm_publish": False})
            try:
                channel = connection.channel()
                channel.events["basic_ack"].add(self._on_ack)
                channel.events["basic_nack"].add(self._on_nack)
                channel.events["basic_return"].add(self._on_return)
                channel.confirm_select()
            except BaseException:
                connection.collect()
                raise
            self._connection, self._channel, self._tags = connection, channel, 0
            self._unsettled.clear()
            self._declared.clear()
        return self._channel

    def _usable(self) -> bool:
        """Whether the connection still answers: a read that does not wait finds a close the
        broker sent, or a socket the network closed, while the connection sat between batches."""
        connection = self._connection
        if connection is None or not connection.connected or not self._channel.is_open:
            return False
        try:
            connection.drain_events(timeout=0)
        except TimeoutError:
            return True  # nothing to read: open
        except connection.connection_errors + connection.channel_errors:
            return False
        return self._channel.is_open

    def _discard(self) -> None:
        """Drop the connection without a word to the broker: after a failure its state is unknown."""
        connection, self._connection, self._channel = self._connection, None, None
        self._unsettled.clear()
        if connection is not None:
            connection.collect()

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, refused=False)

    def _on_nack(self, tag: int, multiple: bool, *_: Any) -> None:
        self._settle(tag, multiple, refused=True)

    def _on_return(self, *_: Any) -> None:
        self._returned += 1  # its confirm follows, as for any message

    def _settle(self, tag: int, multiple: bool, *, refused: bool) -> None:
        # RabbitMQ does not promise to confirm in the order of publishing, so a tag settles only
        # itself, or with `multiple` every tag up to it: not every tag below the highest seen.
        settled = 0
        if multiple:
            while self._unsettled and next(iter(self._unsettled)) <= tag:
                self._unsettled.popitem(last=False)
                settled += 1
        elif tag in self._unsettled:
            del self._unsettled[tag]
            settled = 1
        if refused:
            self._refused += settled

    def _take_answers(self) -> None:
        """Handle what the broker has sent so far (confirms), without waiting for more."""
        assert self._connection is not None
        while True:
            try:
                self._connection.drain_events(timeout=0)
            except TimeoutError:
                return

    def _await_confirms(self, count: int, timeout: float) -> None:
        connection = self._connection
        assert connection is not None
        deadline = time.monotonic() + timeout
        while self._unsettled:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PublishNotConfirmed(f"RabbitMQ confirmed {count - len(self._unsettled)} of {count} messages within {timeout:g}s")
            try:
                connection.drain_events(timeout=left)
            except TimeoutError:
                continue
        if self._refused:
            raise PublishNotConfirmed(f"RabbitMQ refused {self._refused} of {count} messages")
        if self._returned:
            raise PublishNotConfirmed(f"RabbitMQ routed {self._returned} of {count} messages to no queue (a queue deleted since it was declared?)")


_current: ContextVar[ConfirmedPublisher | None] = ContextVar("flows_confirmed_publisher", default=None)


@contextmanager
def one_confirm_channel() -> Iterator[ConfirmedPublisher]:
    """Within the block, this thread's `publish_confirmed` batches share one connection and
    confirm channel (a bulk requeue job's slice: opening a connection a batch cost about as much
    as publishing a small batch), closed at the end. Inside another such block, that one's."""
    outer = _current.get()
    if outer is not None:
        yield outer
        return
    publisher = ConfirmedPublisher(current_app)
    token = _current.set(publisher)
    try:
        yield publisher
    finally:
        _current.reset(token)
        publisher.close()


def publish_confirmed(messages: Sequence[tuple[str, amqp.Message]], *, timeout: float = CONFIRM_TIMEOUT_SECONDS) -> None:
    """Publish (queue, message) pairs on one channel in confirm mode and return once the broker
    has confirmed all of them; PublishNotConfirmed if it has not. Inside `one_confirm_channel`,
    on that block's channel; else on a connection of its own."""
    if not messages:
        return
    with one_confirm_channel() as publisher:
        publisher.publish(messages, timeout=timeout)


def queue_gauges(names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """(ready messages, consumers) of each queue, by passive declare; (0, 0) for a queue not
    declared yet."""
    gauges: dict[str, tuple[int, int]] = {}
    with current_app.pool.acquire(block=True) as connection:
        # Unreachable, kombu's OperationalError (the console's 503); a bare channel() would let
        # the socket's ConnectionRefusedError through, a 500 for a broker that is down.
        connection.ensure_connection(max_retries=0)
        channel = connection.channel()
        try:
            for name in names:
                try:
                    _, messages, consumers = channel.queue_declare(queue=name, passive=True)
                except NotFound:
                    gauges[name] = (0, 0)
                    channel = connection.channel()  # the broker closed the other on the 404
                    continue
                gauges[name] = (int(messages), int(consumers))
        finally:
            channel.close()
    return gauges
