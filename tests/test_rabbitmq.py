"""RabbitMQ as the broker (BROKER=rabbitmq): what the engine asks of it, checked on the broker
itself. Queue types and message counts are read with `rabbitmqctl` (no management plugin), the
run's vhost named in CELERY_BROKER_URL; a vhost of a test's own where the test needs another
configuration than the run's."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import amqp
import orjson
import pytest
from celery import Celery, current_app
from django.conf import settings
from kombu import Connection, Producer, Queue

import flows
from flows.core.brokers import RABBITMQ_MAX_DELAY_SECONDS
from flows.core.errors import ConfigurationError
from flows.core.registry import catalog
from flows.core.retry import Backoff
from flows.models import DeadLetter
from flows.patterns import check_catalog
from flows.produce import rabbitmq
from flows.produce.publishing import DELIVER_TASK, build_envelope, publish_to
from flows.produce.rabbitmq import PublishNotConfirmed, publish_confirmed
from tests.flows_under_test import LATER, recorded
from tests.support.brokers import peeking, rabbitmq_only
from tests.support.waiting import wait_for
from tests.support.workers import Worker, session_queues
from tooling.rabbitmq import Vhost
from tracing.redis import get_redis, key

pytestmark = rabbitmq_only

DELAY_LEVELS = [f"celery_delayed_{level}" for level in range(28)]


def vhost_of(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def list_queues(vhost: str, *columns: str) -> dict[str, list[str]]:
    """`rabbitmqctl list_queues`: each queue's name and the asked columns, as text."""
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    done = subprocess.run([ctl, "list_queues", "-p", vhost, "-q", "--no-table-headers", "name", *columns], capture_output=True, text=True, timeout=60, check=True)
    rows = (line.split("\t") for line in done.stdout.splitlines() if line.strip())
    return {row[0]: row[1:] for row in rows}


def counts(vhost: str) -> dict[str, tuple[int, int]]:
    """(ready, unacknowledged) messages of every queue in `vhost`."""
    return {name: (int(ready), int(unacked)) for name, (ready, unacked) in list_queues(vhost, "messages_ready", "messages_unacknowledged").items()}


def attempts(message_id: str) -> int:
    """Deliveries of one message to t_later so far (tests.flows_under_test.attempt_number's count)."""
    return int(get_redis().get(key("test", "attempts", "t_later", message_id)) or 0)


def held_by_the_broker(vhost: str, queue: str) -> bool:
    """Nothing in `queue`, ready or held by a worker, and a message in a delay level: the retry,
    once its first attempt is over (another test's retry may wait there too, hence "some")."""
    now = counts(vhost)
    delayed = sum(now.get(level, (0, 0))[0] for level in DELAY_LEVELS)
    return delayed >= 1 and now.get(queue, (0, 0)) == (0, 0)


@pytest.fixture
def scratch_catalog() -> Iterator[None]:
    saved = catalog.snapshot()
    yield
    catalog.restore(saved)


@pytest.mark.django_db(transaction=True)
def test_queues_are_declared_quorum_by_default(worker):
    flows.send("test.bulk", {"key": "declared-by-a-producer"})  # t.backlog.raise: no worker has declared it
    types = {name: columns[0] for name, columns in list_queues(vhost_of(settings.CELERY_BROKER_URL), "type").items()}
    ours = [name for name in session_queues() if name != "flows.control"] + ["t.backlog.raise"]
    assert {name: types.get(name) for name in ours} == dict.fromkeys(ours, "quorum")


@pytest.mark.django_db(transaction=True)
def test_a_retrys_delay_is_held_by_the_broker_not_by_the_worker(worker):
    envelope = flows.send("test.later", {"key": "later", "fail_times": 1})
    vhost = vhost_of(settings.CELERY_BROKER_URL)

    wait_for(lambda: attempts(str(envelope.message_id)) == 1, what="the first attempt")
    wait_for(lambda: held_by_the_broker(vhost, "t.later"), timeout=LATER.initial - 1, what="the retry to wait in a delay level, not in t.later")
    inspect = current_app.control.inspect([worker.node], timeout=5)
    assert (inspect.scheduled() or {}).get(worker.node) == [], "the worker holds no countdown of its own"
    assert attempts(str(envelope.message_id)) == 1, "not run again before its delay"

    wait_for(lambda: recorded("t_later"), timeout=LATER.initial + 30, what="the retry to run")
    assert [entry.rsplit("/", 1)[0] for entry in recorded("t_later")] == [f"later|2|{worker.node}"], "once, by the worker (node/pid)"
    assert attempts(str(envelope.message_id)) == 2, "run once more, not twice"


def test_a_publish_delay_longer_than_rabbitmqs_limit_is_refused():
    with pytest.raises(ConfigurationError, match=rf"a delay of {RABBITMQ_MAX_DELAY_SECONDS + 1}s exceeds the most RabbitMQ's native delayed delivery holds \({RABBITMQ_MAX_DELAY_SECONDS}s\)"):
        publish_to(catalog.handler("t_command"), build_envelope("test.command", {"key": "k"}), countdown=RABBITMQ_MAX_DELAY_SECONDS + 1)


@pytest.mark.django_db
def test_a_delay_longer_than_redis_could_hold_is_accepted(settings):
    settings.FLOWS_VISIBILITY_TIMEOUT = 100  # Redis's limit would be 50 s
    # In the test's transaction, rolled back: nothing is sent.
    publish_to(catalog.handler("t_command"), build_envelope("test.command", {"key": "k"}), countdown=3600)


def test_a_backoff_longer_than_rabbitmqs_limit_is_refused_at_declaration(scratch_catalog):
    flows.message_type("x.slow", pattern="fire_and_forget")
    flows.handler("x.slow", consumer="x_longest", backoff=Backoff(maximum=RABBITMQ_MAX_DELAY_SECONDS))(lambda m: None)
    with pytest.raises(
        ConfigurationError, match=rf"backoff maximum {RABBITMQ_MAX_DELAY_SECONDS + 1}s exceeds the most RabbitMQ's native delayed delivery holds \({RABBITMQ_MAX_DELAY_SECONDS}s\); lower it$"
    ):
        flows.handler("x.slow", consumer="x_too_slow", backoff=Backoff(maximum=RABBITMQ_MAX_DELAY_SECONDS + 1))(lambda m: None)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "body, content_type, reason",
    [
        (b"\x00\x01 raw bytes", "application/data", "message is not a Celery task: it names no task"),
        (b'{"order": 7}', "application/json", "message is not a Celery task: it names no task"),
        (b"{not json", "application/json", "message body cannot be decoded"),
    ],
)
def test_an_amqp_message_that_is_no_celery_task_is_a_poison_dead_letter_and_the_worker_goes_on(worker, body, content_type, reason):
    with current_app.connection_for_write() as connection:
        Producer(connection.default_channel).publish(body, exchange="", routing_key="t.commands", content_type=content_type, content_encoding="utf-8", retry=False)

    dead = wait_for(lambda: DeadLetter.objects.filter(queue="t.commands", poison=True, consumer="").first(), what="the message's dead letter")
    assert reason in dead.error_message and dead.attempts == 1
    flows.send("test.command", {"key": "next"})
    wait_for(lambda: any(entry.startswith("next|") for entry in recorded("t_command")), what="the next message to run")
    assert rabbitmq.queue_gauges(["t.commands"])["t.commands"] == (0, 1), "nothing left in the queue; the worker still consumes it"


@pytest.fixture
def bounded_queue() -> Iterator[str]:
    """A queue that holds one message and refuses publishes beyond it (a nack), declared as the
    engine would find it among Celery's queues. Classic: a quorum queue learns it is full from
    its leader after the fact, and may take a burst past its limit (RabbitMQ 3.10)."""
    name = f"t.bounded.{uuid.uuid4().hex[:8]}"
    queue = Queue(name, routing_key=name, queue_arguments={"x-queue-type": "classic", "x-max-length": 1, "x-overflow": "reject-publish"})
    current_app.amqp.queues.add(queue)
    try:
        yield name
    finally:
        del current_app.amqp.queues[name]
        with current_app.connection_for_write() as connection:
            connection.default_channel.queue_delete(name)


def plain(n: int) -> amqp.Message:
    return amqp.Message(orjson.dumps({"n": n}), content_type="application/json", content_encoding="utf-8")


@pytest.fixture
def scratch_queue() -> Iterator[str]:
    name = f"t.confirmed.{uuid.uuid4().hex[:8]}"
    yield name
    with current_app.connection_for_write() as connection:
        connection.default_channel.queue_delete(name)


def connections_of(publisher: rabbitmq.ConfirmedPublisher) -> list[str]:
    """The broker's name for the publisher's connection ("127.0.0.1:port -> ..."), if it lists it."""
    assert publisher.connection is not None
    port = publisher.connection.connection.sock.getsockname()[1]
    return [name for name in list_connections("name") if name.startswith(f"127.0.0.1:{port} ")]


def list_connections(*columns: str) -> list[str]:
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    done = subprocess.run([ctl, "list_connections", "-q", "--no-table-headers", *columns], capture_output=True, text=True, timeout=60, check=True)
    return [line for line in done.stdout.splitlines() if line.strip()]


def test_a_confirmed_batch_is_all_in_the_queue_when_publish_returns(scratch_queue):
    publish_confirmed([(scratch_queue, plain(n)) for n in range(50)])
    assert rabbitmq.queue_gauges([scratch_queue])[scratch_queue] == (50, 0)


def test_task_messages_are_made_ready_only_from_celerys_protocol_2():
    old_protocol = Celery("old", broker="amqp://", task_protocol=1, set_as_current=False)
    with pytest.raises(ConfigurationError, match=r"in Celery's protocol 2 only, not task_protocol=1"):
        rabbitmq.TaskMessages(old_protocol, DELIVER_TASK, argsrepr="()")


def test_task_messages_whose_id_is_not_in_its_three_places_are_refused():
    with pytest.raises(ConfigurationError, match=r"does not carry its id in exactly id, root_id and correlation_id"):
        rabbitmq.TaskMessages(current_app, DELIVER_TASK, argsrepr="()", root_id=str(uuid.uuid4()))  # a root of its own


def test_a_batch_of_many_writes_reaches_the_queue_whole_and_in_order(scratch_queue):
    padding = "x" * 1000
    count = 4 * rabbitmq.WRITE_BYTES // 1000  # some four writes' worth
    publish_confirmed([(scratch_queue, amqp.Message(orjson.dumps({"n": n, "padding": padding}), content_type="application/json")) for n in range(count)])
    with peeking(scratch_queue) as messages:
        assert [m.decode()["n"] for m in messages] == list(range(count))


def test_a_batch_the_broker_refuses_in_part_raises_publish_not_confirmed(bounded_queue):
    with pytest.raises(PublishNotConfirmed, match="RabbitMQ refused 2 of 3 messages"):
        publish_confirmed([(bounded_queue, plain(n)) for n in range(3)])
    assert rabbitmq.queue_gauges([bounded_queue])[bounded_queue] == (1, 0), "the first kept, the other two refused"


def test_batches_in_one_block_share_one_connection_and_the_block_closes_it(scratch_queue):
    with rabbitmq.one_confirm_channel() as publisher:
        publish_confirmed([(scratch_queue, plain(n)) for n in range(20)])
        first = publisher.connection
        named = connections_of(publisher)
        publish_confirmed([(scratch_queue, plain(n)) for n in range(20, 50)])
        assert publisher.connection is first, "the second batch on the first batch's connection"
        assert len(named) == 1
    assert publisher.connection is None
    wait_for(lambda: named[0] not in list_connections("name"), what="the block's connection to be closed on the broker")
    assert rabbitmq.queue_gauges([scratch_queue])[scratch_queue] == (50, 0)


def test_a_connection_the_broker_closed_between_batches_is_opened_anew_and_nothing_is_lost_or_sent_twice(scratch_queue):
    with rabbitmq.one_confirm_channel() as publisher:
        publish_confirmed([(scratch_queue, plain(n)) for n in range(20)])
        first = publisher.connection
        [name] = connections_of(publisher)
        [pid] = [line.split("\t")[0] for line in list_connections("pid", "name") if line.split("\t", 1)[1] == name]
        ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
        subprocess.run([ctl, "close_connection", pid, "closed by a test"], capture_output=True, timeout=60, check=True)
        wait_for(lambda: name not in list_connections("name"), what="the broker to close the connection")

        publish_confirmed([(scratch_queue, plain(n)) for n in range(20, 50)])
        assert publisher.connection is not first, "a new connection for the second batch"
    assert rabbitmq.queue_gauges([scratch_queue])[scratch_queue] == (50, 0)


def test_a_batch_to_a_queue_deleted_since_the_last_batch_is_not_confirmed_and_the_next_one_declares_it_again(scratch_queue):
    with rabbitmq.one_confirm_channel() as publisher:
        publish_confirmed([(scratch_queue, plain(n)) for n in range(5)])
        with current_app.connection_for_write() as connection:
            connection.default_channel.queue_delete(scratch_queue)
        with pytest.raises(PublishNotConfirmed, match=r"RabbitMQ routed 10 of 10 messages to no queue"):
            publish_confirmed([(scratch_queue, plain(n)) for n in range(5, 15)])
        assert publisher.connection is None
        publish_confirmed([(scratch_queue, plain(n)) for n in range(15, 18)])
    with peeking(scratch_queue) as messages:
        assert [m.decode()["n"] for m in messages] == [15, 16, 17], "the deleted queue's five gone with it, the ten refused, the last three kept"


def test_after_a_refused_batch_the_next_batch_in_the_block_goes_on_a_new_connection(bounded_queue, scratch_queue):
    with rabbitmq.one_confirm_channel() as publisher:
        with pytest.raises(PublishNotConfirmed, match="RabbitMQ refused 2 of 3 messages"):
            publish_confirmed([(bounded_queue, plain(n)) for n in range(3)])
        assert publisher.connection is None, "given up: late answers to that batch must not count for the next"
        publish_confirmed([(scratch_queue, plain(n)) for n in range(10)])
    assert rabbitmq.queue_gauges([scratch_queue, bounded_queue]) == {scratch_queue: (10, 0), bounded_queue: (1, 0)}


def test_the_catalog_check_refuses_a_queue_name_that_ends_with_another_queues(scratch_catalog):
    flows.message_type("x.event", pattern="fan_out")
    flows.handler("x.event", consumer="x_short", queue="x.zq")(lambda m: None)
    flows.handler("x.event", consumer="x_long", queue="billing.x.zq")(lambda m: None)
    with pytest.raises(
        ConfigurationError, match=r"queue 'billing.x.zq' ends with '.x.zq', another queue's name: on RabbitMQ it would receive copies of the delayed messages meant for 'x.zq'; rename one"
    ):
        check_catalog()


@pytest.mark.worker  # starts its own, in a vhost of its own: no process fixture says so
@pytest.mark.django_db(transaction=True)
def test_a_worker_asked_for_classic_queues_declares_them_and_its_retries_wait_in_the_broker():
    with Vhost(settings.CELERY_BROKER_URL, prefix="flowscope_test_classic") as vhost:
        node = Worker("classic", ["t.later"], concurrency=1, extra_env={"CELERY_BROKER_URL": vhost.url, "FLOWS_RABBITMQ_QUEUE_TYPE": "classic"}).start()
        try:
            assert list_queues(vhost.name, "type")["t.later"] == ["classic"]
            envelope = build_envelope("test.later", {"key": "classic", "fail_times": 1})
            # Straight onto the queue the worker declared: the test's own app would declare it quorum.
            headers, properties, body, _ = current_app.amqp.create_task_message(str(uuid.uuid4()), DELIVER_TASK, [envelope.to_dict(), "t_later"], {})
            with Connection(vhost.url) as connection:
                Producer(connection.default_channel).publish(body, exchange="", routing_key="t.later", headers=headers, serializer="json", retry=False, **properties)

            wait_for(lambda: attempts(str(envelope.message_id)) == 1, what="the first attempt")
            wait_for(lambda: held_by_the_broker(vhost.name, "t.later"), timeout=LATER.initial - 1, what="the retry to wait in a delay level")
            wait_for(lambda: recorded("t_later"), timeout=LATER.initial + 30, what="the retry to run")
            assert [entry.rsplit("/", 1)[0] for entry in recorded("t_later")] == [f"classic|2|{node.node}"]
            assert attempts(str(envelope.message_id)) == 2
        finally:
            node.stop()
