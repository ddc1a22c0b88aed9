"""`manage.py demo` (what `make demo` runs) from nothing: its own Redis, database and processes."""

import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
import redis
from django.core.management import CommandError, call_command

from flows.consume.stats import PROCESSED_KEY
from tests.support import REPO
from tests.support.brokers import on_rabbitmq
from tests.support.waiting import wait_for
from tooling.brokers import chosen_url
from tooling.devredis import free_port
from tooling.rabbitmq import DEFAULT_URL, Vhost


def processes_with(marker: str) -> list[int]:
    """Pids whose environment carries `marker`: everything the demo started inherits it."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker.encode() in (proc / "environ").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def attached_shop_seen(database: Path) -> tuple[set[str], list[tuple]]:
    """Span names the attached shop's agent reported, and its dead letters, from the demo's own database."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
        names = {row[0] for row in db.execute("SELECT DISTINCT name FROM tracing_span WHERE service = 'attached_shop'")}
        dead = db.execute("SELECT app, message_type, queue, error_type, state FROM flows_deadletter WHERE app != ''").fetchall()
    return names, dead


PATTERNS = {"fan_out", "saga", "request_reply", "competing_consumers", "fire_and_forget"}


def patterns_done(demo_redis: redis.Redis) -> set[str]:
    """Patterns with a delivery done ok, from the counts the demo's summary reads."""
    return {field.decode().split("|", 2)[0] for field, n in demo_redis.hgetall(PROCESSED_KEY).items() if field.decode().endswith("|ok") and int(n)}


def sagas_completed(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
        return db.execute("SELECT COUNT(*) FROM flows_sagainstance WHERE state = 'completed'").fetchone()[0]


def demo_env(var_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "FLOWS_MODULES")}
    env.update(
        # What `make demo` adds to the production settings: the tooling and the demo catalog.
        FLOWSCOPE_EXTRA_APPS="tooling,tooling.lab,examples.demo",
        FLOWS_MODULES="examples.demo.catalog",
        FLOWSCOPE_VAR_DIR=var_dir,
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",  # nothing there: the demo must start its own
        FLOWSCOPE_ADMIN_PASSWORD="demo-password-123",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.mark.worker
def test_the_demo_starts_everything_runs_the_flows_and_stops_all_it_started_on_ctrl_c():
    var_dir = tempfile.mkdtemp(prefix="flowscope-demo-")
    port = free_port()
    env = demo_env(var_dir)
    # On RabbitMQ a vhost of the demo's own: in the run's, the session worker (which consumes the
    # demo catalog's queues too) would take the demo's messages into the test database.
    vhost = Vhost(os.environ["CELERY_BROKER_URL"], prefix="flowscope_demo_test").create() if on_rabbitmq() else None
    if vhost is not None:
        env["CELERY_BROKER_URL"] = vhost.url
    log = Path(var_dir) / "demo-output.log"
    with open(log, "wb") as out, contextlib.ExitStack() as cleanup:
        if vhost is not None:
            cleanup.callback(vhost.delete)
        demo = subprocess.Popen([sys.executable, "manage.py", "demo", "--port", str(port), "--rate", "20"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            running = f"Flowscope demo running at http://127.0.0.1:{port}/"
            wait_for(lambda: running in log.read_text() or demo.poll() is not None, timeout=150, interval=0.5, what="the demo to say it is running")
            assert demo.poll() is None, log.read_text()
            assert healthy(f"http://127.0.0.1:{port}/healthz"), "running means the web server answers"
            text = log.read_text()
            assert "login: admin / demo-password-123" in text
            assert "(started for the demo)" in text
            # The broker the run is on: the tests' RabbitMQ vhost, handed down as CELERY_BROKER_URL.
            assert ("broker: rabbitmq at amqp://" if on_rabbitmq() else "broker: redis at redis://") in text, text
            assert "attached: attached_shop, plain Celery through flowscope-agent" in text
            assert len(processes_with(var_dir)) >= 8, "web, four workers, the load generator, redis, the shop's worker and producer"
            # The flows run: every pattern has a delivery done and a saga has completed (what the
            # summary at the end reports), in the demo's own Redis and database.
            demo_redis = redis.Redis.from_url(re.search(r"^redis: (\S+)", text, re.MULTILINE)[1])
            database = Path(var_dir) / "flowscope.sqlite3"
            wait_for(lambda: patterns_done(demo_redis) >= PATTERNS and sagas_completed(database), timeout=180, interval=1, what="every pattern's flows to run and a saga to complete")
            # The plain Celery shop, through the agent: its chain, group and chord in the console,
            # and a declined card (or a rate lookup out of retries) as a dead letter of its app.
            shown = {"process attached_shop.ship_order", "send attached_shop.notify", "process attached_shop.notify", "process attached_shop.total"}
            wait_for(lambda: shown <= attached_shop_seen(database)[0] and attached_shop_seen(database)[1], timeout=180, interval=1, what="the attached shop's spans and a dead letter")
            _, dead = attached_shop_seen(database)
            app, message_type, queue, error_type, state = dead[0]
            assert (app, queue, state) == ("attached_shop", "attached_shop", "dead"), dead
            assert (message_type, error_type) in {
                ("attached_shop.charge_card", "examples.attached_shop.shop.CardDeclined"),
                ("attached_shop.fetch_exchange_rate", "builtins.ConnectionError"),
            }, dead
            demo.send_signal(signal.SIGINT)
            assert demo.wait(60) == 0, log.read_text()
        finally:
            if demo.poll() is None:
                demo.kill()
    text = log.read_text()
    assert "stopping the demo's processes" in text
    assert re.search(r"^  stopped: web, collector, worker-edge, .*loadgen", text, re.MULTILINE), text
    summary = dict(re.findall(r"^\s+(\w+)\s+(.*ok=\d+.*)$", text, re.MULTILINE))
    assert set(summary) >= PATTERNS, text
    assert re.search(r"sagas by state \(all runs\): \{.*'completed': \d+", text), text
    assert re.search(r"^attached app attached_shop \(all runs\): spans stored [1-9]\d*; dead letters \{.*'dead': [1-9]", text, re.MULTILINE), text
    wait_for(lambda: not processes_with(var_dir), timeout=20, what="every process the demo started to be gone")
    assert not healthy(f"http://127.0.0.1:{port}/healthz")


def test_a_port_another_program_holds_is_refused_before_anything_starts(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    settings.REDIS_URL = nowhere  # nothing answers there: the demo would start a Redis
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        port = other_program.getsockname()[1]
        with pytest.raises(CommandError) as refused:
            call_command("demo", "--port", str(port))
    message = str(refused.value)
    assert message.startswith(f"port {port} on 127.0.0.1 is taken by another program")
    assert re.search(r"pick another: PORT=(\d+) make demo \(or manage.py demo --port \1\)$", message), message
    # No Redis started, no process logged, nothing migrated or changed.
    assert list(tmp_path.iterdir()) == []
    assert nowhere == settings.REDIS_URL  # untouched: no Redis was looked for


def test_no_rabbitmq_answering_is_one_line_on_screen_and_nothing_starts(tmp_path):
    env = {**demo_env(str(tmp_path)), "CELERY_BROKER_URL": "amqp://guest:secret@nowhere.invalid:5672//"}
    done = subprocess.run([sys.executable, "manage.py", "demo", "--port", str(free_port())], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "CommandError: no RabbitMQ answers at amqp://nowhere.invalid:5672//; start one (Debian: apt install rabbitmq-server) or set CELERY_BROKER_URL to one that answers"
    ], done.stderr
    assert "redis:" not in done.stdout, "no Redis looked for or started"
    assert not (tmp_path / "redis").exists() and not (tmp_path / "log").exists()


def test_a_broker_name_the_demo_does_not_know_is_refused(settings, tmp_path, monkeypatch):
    settings.VAR_DIR = tmp_path
    monkeypatch.setenv("BROKER", "kafka")
    with pytest.raises(CommandError, match="BROKER must be redis or rabbitmq, not 'kafka'"):
        call_command("demo", "--port", str(free_port()))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("broker", "configured", "chosen"),
    [
        ("", "redis://127.0.0.1:6390/2", "redis://127.0.0.1:6390/2"),
        ("", "amqp://u:p@rabbit:5672/v", "amqp://u:p@rabbit:5672/v"),
        ("rabbitmq", "redis://127.0.0.1:6390/2", DEFAULT_URL),
        ("rabbitmq", "amqp://u:p@rabbit:5672/v", "amqp://u:p@rabbit:5672/v"),
        ("redis", "amqp://u:p@rabbit:5672/v", "redis://127.0.0.1:6391/0"),
        ("redis", "redis://127.0.0.1:6390/2", "redis://127.0.0.1:6390/2"),
    ],
)
def test_broker_asks_for_a_kind_and_a_configured_url_of_that_kind_wins(settings, monkeypatch, broker, configured, chosen):
    monkeypatch.setenv("BROKER", broker)
    settings.CELERY_BROKER_URL, settings.REDIS_URL = configured, "redis://127.0.0.1:6391/0"
    assert chosen_url() == chosen


def test_a_port_that_is_no_tcp_port_is_refused(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    with pytest.raises(CommandError, match="--port 70000 is not a TCP port"):
        call_command("demo", "--port", "70000")
    assert list(tmp_path.iterdir()) == []


# `manage.py demo`, with the port check fooled: the port is free when checked, then taken by
# the time the web server binds it (another program was quicker).
RACE = """
import sys
import tooling.processes
tooling.processes.port_taken = lambda host, port: False
from django.core.management import execute_from_command_line
execute_from_command_line(["manage.py", "demo", "--port", sys.argv[1]])
"""


@pytest.mark.portable
@pytest.mark.worker
def test_a_web_server_that_dies_at_start_is_reported_with_the_cause_from_its_log_and_all_is_stopped():
    var_dir = tempfile.mkdtemp(prefix="flowscope-demo-")
    env = {**demo_env(var_dir), "DJANGO_SETTINGS_MODULE": "console.settings"}
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()  # accepts connections, never answers HTTP
        port = other_program.getsockname()[1]
        done = subprocess.run([sys.executable, "-c", RACE, str(port)], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the demo could not start: web exited with" in done.stderr, done.stderr
    assert f"see {var_dir}/log/web.log; its log ends:" in done.stderr
    assert "Address already in use" in done.stderr, "the cause, from the web server's log, on screen"
    assert "running at" not in done.stdout
    assert "stopping the demo's processes" in done.stdout
    wait_for(lambda: not processes_with(var_dir), timeout=20, what="every process the demo started to be gone")
