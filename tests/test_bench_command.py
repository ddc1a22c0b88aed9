"""manage.py bench: its choices, a bench extra missing, the memory and CPU it reads, a drain on
the run's broker, and a run on a database, a Redis (and on RabbitMQ a vhost) of its own that
leaves the user's as they were."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import redis
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from console.models import ApiToken
from tests.support import REPO
from tests.support.brokers import on_rabbitmq, waiting
from tests.support.stores import run_keys, run_rows
from tests.support.waiting import wait_for
from tests.support.workers import worker_database_url
from tooling.bench import attach, counting, flower, live, memory, processes, spans, throughput
from tooling.own_stores import INSIDE_ENV
from tooling.rabbitmq import vhost_names
from tracing.models import Span
from tracing.redis import get_redis

pytestmark = pytest.mark.django_db


def test_an_unknown_measurement_is_refused_with_the_choices():
    with pytest.raises(CommandError, match=r"unknown measurement\(s\) \['p99'\]; choose from p1, flower, p2, p3, p4, p5, p6, p7, p8, p9"):
        call_command("bench", only="p1,p99")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": 0}, "--concurrency 0: give at least 1"),
        ({"json_path": "/no/such/dir/bench.json"}, "the directory /no/such/dir does not exist"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(options, message):
    with pytest.raises(CommandError, match=message):
        call_command("bench", only="p2", **options)


def test_an_unreachable_redis_is_named_before_anything_starts(settings):
    settings.REDIS_URL = "redis://:secret@127.0.0.1:9/0"
    with pytest.raises(CommandError, match=r"Redis at redis://@127.0.0.1:9/0 did not answer") as refused:
        call_command("bench", only="p2")
    assert "secret" not in str(refused.value)


def test_an_unreachable_rabbitmq_is_named_before_anything_starts(settings, tmp_path):
    settings.CELERY_BROKER_URL = "amqp://guest:secret@nowhere.invalid:5672//"  # not local: nothing is started
    with pytest.raises(CommandError, match=r"^no RabbitMQ answers at amqp://nowhere.invalid:5672//; start one") as refused:
        call_command("bench", only="p2", json_path=str(tmp_path / "bench.json"))
    assert "secret" not in str(refused.value)
    assert not (tmp_path / "bench.json").exists()


def test_a_broker_the_bench_does_not_know_is_refused(monkeypatch):
    monkeypatch.setenv("BROKER", "kafka")
    with pytest.raises(CommandError, match="BROKER must be redis or rabbitmq, not 'kafka'"):
        call_command("bench", only="p2")


def test_a_missing_bench_extra_skips_only_its_own_figures(monkeypatch, tmp_path):
    # The measurements themselves, in this process on the test database, as the bench's child
    # process runs them on its own: the skipped extras are patched out here.
    monkeypatch.setenv(INSIDE_ENV, "test")
    monkeypatch.setattr(flower, "installed", lambda: False)
    monkeypatch.setattr(live, "installed", lambda: False)
    monkeypatch.setattr(memory, "installed", lambda: False)
    out = io.StringIO()
    monkeypatch.setattr(attach, "installed", lambda: False)
    call_command("bench", only="flower,p3,p7,p8", json_path=str(tmp_path / "bench.json"), stdout=out)
    text = out.getvalue()
    for name in ("p1_flower_ratio", "p3_live_p95_ms", "p7_rss_growth_pct", "p8_attach_ratio"):
        assert f"{name} skipped: " in text
    figures = (tmp_path / "bench.json").read_text()
    assert '"skipped"' in figures and "make bench installs it" in figures and '"machine"' in figures


def test_resident_memory_counts_a_process_with_its_children():
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import time; x = bytearray(64 << 20); time.sleep(60)'])"])
    try:
        wait_for(lambda: processes.rss_mib(parent.pid) > 64, timeout=30, what="the child to hold its 64 MiB")
        assert processes.rss_mib(parent.pid, children=False) < 64 < processes.rss_mib(parent.pid)
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()


def test_cpu_time_counts_a_process_with_its_children():
    burn = "import time; t = time.process_time(); x = 0\nwhile time.process_time() - t < 0.6: x += 1\ntime.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])"])
    try:
        wait_for(lambda: processes.cpu_seconds(parent.pid) >= 0.6, timeout=60, what="the child to burn its 0.6 CPU seconds")
        own = psutil.Process(parent.pid).cpu_times()
        assert own.user + own.system < 0.6, "the parent alone has not burnt it: its child has"
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()
    assert processes.cpu_seconds(parent.pid) == 0.0, "a process gone has used nothing"


def test_p1_rounds_alternate_which_side_drains_first_and_pair_each_bare_drain_with_its_neighbour(monkeypatch, tmp_path):
    # The drains themselves are tested on a real worker below; here only their order.
    order = []

    def drained(side, rate):
        def drain(n, **_):
            order.append(side)
            return throughput.Drained(rate, rate / 1000)

        return drain

    monkeypatch.setattr(throughput, "bare_rate", drained("bare", 1000.0))
    monkeypatch.setattr(throughput, "flowscope_rate", drained("flows", 800.0))
    pairs = throughput.paired_rates(10, 3, concurrency=1, log_dir=tmp_path, progress=lambda text: None)
    assert order == ["bare", "flows", "flows", "bare", "bare", "flows"]
    assert [(bare.rate, traced.rate) for bare, traced in pairs] == [(1000.0, 800.0)] * 3


@pytest.mark.worker
def test_a_bare_drain_on_the_runs_broker_counts_every_message_and_the_workers_cpu(monkeypatch, tmp_path):
    # The p1 measurement's bare side on whichever broker the run is on: filled, drained by a
    # worker of its own, timed between the first and the last completion.
    monkeypatch.setenv("DATABASE_URL", worker_database_url())
    drained = throughput.bare_rate(300, concurrency=1, log_dir=tmp_path, progress=lambda text: None)
    assert counting.progress("bare")[0] == 300
    assert drained.rate > 0 and drained.cpu_ms > 0
    assert waiting("bench.bare") == 0
    setup = throughput.bare_setup(1)
    if on_rabbitmq():
        assert setup == f"RabbitMQ {settings.FLOWS_RABBITMQ_QUEUE_TYPE} queue, topic exchange, prefetch 1 per pool process (1 processes), late acks, publisher confirms"
    else:
        assert setup == "Redis list (flows.consume.broker:Transport transport), prefetch 1 per pool process (1 processes), late acks"
    counting.reset("bare")


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_p8_drains_a_plain_celery_app_bare_and_through_the_agent_and_stores_the_attached_spans(monkeypatch, tmp_path):
    # p8 at a tiny size on the run's broker: the plain app's worker bare and through
    # flowscope-agent, reporting to a daphne and a collector of the measurement's own. Two
    # rounds (the order flipped in the second), a hundred tasks a drain, a memory run of 300.
    # OpenTelemetry's instrumentation is the third side (the test extra installs it).
    if not attach.otel_installed():
        pytest.fail(attach.OTEL_NOT_INSTALLED)
    monkeypatch.setenv("DATABASE_URL", worker_database_url())
    figures = attach.attach_ratio(100, 2, 300, 100, concurrency=1, log_dir=tmp_path, progress=lambda text: None)
    assert (figures["p8_tasks"], figures["p8_rounds"], figures["p8_memory_tasks"], figures["p8_memory_baseline_tasks"]) == (100, 2, 300, 100)
    assert figures["p8_bare_celery_per_s"] > 0 and figures["p8_attached_per_s"] > 0
    assert 0.2 < figures["p8_attach_ratio"] < 5 and 0.2 < figures["p8_attach_cpu_ratio"] < 5, figures
    assert figures["p8_bare_celery_cpu_ms"] > 0 and figures["p8_attached_cpu_ms"] > 0
    # The console did the storing: its web process took the live reports and spans, its collector stored them.
    assert figures["p8_console_web_cpu_ms"] > 0 and figures["p8_console_collector_cpu_ms"] > 0, figures
    assert figures["p8_spans_a_task"] == 2, figures  # a send and a process span, every round
    # OpenTelemetry's Celery instrumentation in the same rounds, exporting to the same console:
    # its publish and run spans were stored too, so the console's cost is measured on both sides.
    assert figures["p8_otel_spans_a_task"] == 2 and figures["p8_otel_console_collector_cpu_ms"] > 0, figures
    assert 0.2 < figures["p8_otel_ratio"] < 5 and 0.2 < figures["p8_otel_cpu_ratio"] < 5 and 0.2 < figures["p8_agent_vs_otel_ratio"] < 5, figures
    # The same rounds with the console on CPUs of its own and the app on the rest.
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        assert figures["p8_apart_cpus"] == f"app {cpus[: len(cpus) // 2]}, console {cpus[len(cpus) // 2 :]}" and figures["p8_apart_rounds"] == 2, figures
        assert 0.2 < figures["p8_apart_attach_ratio"] < 5 and 0.2 < figures["p8_apart_attach_cpu_ratio"] < 5, figures
    # Every attached task of the memory run reached the console: a send and a process span each.
    assert figures["p8_spans_stored"] == 2 * 300, figures
    for kind in ("web", "collector", "worker"):
        early, late = figures[f"p8_{kind}_rss_mib"]
        assert early > 20 and late > 20, figures
    assert figures["p8_attach_rss_growth_pct"] == max(figures[f"p8_{kind}_rss_growth_pct"] for kind in ("web", "collector", "worker"))
    logs = {path.name for path in tmp_path.iterdir()}
    assert {"bench-plain-worker-bare.log", "bench-plain-worker-attached.log", "bench-plain-worker-otel.log", "bench-plain-producer.log"} <= logs
    assert not Span.objects.filter(service=attach.APP).exists(), "the measurement removed its spans"
    assert not ApiToken.objects.filter(created_by="manage.py bench").exists(), "and its agent token"
    assert waiting(attach.QUEUE) == 0


def test_the_memory_of_a_process_gone_is_nothing():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert processes.rss_mib(process.pid) == 0.0


def test_the_tasks_flower_saw_are_summed_over_workers_and_task_names():
    metrics = "\n".join(
        [
            "# HELP flower_events_total Number of events",
            'flower_events_total{task="flows.bench_noop",type="task-received",worker="a@h"} 9.0',
            'flower_events_total{task="flows.bench_noop",type="task-succeeded",worker="a@h"} 7.0',
            'flower_events_total{task="flows.bench_noop",type="task-succeeded",worker="b@h"} 5.0',
            'flower_events_created{task="flows.bench_noop",type="task-succeeded",worker="b@h"} 1.7e9',
        ]
    )
    assert flower.succeeded(metrics) == 12


@pytest.mark.django_db(transaction=True)
def test_a_bench_run_measures_on_a_database_and_redis_of_its_own_and_leaves_the_users_as_they_were(tmp_path):
    # What the span measurement clears after itself, were it to run on the user's stores: the
    # spans of its service, and its stream.
    Span.objects.create(trace_id="a" * 32, span_id="b" * 16, name="the user's span", service=spans.SERVICE, start_time=timezone.now(), duration_us=1)
    get_redis().set(spans.STREAM, "the user's")
    rows, keys = run_rows(), run_keys()
    out = tmp_path / "bench.json"
    env = {**os.environ, "DATABASE_URL": worker_database_url(), "REDIS_URL": settings.REDIS_URL}
    done = subprocess.run([sys.executable, "manage.py", "bench", "--quick", "--only", "p2,p6", "--json", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    figures = json.loads(out.read_text())
    assert figures["p2_spans"] == 20_000 and figures["p2_spans_per_s"] > 0, "the run stored its spans"
    assert figures["p6_requeue_per_s"] > 0, "the run requeued on its broker"
    assert "p2_spans_per_s" in done.stdout
    kind = "rabbitmq" if on_rabbitmq() else "redis"
    assert figures["broker"] == kind and f"measuring on {kind} (" in done.stdout
    assert waiting("bench.requeue") == 0, "nothing of the bench's in the user's broker"
    assert run_rows() == rows
    assert run_keys() == keys
    machine = figures["machine"]
    assert machine["run_database"] != settings.DATABASES["default"]["NAME"] and not Path(machine["run_database"]).exists(), "its database is removed"
    assert machine["run_redis"] != settings.REDIS_URL and redis.Redis.from_url(machine["run_redis"]).dbsize() == 0, "its Redis database is empty again"
    assert "runs on a database of its own" in done.stderr
    if on_rabbitmq():  # its queues were in a vhost of its own, deleted after it
        vhost = machine["run_broker"].rsplit("/", 1)[1]
        assert machine["run_broker"] != settings.CELERY_BROKER_URL and vhost.startswith("flowscope_bench_")
        assert vhost not in vhost_names()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_the_plain_apps_processes_start_on_the_cpus_they_are_given(tmp_path):
    cpu = min(os.sched_getaffinity(0))
    side = attach.Attached(url="http://127.0.0.1:9", token="", concurrency=1, log_dir=tmp_path, cpus={cpu})
    shown = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"], preexec_fn=side.pin(), capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == f"[{cpu}]"
    assert attach.Attached(url="http://127.0.0.1:9", token="", concurrency=1, log_dir=tmp_path).pin() is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_pinning_a_running_process_moves_every_thread_of_it():
    script = "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); print('up', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "up"
        cpu = min(os.sched_getaffinity(0))
        attach.pin_threads(child.pid, {cpu})
        threads = psutil.Process(child.pid).threads()
        assert len(threads) >= 2 and all(os.sched_getaffinity(t.id) == {cpu} for t in threads)
    finally:
        child.kill()
        child.wait()
