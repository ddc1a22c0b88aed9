"""manage.py watch_celery: an app written only with Celery (tests/attached_app), its worker started
with -E and WITHOUT the agent, seen through its own events alone.

The worker and the watcher are real processes; the app's broker is the run's (its Redis database
7, or the run's RabbitMQ vhost); the collector stores the spans the watcher pushes to the sink.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery.events import get_exchange
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import Client
from kombu import Connection, Producer

from console.models import ApiToken
from flows.models import DeadLetter, LiveSource, LiveTask, LiveWorker
from flows.operate.celery_events.translate import Output, Translator
from flows.operate.celery_events.validation import checked
from flows.operate.live_tasks import record_tasks
from tests.support import REPO
from tests.support.brokers import on_rabbitmq, purge
from tests.support.waiting import wait_for
from tests.support.workers import ManagedProcess
from tests.tracing_helpers import spans_where
from tooling.devredis import RedisServer
from tooling.processes import LogLine, Supervisor
from tracing.redis import get_redis
from tracing.sink import PENDING

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

BIN = Path(sys.executable).parent
APP = "shop-events"
PRODUCER, CONSUMER, OK, ERROR = 3, 4, 1, 2
# The app's own environment: none of this project's settings (see tests/test_agent.py).
FOREIGN = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "FLOWS_MODULES", "FLOWSCOPE_EXTRA_APPS", "OTEL_", "CELERY_")


def redis_url() -> str:
    return settings.REDIS_URL.rsplit("/", 1)[0] + "/7"


def broker_url() -> str:
    return settings.CELERY_BROKER_URL if on_rabbitmq() else redis_url()


def app_env(broker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    return {**env, "ATTACHED_BROKER_URL": broker, "ATTACHED_REDIS_URL": redis_url(), "PYTHONUNBUFFERED": "1"}


class PlainWorker:
    """`celery -A tests.attached_app worker` on the app's queue: no flowscope-agent in front."""

    def __init__(self, broker: str, *, events: bool = True) -> None:
        self.node = f"plain-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        self.supervisor = Supervisor(log_dir=Path(tempfile.mkdtemp(prefix="flowscope-events-")), cwd=REPO, env=app_env(broker))
        self.command = [str(BIN / "celery"), "-A", "tests.attached_app", "worker", "-l", "info", "-Q", "shop", "-c", "2", "-n", self.node, "--without-mingle", "--without-gossip"]
        if events:
            self.command.append("-E")

    def __enter__(self) -> PlainWorker:
        self.child = self.supervisor.start("worker", self.command, ready=LogLine(re.escape(" ready.")))
        return self

    def __exit__(self, *_: object) -> None:
        self.supervisor.stop()


def watcher(broker: str, *extra: str, env: dict[str, str] | None = None) -> ManagedProcess:
    args = ["watch_celery", "--broker", broker, "--app", APP, "--flush-seconds", "0.2", *extra]
    return ManagedProcess("watcher", args, ready_marker="watching the events of Celery app", extra_env=env).start()


def produce(script: str, broker: str) -> list[str]:
    """Run `script` as the app's own producer process (plain Celery); its printed lines."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, env=app_env(broker), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split()


@pytest.fixture(autouse=True)
def empty_shop_queue() -> Iterator[None]:
    client = redis.Redis.from_url(redis_url())
    client.flushdb()  # the run's own Redis, a database only these tests use
    if on_rabbitmq():
        purge("shop")
    yield
    client.flushdb()
    if on_rabbitmq():
        purge("shop")


@pytest.fixture(scope="module")
def events_worker() -> Iterator[PlainWorker]:
    """One worker sending events on the app's queue, shared by the tests that need such a worker
    (its start and stop were a good part of each); each test starts its own watcher. The tests
    with a worker of their own (one that sends no events, one on another broker) come before it
    starts or use another broker: none has two workers on one queue."""
    with PlainWorker(broker_url()) as shared:
        yield shared


def process_spans(n: int, **filters: object) -> list:
    return wait_for(lambda: (found := spans_where(kind=CONSUMER, **filters)) and len(found) >= n and found, timeout=60, what=f"{n} process spans where {filters}")


def spans_of_app(n: int) -> list:
    return wait_for(lambda: (found := spans_where(service=APP)) and len(found) >= n and found, timeout=90, what=f"{n} spans of {APP}")


def tree_is_whole(spans: list) -> bool:
    """One root, and every other span's parent in the same trace."""
    ids = {s.span_id for s in spans}
    return len({s.trace_id for s in spans}) == 1 and sum(1 for s in spans if not s.parent_span_id) == 1 and all(s.parent_span_id in ids for s in spans if s.parent_span_id)


def test_a_worker_that_sends_no_task_events_is_named_at_start_up(collector):
    broker = broker_url()
    watch = watcher(broker, "--check-seconds", "3")
    try:
        with PlainWorker(broker, events=False) as worker:
            produce("from tests.attached_app import charge_card\nprint(charge_card.delay('quiet').id)", broker)
            wait_for(lambda: f"worker {worker.node} ran" in watch.log_text(), timeout=60, what="the warning naming the worker")
    finally:
        watch.stop()
    log = watch.log_text()
    assert "sent no task events: start it with -E" in log and "does not turn them on" in log, log[-2000:]
    assert not spans_where(service=APP)  # nothing to make spans of


def test_a_chain_with_a_group_a_task_sent_from_a_task_and_a_failure_become_traces_states_and_a_dead_letter_that_says_why_it_cannot_be_requeued(collector, events_worker):
    broker = broker_url()
    watch = watcher(broker)
    try:
        order_id, broken_id = produce(
            """
            from celery import chain, group
            from tests.attached_app import app, broken, charge_card, place_order
            app.conf.task_send_sent_event = True  # the producer's own choice: task-sent events
            chain(charge_card.s("chain-1"), charge_card.s(), group(charge_card.s(), charge_card.s())).apply_async()
            print(place_order.delay("P-1").id)
            print(broken.delay("B-1").id)
            """,
            broker,
        )
        # 3 sends from the producer; 4 runs of the chain, 2 of the order, 1 of the broken task.
        spans = spans_of_app(10)
        dead = wait_for(lambda: DeadLetter.objects.filter(app=APP).first(), timeout=60, what="the failed task's dead letter")
        wait_for(lambda: LiveWorker.objects.filter(app=APP, hostname=events_worker.node).exists(), timeout=60, what="the worker in the live view")
    finally:
        watch.stop()
    log = watch.log_text()

    # The chain and its group: one trace, its id the root task's id, a whole tree.
    rows = {r.task_id: r for r in LiveTask.objects.filter(app=APP)}
    (chain_trace,) = {r.trace_id for r in rows.values() if "chain-1" in r.args}
    (chain_root,) = {r.task_id for r in rows.values() if uuid.UUID(r.task_id).hex == chain_trace}
    in_chain = [s for s in spans if s.trace_id == chain_trace]
    assert sorted(s.name for s in in_chain) == ["process shop.charge_card"] * 4 + ["send shop.charge_card"], [s.name for s in in_chain]
    assert tree_is_whole(in_chain), [(s.name, s.span_id, s.parent_span_id) for s in in_chain]
    (send,) = [s for s in in_chain if s.kind == PRODUCER]
    first_run = next(s for s in in_chain if s.parent_span_id == send.span_id)
    assert first_run.attributes["messaging.message.id"] == chain_root and first_run.attributes["flowscope.queue_wait_ms"] >= 0  # sent and started known
    for s in in_chain:
        a = s.attributes
        assert (a["messaging.system"], a["flowscope.app"], a["flowscope.source"], a["messaging.message.conversation_id"], s.service) == ("celery", APP, "celery-events", chain_root, APP), a
    for run in (s for s in in_chain if s.kind == CONSUMER):
        a = run.attributes
        assert (a["flowscope.worker"], a["flowscope.state"], a["flowscope.outcome"], run.status_code, a["flowscope.attempt"]) == (events_worker.node, "SUCCESS", "succeeded", OK, 1), a
        assert a["flowscope.runtime_ms"] >= 0

    # A task sent from a task (the worker sends no task-sent events): the child's run is a child of its parent's run.
    in_order = [s for s in spans if s.trace_id == uuid.UUID(order_id).hex]
    assert tree_is_whole(in_order) and len(in_order) == 3, [(s.name, s.parent_span_id) for s in in_order]
    order_run = next(s for s in in_order if s.name == "process shop.place_order")
    charge_run = next(s for s in in_order if s.name == "process shop.charge_card")
    assert charge_run.parent_span_id == order_run.span_id and order_run.attributes["messaging.destination.name"] == "shop"
    # Who sent each run, as the agent says it: the flow graph draws the app task to task.
    assert (order_run.attributes["flowscope.producer"], charge_run.attributes["flowscope.producer"]) == (f"service:{APP}", "handler:shop.place_order")
    assert sorted(s.attributes["flowscope.producer"] for s in in_chain if s.kind == CONSUMER) == ["handler:shop.charge_card"] * 3 + [f"service:{APP}"]
    assert "messaging.destination.name" not in charge_run.attributes  # no task-sent event: its queue is not known

    # The failure: an error span with its exception, a failed task, a dead letter that cannot be requeued.
    (failed,) = [s for s in spans if s.name == "process shop.broken"]
    assert (failed.status_code, failed.attributes["flowscope.outcome"], failed.attributes["flowscope.final_attempt"], failed.attributes["flowscope.state"]) == (ERROR, "failed", True, "FAILURE")
    (event,) = failed.events
    assert event["attributes"]["exception.type"] == "builtins.ValueError" and "card declined for B-1" in event["attributes"]["exception.stacktrace"]
    assert (dead.message_type, str(dead.message_id), dead.error_type, dead.error_message, dead.state, dead.trace_id) == (
        "shop.broken",
        broken_id,
        "builtins.ValueError",
        "card declined for B-1",
        "dead",
        failed.trace_id,
    )
    assert dead.envelope["requeueable"] is False and dead.envelope["seen_through"] == "celery-events"
    assert "cannot be requeued exactly" in dead.envelope["call_repr"] and "('B-1',)" in dead.envelope["call_repr"]

    # States, from events, for the live list: the failed task with its exception, the others done.
    assert (rows[broken_id].state, rows[broken_id].source, rows[broken_id].name) == ("failed", LiveSource.EVENTS, "shop.broken")
    assert "card declined for B-1" in rows[broken_id].exception
    assert sum(r.state == "succeeded" for r in rows.values()) == 6 and rows[chain_root].runtime_s is not None
    assert rows[order_id].trace_id == uuid.UUID(order_id).hex

    # The console refuses the requeue and says what this mode lacks.
    _, secret = ApiToken.issue(name="ops", role="operator", created_by="tests")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    answer = client.post(f"/api/v1/deadletters/{dead.pk}/requeue")
    assert answer.status_code == 409 and "events" in answer.json()["detail"] and "flowscope-agent" in answer.json()["detail"], answer.content
    answer = client.post(f"/api/v1/deadletters/{dead.pk}/edit-requeue", {"payload": {"args": ["B-1"]}}, content_type="application/json")
    assert answer.status_code == 409, answer.content
    assert DeadLetter.objects.get(pk=dead.pk).state == "dead"  # nothing changed
    assert "watching the events of Celery app 'shop-events'" in log and "malformed 0, oversized 0" in log, log[-2000:]
    queue = re.search(r"queue (\S+)", log).group(1)
    with Connection(broker) as connection, pytest.raises(connection.channel_errors):  # the watcher's queue went with it
        connection.default_channel.queue_declare(queue, passive=True)


def test_malformed_and_oversized_events_are_counted_and_skipped_and_the_watch_goes_on(collector, events_worker):
    broker = broker_url()
    watch = watcher(broker)
    try:
        with Connection(broker) as connection:
            events = get_exchange(connection)  # Celery's event exchange as its workers publish to it (fanout on Redis)
            producer = Producer(connection.default_channel)
            for body in (
                {"type": "task-succeeded", "uuid": 42, "timestamp": 1_800_000_000.0},  # an id that is not text
                {"type": "task-failed", "uuid": "x", "timestamp": "yesterday"},  # a time that is not a number
                {"type": "task-started", "uuid": "y", "timestamp": 5.0},  # a time before any Celery ran
                ["not an object"],
                {"no": "type"},
                {"type": "task-received", "uuid": "big", "timestamp": 1_800_000_000.0, "args": "x" * 600_000},  # over the size limit
            ):
                producer.publish(body, exchange=events, routing_key="task.succeeded", serializer="json", declare=[events])
            producer.publish(b"\xff not json", exchange=events, routing_key="task.failed", content_type="application/json", content_encoding="binary")
        wait_for(lambda: "skipped an event" in watch.log_text() and watch.log_text().count("skipped an event") >= 7, timeout=60, what="seven skipped events in the watcher's log")
        # Still watching: a real task after them is seen.
        (order_id,) = produce("from tests.attached_app import charge_card\nprint(charge_card.delay('after').id)", broker)
        process_spans(1, message_id=order_id)
    finally:
        watch.stop()
    log = watch.log_text()
    assert "malformed 6, oversized 1" in log, log[-3000:]
    assert "uuid is int, not text" in log and "timestamp is 'yesterday'" in log and "timestamp 5.0 is not between 2000 and 2100" in log and "over 524288" in log
    assert not LiveTask.objects.filter(task_id__in=["x", "y", "big"]).exists()


def test_the_watcher_says_the_broker_went_away_and_picks_up_again_when_it_is_back(collector):
    """The app's broker here is a Redis of the test's own, stopped and started on the same port
    (the machine's RabbitMQ and the run's Redis are shared: never stopped). Whatever the run's broker."""
    server = RedisServer().start()
    try:
        watch = watcher(server.url)
        try:
            server.stop()
            wait_for(lambda: "unreachable" in watch.log_text(), timeout=60, what="the watcher saying the broker is gone")
            server = RedisServer(port=server.port).start()
            wait_for(lambda: "(reconnected)" in watch.log_text(), timeout=90, what="the watcher saying it reconnected")
            with PlainWorker(server.url):
                (task_id,) = produce("from tests.attached_app import charge_card\nprint(charge_card.delay('back').id)", server.url)
                (run,) = process_spans(1, message_id=task_id)
        finally:
            watch.stop()
    finally:
        server.stop()
    assert run.attributes["flowscope.outcome"] == "succeeded"
    assert watch.process is not None and watch.process.returncode is not None  # it ran until told to stop, not until it crashed
    assert "reconnects 1" in watch.log_text() or "reconnects 2" in watch.log_text()


def test_a_retried_task_is_two_attempts_in_one_trace_and_one_that_runs_out_of_retries_is_a_dead_letter_of_its_last_attempt(collector, events_worker):
    broker = broker_url()
    watch = watcher(broker)
    try:
        flaky_id, refund_id = produce(
            """
            import uuid
            from tests.attached_app import flaky, refund
            print(flaky.delay(f"flaky:{uuid.uuid4().hex}").id)
            print(refund.delay("R-1").id)
            """,
            broker,
        )
        flaky_runs = process_spans(2, message_id=flaky_id)
        refund_runs = process_spans(2, message_id=refund_id)
        dead = wait_for(lambda: DeadLetter.objects.filter(app=APP, message_type="shop.refund").first(), timeout=60, what="the refund's dead letter")
    finally:
        watch.stop()
    first, second = sorted(flaky_runs, key=lambda s: s.attributes["flowscope.attempt"])
    assert (first.attributes["flowscope.attempt"], first.attributes["flowscope.outcome"], first.attributes["flowscope.final_attempt"], first.status_code) == (1, "retried", False, ERROR)
    assert "payment gateway timed out" in first.status_message
    assert (second.attributes["flowscope.attempt"], second.attributes["flowscope.outcome"], second.status_code) == (2, "succeeded", OK)
    # No task-sent event for the retry (the worker does not send them): the second attempt hangs off the first.
    assert second.trace_id == first.trace_id == uuid.UUID(flaky_id).hex and second.parent_span_id == first.span_id
    last = max(refund_runs, key=lambda s: s.attributes["flowscope.attempt"])
    assert (last.attributes["flowscope.attempt"], last.attributes["flowscope.outcome"], last.attributes["flowscope.final_attempt"]) == (2, "failed", True)
    assert (dead.attempts, str(dead.message_id), dead.envelope["requeueable"]) == (2, refund_id, False)
    assert dead.trace_id == last.trace_id and dead.envelope["headers"]["traceparent"].split("-")[2] == last.span_id
    wait_for(lambda: LiveTask.objects.get(app=APP, task_id=flaky_id).state == "succeeded", timeout=30, what="the flaky task succeeded in the live list")


# The first attempt received and started, and the retry's copy received while it runs.
RETRY_RECEIVED_WHILE_THE_FIRST_RUNS = (("task-received", 1.0, {"retries": 0}), ("task-started", 1.1, {}), ("task-received", 1.2, {"retries": 1}))


def flaky_events(task: str, *events: tuple[str, float, dict[str, object]]) -> Output:
    """One worker's events of a retried task `shop.flaky`, in the order given, through a translator."""
    translator, out = Translator(APP), Output()
    for kind, at, extra in events:
        if kind == "task-received":
            extra = {"name": "shop.flaky", "args": "('k',)", **extra}
        translator.take(checked({"type": kind, "uuid": task, "timestamp": 1_800_000_000 + at, "hostname": "w@h", **extra}), out)
    return out


def test_a_retry_received_before_the_retried_event_of_the_attempt_that_sent_it_still_makes_two_attempts():
    """The order a worker's events came in (the copy is published while the first attempt runs):
    only task-received names the attempt, so each end goes to the attempt it belongs to."""
    task = str(uuid.uuid4())
    out = flaky_events(
        task,
        *RETRY_RECEIVED_WHILE_THE_FIRST_RUNS,
        ("task-retried", 1.3, {"exception": "ConnectionError('payment gateway timed out')"}),
        ("task-started", 1.4, {}),
        ("task-succeeded", 1.5, {"runtime": 0.1}),
    )
    first, second = out.spans
    assert (first["a"]["flowscope.attempt"], first["a"]["flowscope.outcome"], second["a"]["flowscope.attempt"], second["a"]["flowscope.outcome"]) == (1, "retried", 2, "succeeded")
    assert first["s"] != second["s"] and second["p"] == first["s"] and first["t"] == second["t"] == uuid.UUID(task).hex
    assert (first["st"], first["en"], second["st"], second["en"]) == tuple(int((1_800_000_000 + x) * 1e9) for x in (1.1, 1.3, 1.4, 1.5))
    assert [r["state"] for r in out.tasks] == ["received", "started", "received", "retried", "started", "succeeded"]


@pytest.mark.django_db
def test_a_retry_that_succeeds_before_the_first_attempt_says_retried_is_still_succeeded_in_the_live_list():
    """Two pool processes: the retry's copy runs and succeeds before the process that asked for
    it sends task-retried, whose clock is the latest. The attempt, not the clock, orders them."""
    task = str(uuid.uuid4())
    out = flaky_events(
        task,
        *RETRY_RECEIVED_WHILE_THE_FIRST_RUNS,
        ("task-started", 1.3, {}),
        ("task-succeeded", 1.4, {"runtime": 0.1}),
        ("task-retried", 1.5, {"exception": "ConnectionError('payment gateway timed out')"}),
    )
    assert [(r["state"], r["retries"]) for r in out.tasks] == [("received", 0), ("started", 0), ("received", 1), ("started", 1), ("succeeded", 1), ("retried", 0)]
    for row in out.tasks:  # one batch a change, in the order they came
        record_tasks(APP, [row], source=LiveSource.EVENTS)
    live = LiveTask.objects.get(app=APP, task_id=task)
    assert (live.state, live.retries) == ("succeeded", 1)


def test_the_watcher_remembers_a_bounded_number_of_tasks():
    translator, out = Translator(APP, max_tasks=100), Output()
    for i in range(1000):
        translator.take(checked({"type": "task-received", "uuid": f"t-{i}", "timestamp": 1_800_000_000.0, "hostname": "w@h", "name": "shop.tick"}), out)
    assert len(translator.tasks) == 100 and translator.forgotten == 900 and "t-999" in translator.tasks and "t-0" not in translator.tasks


def test_spans_the_full_sink_refuses_are_counted_as_dropped_and_the_task_states_still_arrive(collector, events_worker):
    broker = broker_url()
    # The watcher's bound is one span, and one is counted as waiting for the collector (which only
    # ever takes off what it read): every batch the watcher pushes is refused.
    get_redis().incrby(PENDING, 1)
    watch = watcher(broker, env={"TRACING_SINK_MAX_SPANS": "1"})
    try:
        (order_id,) = produce("from tests.attached_app import place_order\nprint(place_order.delay('full').id)", broker)
        wait_for(lambda: LiveTask.objects.filter(app=APP, state="succeeded").count() == 2, timeout=60, what="both tasks succeeded in the live list")
        wait_for(lambda: "span sink holds its limit" in watch.log_text(), timeout=60, what="the watcher saying the sink is full")
    finally:
        watch.stop()
        get_redis().decrby(PENDING, 1)
    assert not spans_where(message_id=order_id)
    dropped = int(re.search(r"watcher stopped: .*dropped (\d+)", watch.log_text()).group(1))
    assert dropped >= 2, watch.log_text()[-2000:]


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        (["--broker", "redis://127.0.0.1:1/0", "--app", "shop events"], "--app 'shop events'"),
        (["--broker", "localhost:6379", "--app", "shop"], "is not a broker URL"),
        (["--broker", "redis://127.0.0.1:1/0", "--app", "shop", "--batch", "0"], "must be above 0"),
    ],
)
def test_the_command_refuses_bad_options_with_the_reason(options, complaint):
    with pytest.raises(CommandError, match=re.escape(complaint)):
        call_command("watch_celery", *options)
