"""Checks 2 and 8: Redis (append-only, fsync always, on a port of its own) killed and restarted
under load. Workers, the collector and browsers reconnect; no acknowledged message is lost.

Check 2 here is Redis as the broker; on RabbitMQ, test_rabbitmq_restart.py restarts the broker.
Check 8 runs on either: Redis carries the live pages' channel layer whatever the broker."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from django.db.models import Count

from console.celery import app
from examples.demo.models import LedgerEntry
from flows.models import DeadLetter
from flows.produce.publishing import build_envelope
from flows.tasks import deliver
from tests.browser.conftest import browser, page, sign_in  # noqa: F401 - fixtures
from tests.people import person
from tests.reliability.catalog import runs
from tests.reliability.conftest import WORKER_ENV, sized
from tests.support.brokers import on_rabbitmq, redis_only_because
from tests.support.waiting import wait_for
from tests.support.workers import ManagedProcess, Worker
from tooling.devredis import RedisServer, answers, free_port
from tracing.models import Span

pytestmark = pytest.mark.django_db(transaction=True)
DOWN_SECONDS = 2.0


class Stack:
    """Redis with persistence, and a worker, the collector and the web server all on it."""

    def __init__(self) -> None:
        self.redis = RedisServer(appendonly=True, fsync_always=True).start()
        # Every child names it outright: they inherit the run's broker URL (tests/conftest.py),
        # which would take the broker out of this Redis's outage. On RabbitMQ the broker stays
        # the run's, and this Redis carries the rest (engine keys, spans, the channel layer).
        self.env = env = {**WORKER_ENV, "REDIS_URL": self.redis.url, **({} if on_rabbitmq() else {"CELERY_BROKER_URL": self.redis.url})}
        self.port = free_port()
        self.processes = [
            Worker("aof-worker", ["r.credits"], concurrency=2, extra_env=env).start(),
            ManagedProcess("aof-collector", ["collector"], ready_marker=" ready", extra_env=env).start(),
            ManagedProcess(
                "aof-web",
                ["-b", "127.0.0.1", "-p", str(self.port), "console.asgi:application"],
                ready_marker="Listening on TCP address",
                command=[sys.executable, "-m", "daphne"],
                extra_env=env,
            ).start(),
        ]

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restart_redis(self) -> datetime:
        """SIGKILL Redis, leave it down, start it again on its files; when it answers again."""
        self.redis.kill()
        time.sleep(DOWN_SECONDS)  # the outage itself, not a wait for something to happen
        self.redis.start()
        wait_for(lambda: answers(self.redis.url), what="Redis to answer again")
        return datetime.now(UTC)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        self.redis.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_text()[-2000:]}" for p in self.processes)


@pytest.fixture(scope="module")
def stack(django_db_setup: Any) -> Iterator[Stack]:
    running = Stack()
    yield running
    running.stop()


@redis_only_because("Redis as the broker; test_rabbitmq_restart.py restarts RabbitMQ")
def test_after_a_redis_restart_under_load_no_acknowledged_message_is_lost_and_consuming_resumes(stack, figure):
    seconds = sized(20, 10)
    out = Path(tempfile.mkdtemp(prefix="flowscope-publisher-")) / "acknowledged"
    publisher = ManagedProcess("publisher", ["-m", "tests.reliability.publisher", str(out), "200", str(seconds)], ready_marker="", extra_env=stack.env, command=[sys.executable])
    publisher.start()
    wait_for(lambda: LedgerEntry.objects.filter(service="rel").count() > 100, what="the load to be flowing")
    spans_before = Span.objects.count()
    # Deliveries in the middle of their handler when Redis dies: the worker must not give up on
    # its connection for them (Celery 5.7.0 exits there, see flows/worker_consumer.py).
    with app.connection_for_write(stack.redis.url) as connection:
        for k in ("slow-1", "slow-2"):
            deliver.apply_async(args=[build_envelope("rel.slow", {"key": k, "seconds": 4}).to_dict(), "r_slow"], queue="r.credits", connection=connection)
    aof = redis_py.Redis.from_url(stack.redis.url)
    wait_for(lambda: len(runs("r_slow_started", redis=aof)) == 2, what="the slow deliveries to be running")

    back_at = stack.restart_redis()
    back = time.monotonic()
    processed_at_restart = LedgerEntry.objects.filter(service="rel").count()
    wait_for(lambda: LedgerEntry.objects.filter(service="rel", created_at__gt=back_at).exists(), timeout=30, what=f"consuming again within 30s\n{stack.logs()}")
    consuming_after = time.monotonic() - back
    wait_for(lambda: Span.objects.filter(start_time__gt=back_at).exists(), timeout=30, what=f"the collector to store spans again\n{stack.logs()}")
    collecting_after = time.monotonic() - back

    assert publisher.process is not None
    publisher.process.wait(seconds + 60)
    acknowledged = out.read_text().split()
    refused = out.with_name("acknowledged.refused").read_text().splitlines()

    def accounted() -> bool:
        done = set(LedgerEntry.objects.filter(service="rel").values_list("reference", flat=True))
        dead = set(DeadLetter.objects.filter(consumer="r_credit").values_list("envelope__payload__key", flat=True))
        return not set(acknowledged) - done - dead

    # Deliveries the worker held when Redis died come back after the visibility timeout.
    wait_for(accounted, timeout=90, interval=0.5, what=f"every acknowledged message to be processed\n{stack.logs()}")
    # Each ran; maybe twice: a delivery whose ack was lost with the connection comes back, and
    # this handler is not idempotent on purpose (at least once, as the README's limits say).
    wait_for(lambda: set(runs("r_slow", redis=aof)) == {"slow-1", "slow-2"}, timeout=30, what="the slow deliveries to finish")
    slow_runs = len(runs("r_slow", redis=aof))
    aof.close()
    processed = set(LedgerEntry.objects.filter(service="rel").values_list("reference", flat=True))
    twice = LedgerEntry.objects.filter(service="rel").values("reference").annotate(n=Count("id")).filter(n__gt=1).count()
    lost = set(acknowledged) - processed - set(DeadLetter.objects.filter(consumer="r_credit").values_list("envelope__payload__key", flat=True))
    figure(
        f"{len(acknowledged)} sends acknowledged, {len(refused)} refused while Redis was down ({DOWN_SECONDS:g}s, SIGKILL); "
        f"{processed_at_restart} processed before the restart; consuming again {consuming_after:.1f}s and spans stored again "
        f"{collecting_after:.1f}s after Redis was back; {len(lost)} acknowledged lost, {twice} applied twice; spans {spans_before} -> {Span.objects.count()}; "
        f"2 slow deliveries in flight at the kill ran {slow_runs} times (not idempotent: at least once)"
    )
    assert not lost, sorted(lost)[:10]
    assert twice == 0
    assert {line.split(" ", 1)[0] for line in refused}.isdisjoint(acknowledged)


@pytest.mark.portable  # the channel layer is on Redis whatever the broker
def test_browsers_reconnect_within_10s_of_a_redis_restart_and_get_a_whole_snapshot(stack, page, figure):  # noqa: F811
    frames: list[dict[str, Any]] = []
    sockets: list[Any] = []

    def opened(socket: Any) -> None:
        sockets.append(socket)
        socket.on("framereceived", lambda payload: frames.append(json.loads(payload)))

    page.on("websocket", opened)
    person("viewer", "watcher")
    sign_in(page, stack.web, "watcher")
    status = page.locator("#live-status")
    wait_for(lambda: "live" in (status.get_attribute("class") or ""), what="the overview to go live")

    back_at = stack.restart_redis()
    back = time.monotonic()

    def fresh_frame() -> bool:
        at = status.get_attribute("data-frame-at")
        return bool(at) and datetime.fromisoformat(at) > back_at and "live" in (status.get_attribute("class") or "")

    wait_for(fresh_frame, timeout=10, interval=0.1, what=f"a snapshot after the restart within 10s\n{stack.logs()}")
    reconnected_after = time.monotonic() - back
    # The whole state, not a delta: every panel of the overview is drawn from the new frame.
    fresh = [f["frame"] for f in frames if f.get("type") == "snapshot" and datetime.fromisoformat(f["frame"]["at"]) > back_at]
    figure(f"live again {reconnected_after:.1f}s after Redis was back (down {DOWN_SECONDS:g}s, SIGKILL); {len(sockets)} socket(s) opened in all; {len(fresh)} whole snapshot(s) since")
    assert fresh and {"at", "series", "now", "queues", "dead_letters", "sagas", "workers", "graph"} <= set(fresh[0])
