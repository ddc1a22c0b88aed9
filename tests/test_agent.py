"""flowscope-agent attached to an app written only with Celery (tests/attached_app), from outside.

A real worker started through `.venv/bin/flowscope-agent celery -A tests.attached_app worker` in
a subprocess, a producer started through it too, the tests' own Redis as the broker, and the real
console (pytest-django's live server, closed to anonymous spans, with an agent token) whose
collector stores what arrives. Nothing here imports the agent into the test process: what it
does, it does in the processes it was put in front of.
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from django.conf import settings
from kombu import Connection, Exchange

from console.models import ApiToken
from tests.support import REPO
from tests.support.brokers import on_rabbitmq, purge
from tests.support.waiting import wait_for
from tests.tracing_helpers import spans_where, wait_spans
from tooling.processes import LogLine, Supervisor

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

BIN = Path(sys.executable).parent
AGENT = str(BIN / "flowscope-agent")
PRODUCER, CONSUMER, ERROR = 3, 4, 2
# The app's own environment: none of this project's settings, so Celery's Django fix-up stays off and
# CELERY_BROKER_URL (set for the engine's workers; Celery reads it before any setting) does not
# take the app off its own broker.
FOREIGN = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "FLOWS_MODULES", "FLOWSCOPE_EXTRA_APPS", "OTEL_", "CELERY_")
RUNTIME = re.compile(r"Task shop\.tick\[[^\]]+\] succeeded in ([0-9.e-]+)s")
SHUTDOWN_LINE = re.compile(r"flowscope-agent: pid \d+ reported (\d+) spans to \S+; (\d+) failed to send, (\d+) dropped")


def redis_url() -> str:
    """The tests' Redis, a database of its own: the attached app shares nothing with the engine's workers."""
    return settings.REDIS_URL.rsplit("/", 1)[0] + "/7"


def broker_url() -> str:
    """The attached app's broker follows the run's: that Redis database, or the run's RabbitMQ vhost."""
    return settings.CELERY_BROKER_URL if on_rabbitmq() else redis_url()


def app_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    return {**env, "ATTACHED_BROKER_URL": broker_url(), "ATTACHED_REDIS_URL": redis_url(), "PYTHONUNBUFFERED": "1", "FLOWSCOPE_EXPORT_DELAY_MS": "100", **extra}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AttachedWorker:
    """`[flowscope-agent] celery -A tests.attached_app worker` on the app's queue, logging to a file."""

    def __init__(self, *, agent: bool, concurrency: int = 2, **env: str) -> None:
        self.node = f"attached-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        self.supervisor = Supervisor(log_dir=Path(tempfile.mkdtemp(prefix="flowscope-agent-")), cwd=REPO, env=app_env(**env))
        celery = [str(BIN / "celery"), "-A", "tests.attached_app", "worker", "-l", "info", "-Q", "shop", "-c", str(concurrency), "-n", self.node, "--without-mingle", "--without-gossip"]
        self.command = [AGENT, *celery] if agent else celery

    def __enter__(self) -> AttachedWorker:
        self.child = self.supervisor.start("worker", self.command, ready=LogLine(re.escape(" ready.")))
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> str:
        self.supervisor.stop()
        return self.child.log_text()

    def log(self) -> str:
        return self.child.log_text()


def produce(script: str, *, agent: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `script` (it imports the app and sends) as its own process, through the agent or not."""
    command = [sys.executable, "-c", textwrap.dedent(script)]
    result = subprocess.run([AGENT, *command] if agent else command, cwd=REPO, env=app_env(**env), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def shutdown_counts(log: str) -> tuple[int, int, int]:
    """Spans exported, failed and dropped, summed over the processes that said so on their way out."""
    lines = SHUTDOWN_LINE.findall(log)
    assert lines, "no process of the agent reported its counts at exit:\n" + log[-3000:]
    return tuple(sum(int(line[i]) for line in lines) for i in range(3))  # type: ignore[return-value]


@pytest.fixture
def reporting(live_server, collector, settings) -> Iterator[dict[str, str]]:
    """Where an attached process reports: the live console, which takes spans only with a token."""
    settings.TRACING_OTLP_OPEN = False
    settings.TRACING_OTLP_TOKEN = ""
    _, secret = ApiToken.issue(name="attached shop", role="agent", created_by="tests")
    yield {"FLOWSCOPE_URL": live_server.url, "FLOWSCOPE_TOKEN": secret}


@pytest.fixture(autouse=True)
def empty_shop_queue() -> Iterator[None]:
    client = redis.Redis.from_url(redis_url())
    client.flushdb()  # on Redis the app's queue is in it
    if on_rabbitmq():
        purge("shop")
    yield
    client.flushdb()
    if on_rabbitmq():
        purge("shop")


def by_name(spans: list) -> dict:
    return {s.name: s for s in spans}


def test_a_task_that_sends_a_task_is_one_trace_of_send_and_process_spans_in_the_console(reporting):
    with AttachedWorker(agent=True, **reporting) as worker:
        sent = produce(
            """
            from tests.attached_app import place_order
            print(place_order.delay("A-1").id)
            """,
            **reporting,
        )
        order_id = sent.stdout.strip()
        (first, *_) = wait_spans(1, message_id=order_id, what="the order's spans")
        spans = wait_spans(4, trace_id=first.trace_id, what="send and process of both tasks, in the order's trace")
    named = by_name(spans)
    assert set(named) == {"send shop.place_order", "process shop.place_order", "send shop.charge_card", "process shop.charge_card"}, [s.name for s in spans]
    send_order, run_order, send_charge, run_charge = (named[n] for n in ("send shop.place_order", "process shop.place_order", "send shop.charge_card", "process shop.charge_card"))
    assert [s.kind for s in (send_order, run_order, send_charge, run_charge)] == [PRODUCER, CONSUMER, PRODUCER, CONSUMER]
    # The chain of parents: producer -> its task -> the task it sent -> that task.
    assert send_order.parent_span_id == ""
    assert run_order.parent_span_id == send_order.span_id
    assert send_charge.parent_span_id == run_order.span_id
    assert run_charge.parent_span_id == send_charge.span_id
    for span in spans:
        a = span.attributes
        assert (a["messaging.system"], a["messaging.destination.name"], a["flowscope.app"], span.service) == ("celery", "shop", "shop", "shop"), a
        assert a["flowscope.message_type"] == span.name.split(" ", 1)[1] and a["flowscope.attempt"] == 1
        assert a["messaging.message.conversation_id"] == order_id  # the root task's id ties the tree together
        assert not {"messaging.operation.name", "messaging.consumer.group.name"} & set(a), a  # repeats of other keys, not sent
    assert send_order.message_id == run_order.message_id == order_id
    assert send_charge.message_id == run_charge.message_id != order_id
    assert (send_order.attributes["messaging.operation.type"], send_order.attributes["flowscope.producer"]) == ("send", "service:shop")
    assert send_charge.attributes["flowscope.producer"] == "handler:shop.place_order"
    for run in (run_order, run_charge):
        a = run.attributes
        assert (a["messaging.operation.type"], a["flowscope.worker"], a["flowscope.outcome"], a["flowscope.state"], run.status_code) == ("process", worker.node, "succeeded", "SUCCESS", 1), a
        assert 0 <= a["flowscope.queue_wait_ms"] < 60_000
        assert "flowscope.scheduled" not in a


def test_a_failing_task_has_error_status_and_a_countdown_is_noted_as_scheduled(reporting):
    with AttachedWorker(agent=True, **reporting):
        sent = produce(
            """
            from tests.attached_app import broken, charge_card
            print(broken.delay("B-2").id)
            print(charge_card.apply_async(("C-3",), countdown=1).id)
            """,
            **reporting,
        )
        broken_id, later_id = sent.stdout.split()
        spans = wait_spans(2, message_id=broken_id, what="the failing task's send and process spans")
        scheduled = wait_spans(2, message_id=later_id, what="the scheduled task's spans")
    run = by_name(spans)["process shop.broken"]
    assert (run.status_code, run.attributes["flowscope.outcome"], run.attributes["flowscope.final_attempt"]) == (ERROR, "failed", True)
    assert "ValueError: card declined for B-2" in run.status_message
    (event,) = [e for e in run.events if e["name"] == "exception"]
    assert event["attributes"]["exception.type"] == "builtins.ValueError" and "card declined" in event["attributes"]["exception.stacktrace"]
    send_later, run_later = by_name(scheduled)["send shop.charge_card"], by_name(scheduled)["process shop.charge_card"]
    assert send_later.attributes["flowscope.scheduled"] is True and run_later.attributes["flowscope.scheduled"] is True
    assert send_later.attributes["flowscope.scheduled_for"][:19] == run_later.attributes["flowscope.scheduled_for"][:19]  # the same ETA, to the second
    assert run_later.attributes["flowscope.queue_wait_ms"] >= 900  # it waited for its countdown


def test_a_retry_is_a_second_attempt_in_the_same_trace(reporting):
    with AttachedWorker(agent=True, **reporting):
        sent = produce(
            """
            import uuid
            from tests.attached_app import flaky
            print(flaky.delay(f"flaky:{uuid.uuid4().hex}").id)
            """,
            **reporting,
        )
        task_id = sent.stdout.strip()
        spans = wait_spans(4, message_id=task_id, what="two sends and two attempts of the flaky task")
    sends = sorted((s for s in spans if s.kind == PRODUCER), key=lambda s: s.attributes["flowscope.attempt"])
    runs = sorted((s for s in spans if s.kind == CONSUMER), key=lambda s: s.attributes["flowscope.attempt"])
    assert [s.attributes["flowscope.attempt"] for s in sends] == [1, 2] and [s.attributes["flowscope.attempt"] for s in runs] == [1, 2]
    assert len({s.trace_id for s in spans}) == 1
    # The retry is republished from inside the first attempt: attempt 1 -> its send -> attempt 2.
    assert runs[0].parent_span_id == sends[0].span_id and sends[1].parent_span_id == runs[0].span_id and runs[1].parent_span_id == sends[1].span_id
    first, second = runs[0].attributes, runs[1].attributes
    assert (first["flowscope.outcome"], first["flowscope.final_attempt"], runs[0].status_code) == ("retried", False, ERROR)
    assert "payment gateway timed out" in runs[0].status_message
    assert (second["flowscope.outcome"], runs[1].status_code) == ("succeeded", 1)


def test_messages_that_never_run_revoked_unknown_or_not_a_task_are_failed_attempts(reporting):
    with AttachedWorker(agent=True, **reporting):
        sent = produce(
            """
            from tests.attached_app import app, charge_card
            later = charge_card.apply_async(("R-9",), countdown=3)
            app.control.revoke(later.id)  # at once: the worker holds it until its ETA, then drops it
            print(later.id)
            print(app.send_task("shop.nobody_has_this", args=(1,)).id)
            """,
            **reporting,
        )
        revoked_id, unknown_id = sent.stdout.split()
        with Connection(broker_url()) as connection:  # not a Celery message at all: the worker rejects it
            connection.Producer().publish({"not": "a task"}, exchange=Exchange("shop", type="direct"), routing_key="shop", serializer="json")
        revoked = by_name(wait_spans(2, message_id=revoked_id, what="the send and the revoked attempt"))
        unknown = by_name(wait_spans(2, message_id=unknown_id, what="the send and the attempt no task could take"))
        (rejected,) = wait_spans(1, name="process unknown", what="the rejected message's attempt")
    assert (rejected.attributes["flowscope.outcome"], rejected.status_code, rejected.parent_span_id) == ("rejected", ERROR, "")
    for named, task, outcome in ((revoked, "shop.charge_card", "revoked"), (unknown, "shop.nobody_has_this", "unknown")):
        assert set(named) == {f"send {task}", f"process {task}"}, named
        send, run = named[f"send {task}"], named[f"process {task}"]
        assert run.parent_span_id == send.span_id and run.trace_id == send.trace_id
        assert (run.attributes["flowscope.outcome"], run.status_code, run.kind) == (outcome, ERROR, CONSUMER)


def run_ticks(worker: AttachedWorker, n: int) -> float:
    """Publish n no-op tasks from here (plain Celery) and wait until the worker has run every one:
    seconds from the first publish to the last task done."""
    key = f"ticks:{uuid.uuid4().hex}"
    counter = redis.Redis.from_url(redis_url())
    publisher = Celery("publisher", broker=broker_url(), set_as_current=False)
    started = time.monotonic()
    # The URL given again: Celery reads CELERY_BROKER_URL (set in this process for the engine) before broker=.
    with publisher.connection_for_write(broker_url()) as connection:
        for _ in range(n):
            publisher.send_task("shop.tick", args=(key,), queue="shop", connection=connection)
    wait_for(lambda: int(counter.get(key) or 0) >= n, timeout=120, what=f"{n} tasks run by {worker.node}")
    return time.monotonic() - started


def stop_when_logged(worker: AttachedWorker, n: int) -> str:
    """Stop the worker once it has logged n tasks succeeded; its log. A task bumps the tick counter
    in its body, and Celery logs it after task_postrun (where the agent ends its span): stopped in
    between, a pool process is killed mid-job (WorkerLostError in the log)."""
    wait_for(lambda: len(RUNTIME.findall(worker.log())) >= n, what=f"{worker.node} to log {n} tasks succeeded")
    return worker.stop()


PUBLISH_LOOP = """
    import time
    from tests.attached_app import tick
    started = time.perf_counter()
    for _ in range({n}):
        tick.delay("ticks:producer")
    print(time.perf_counter() - started)
"""


@pytest.mark.portable
def test_with_the_console_down_tasks_run_at_their_pace_and_the_agent_counts_what_it_could_not_send(capsys):
    n = 100  # a median runtime of a hundred tasks shows a 1 s wait as well as one of three hundred
    nowhere = {"FLOWSCOPE_URL": f"http://127.0.0.1:{free_port()}", "FLOWSCOPE_TOKEN": "fs_nothing-listens", "FLOWSCOPE_EXPORT_TIMEOUT": "1", "FLOWSCOPE_MAX_QUEUE": "100"}
    with AttachedWorker(agent=False) as plain:
        plain_seconds = run_ticks(plain, n)
        plain_log = stop_when_logged(plain, n)
    with AttachedWorker(agent=True, **nowhere) as attached:
        attached_seconds = run_ticks(attached, n)
        log = stop_when_logged(attached, n)
    exported, failed, dropped = shutdown_counts(log)
    assert exported == 0 and failed + dropped > 0, (exported, failed, dropped)
    assert "Traceback" not in log.split("ready.", 1)[1], log[-3000:]  # no task was hurt
    # Each task's own time as Celery measures it (prerun included): an agent waiting on the
    # export (a 1 s timeout against a console that is down) would show here in whole seconds.
    plain_ms, attached_ms = (statistics.median(float(t) * 1000 for t in RUNTIME.findall(text)) for text in (plain_log, log))
    assert len(RUNTIME.findall(log)) == n and attached_ms < 250, attached_ms
    # The publishing side: the same loop of n sends, without the agent and with it (console down).
    plain_publish = float(produce(PUBLISH_LOOP.format(n=n), agent=False).stdout)
    attached_publish = float(produce(PUBLISH_LOOP.format(n=n), **nowhere).stdout)
    with capsys.disabled():
        print(
            f"\n{n} no-op tasks on 2 prefork processes, first publish to last done: plain Celery {plain_seconds:.2f}s "
            f"({plain_seconds / n * 1000:.2f} ms a task), with the agent and the console down {attached_seconds:.2f}s "
            f"({attached_seconds / n * 1000:.2f} ms a task); the worker's agent: {failed} spans failed to send, {dropped} dropped.\n"
            f"Each task's runtime (Celery's 'succeeded in', median): plain {plain_ms:.3f} ms, with the agent and the console down {attached_ms:.3f} ms.\n"
            f"{n} sends in a producer: plain {plain_publish * 1000 / n:.3f} ms a send, with the agent (console down) {attached_publish * 1000 / n:.3f} ms a send"
        )


def test_a_token_of_another_role_is_refused_and_the_agent_counts_the_refusal(reporting):
    _, viewer = ApiToken.issue(name="not an agent", role="viewer", created_by="tests")
    sent = produce(
        """
        from tests.attached_app import charge_card
        print(charge_card.delay("D-4").id)
        """,
        **{**reporting, "FLOWSCOPE_TOKEN": viewer},
    )
    exported, failed, dropped = shutdown_counts(sent.stderr)
    assert (exported, failed, dropped) == (0, 1, 0), sent.stderr
    assert "403" in sent.stderr  # the exporter logs the console's answer
    assert not spans_where(message_id=sent.stdout.strip())


def test_the_agent_imports_and_starts_without_django_or_flowscope():
    probe = (
        "import sys; sys.modules['django'] = None; import flowscope_agent, flowscope_agent.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in ('console', 'flows', 'tracing', 'django')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd="/", env=app_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "['django']", result.stdout + result.stderr


@pytest.mark.portable
def test_the_agents_resource_hashes_once_and_encodes_as_the_sdks_does(monkeypatch):
    from flowscope_agent.export import KeptHashResource
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    sdk = Resource.create({"service.name": "shop", "flowscope.app": "shop"})
    kept = KeptHashResource(sdk.attributes, sdk.schema_url)
    assert kept == sdk and hash(kept) == hash(sdk) and dict(kept.attributes) == dict(sdk.attributes)
    expected = hash(sdk)
    monkeypatch.setattr(Resource, "__hash__", lambda self: pytest.fail("hashed again"))
    assert hash(kept) == expected  # worked out when it was made, not per span
    monkeypatch.undo()
    encoded = []
    for resource in (sdk, kept):
        exporter = InMemorySpanExporter()
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        provider.get_tracer("t").start_span("process shop.tick", attributes={"flowscope.app": "shop"}).end()
        (span,) = exporter.get_finished_spans()
        # The same span but for its ids and times: compare what the encoder makes of the resource.
        encoded.append(encode_spans([span]).resource_spans[0].resource.SerializeToString())
    assert encoded[0] == encoded[1]


@pytest.mark.portable
def test_the_command_line_says_what_is_wrong_and_starts_the_command_otherwise(tmp_path):
    def agent(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AGENT, *args], cwd=tmp_path, env=app_env(**env), capture_output=True, text=True, timeout=60)

    assert agent().returncode == 2 and "usage: flowscope-agent COMMAND" in agent().stdout
    missing = agent("no-such-command-here")
    assert missing.returncode == 127 and "cannot run 'no-such-command-here'" in missing.stderr
    bad_url = agent(sys.executable, "-c", "print('ran')", FLOWSCOPE_URL="ftp://console")
    assert bad_url.returncode == 2 and "FLOWSCOPE_URL='ftp://console' is not an http(s) URL" in bad_url.stderr and "ran" not in bad_url.stdout
    # The command runs in the agent's place, its exit status passed through, the agent attached in it.
    ran = agent(sys.executable, "-c", "import sys, flowscope_agent; sys.exit(7 if flowscope_agent._agent is not None else 1)", FLOWSCOPE_URL="http://127.0.0.1:9")
    assert ran.returncode == 7, ran.stderr
    quiet = agent(sys.executable, "-c", "pass")  # no FLOWSCOPE_URL: the program runs, the agent says why nothing is sent
    assert quiet.returncode == 0 and "FLOWSCOPE_URL is not set" in quiet.stderr


def test_the_agent_warns_about_what_the_app_has_not_turned_on_and_changes_nothing():
    script = """
        from celery import Celery
        import flowscope_agent

        class OldStyle:  # pre-4.0 names, as many apps still have them
            BROKER_URL = "memory://"
            CELERY_ALWAYS_EAGER = True

        def make():
            app = Celery("old", set_as_current=False)
            app.config_from_object(OldStyle)
            return app

        app, untouched = make(), make()
        flowscope_agent.attach(app)  # before the app has read its configuration: checked once it has
        assert app.conf.task_always_eager
        assert dict(app.conf) == dict(untouched.conf), "the agent changed the app's configuration"
        print("unchanged")
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, env=app_env(FLOWSCOPE_URL="http://127.0.0.1:9", FLOWSCOPE_TOKEN="fs_x"), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "unchanged" in result.stdout, result.stderr
    assert "task_always_eager is on" in result.stderr and "FLOWSCOPE_URL is not set" not in result.stderr


def test_detach_disconnects_every_signal_attach_connected_and_gives_the_counts():
    script = """
        from celery import Celery, signals
        import flowscope_agent

        def receivers():
            return {name: len(getattr(signals, name).receivers or ()) for name in dir(signals) if hasattr(getattr(signals, name), "receivers")}

        before = receivers()
        app = Celery("detached", broker="memory://", set_as_current=False)
        app.conf.task_always_eager = True

        @app.task
        def noop():
            pass

        flowscope_agent.attach(app, url="http://127.0.0.1:9", token="fs_x")
        assert receivers() != before
        noop.apply()
        counts = flowscope_agent.detach()
        assert receivers() == before, (before, receivers())
        assert counts["ended"] == 1 and counts["exported"] == 0, counts
        print("detached", counts)
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, env=app_env(FLOWSCOPE_EXPORT_TIMEOUT="0.5"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "detached" in result.stdout, result.stdout + result.stderr


@pytest.mark.portable
def test_an_agent_that_fails_inside_a_signal_leaves_the_task_alone():
    script = """
        from celery import Celery
        import flowscope_agent

        app = Celery("hurt", broker="memory://", set_as_current=False)

        @app.task
        def add(a, b):
            return a + b

        agent = flowscope_agent.attach(app, url="http://127.0.0.1:9", token="fs_x")

        def broken():
            raise RuntimeError("the agent's own bug")

        agent.reporter = broken
        assert add.apply((2, 3)).get() == 5
        print("ran")
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, env=app_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "ran" in result.stdout, result.stdout + result.stderr
    assert "flowscope-agent: prerun failed; the task is not affected" in result.stderr and "the agent's own bug" in result.stderr
