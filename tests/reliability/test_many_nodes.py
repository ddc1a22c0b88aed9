"""Check 12, many nodes: three worker nodes, two collectors and two web nodes on one PostgreSQL and
one Redis, under load, agree on one truth.

- Every span is stored once and counted once: each message's send and process spans are there,
  and the flow graph's queue -> handler edge counts exactly the messages sent, although one
  collector is SIGKILLed mid-stream (the other claims what it held once it has been idle for
  tracing.collector.RECLAIM_IDLE_MS, and skips what was already stored).
- Both web nodes' live frames show the same count on that edge.
- A bulk requeue started through one web node is seen progressing through the other, cancelled
  there, and seen cancelled through the first: the job lives in the database, not in a node.

PostgreSQL only: SQLite is one file on one machine, which is what the other checks use.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from django.db import connection
from django.db.models import Sum

import flows
from flows.models import DeadLetter
from tests.people import token_for
from tests.reliability.catalog import runs
from tests.reliability.conftest import WORKER_ENV, sized
from tests.reliability.held import settled
from tests.support.waiting import wait_for
from tests.support.workers import ManagedProcess, Worker
from tooling.bench.websocket import LiveSocket, forget_bench_user, session_cookie
from tooling.devredis import free_port
from tracing.collector import RECLAIM_IDLE_MS
from tracing.models import EdgeHour, EdgeStat, Span
from tracing.redis import get_redis, key
from tracing.sink import GROUP, STREAM, sink_status

pytestmark = [pytest.mark.django_db(transaction=True)]
EDGE = ("queue:r.nodes", "handler:r_node")


def postgres_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("many nodes share one PostgreSQL; run with DATABASE_URL=postgres://... (CI does)")


class Web:
    """A daphne web node on a port of its own."""

    def __init__(self, name: str) -> None:
        self.port = free_port()
        self.process = ManagedProcess(
            name, ["-b", "127.0.0.1", "-p", str(self.port), "console.asgi:application"], ready_marker="Listening on TCP address", command=[sys.executable, "-m", "daphne"], extra_env=WORKER_ENV
        ).start()
        self.url = f"http://127.0.0.1:{self.port}"


@contextmanager
def held_span_table() -> Iterator[None]:
    """Writes to the span table wait while this is open (reads go on): a connection of its own."""
    with psycopg.connect(_dsn(), autocommit=False) as holder:
        holder.execute(f"LOCK TABLE {Span._meta.db_table} IN SHARE ROW EXCLUSIVE MODE")
        yield
        holder.rollback()


def _dsn() -> str:
    s = connection.settings_dict
    return f"host={s['HOST'] or '127.0.0.1'} port={s['PORT'] or 5432} dbname={s['NAME']} user={s['USER'] or 'postgres'}" + (f" password={s['PASSWORD']}" if s["PASSWORD"] else "")


@pytest.fixture
def nodes(django_db_setup: object) -> Iterator[dict[str, list]]:
    postgres_only()
    started: dict[str, list] = {"workers": [], "collectors": [], "webs": []}
    try:
        for i in range(3):
            started["workers"].append(Worker(f"node-{i}", ["r.nodes", "r.fixable", "flows.control"], concurrency=1, extra_env=WORKER_ENV).start())
        for name in ("collector-a", "collector-b"):
            started["collectors"].append(ManagedProcess(name, ["collector"], ready_marker=" ready", extra_env=WORKER_ENV).start())
        for name in ("web-a", "web-b"):
            started["webs"].append(Web(name))
        yield started
    finally:
        for process in [*started["workers"], *started["collectors"], *(w.process for w in started["webs"])]:
            process.stop()
        forget_bench_user()


def _held_by(name: str = "") -> int:
    """Batches read and not acknowledged yet: by the collector of that consumer name, or by any."""
    consumers = get_redis().xinfo_consumers(STREAM, GROUP)
    names = [(c["name"].decode() if isinstance(c["name"], bytes) else str(c["name"]), int(c["pending"])) for c in consumers]
    return sum(pending for consumer, pending in names if not name or consumer == name)


class Api:
    """JSON calls to one web node with an operator's token."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def job(self, job_id: int) -> dict:
        status, body = self.call("GET", f"/api/v1/requeue-jobs/{job_id}")
        assert status == 200, body
        return body


def test_three_workers_two_collectors_and_two_web_nodes_agree(nodes, figure):
    n = sized(2000, 300)
    collectors, webs = nodes["collectors"], nodes["webs"]
    cookie = session_cookie()
    sockets = [LiveSocket(web.port, edge=EDGE) for web in webs]
    for live in sockets:
        live.connect(cookie)
    started = time.monotonic()

    # Load, and one collector killed while it holds batches it has read and not stored: the span
    # table is locked against writes for a moment, so both collectors are caught mid-batch.
    keys = [f"n{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    for k in keys[: n // 2]:
        flows.send("rel.node", {"key": k})
    wait_for(lambda: Span.objects.filter(name="process rel.node").count() > n // 8, timeout=60, what="spans being stored")
    victim = f"{socket.gethostname()}-{collectors[0].process.pid}"  # tracing.collector.Collector's default name
    with held_span_table():
        for k in keys[n // 2 :]:
            flows.send("rel.node", {"key": k})
        killed_holding = wait_for(lambda: _held_by(victim), timeout=60, what="collector A to hold batches it cannot store yet")
        collectors[0].kill()
    wait_for(lambda: settled("r.nodes"), timeout=120, what="every message handled")
    assert sorted(runs("r_node")) == sorted(keys), "each message ran exactly once across the three nodes"

    # Every span stored once: the survivor claims what the killed one held once it is idle.
    wait_for(lambda: sink_status()["pending"] <= 0 and _held_by("") == 0, timeout=RECLAIM_IDLE_MS / 1000 + 60, interval=0.5, what="the sink drained and nothing held by any collector")
    process_spans = Span.objects.filter(name="process rel.node", attributes__contains={"flowscope.outcome": "ok"})
    stored = process_spans.count()
    by_message = set(process_spans.values_list("message_id", flat=True))
    sends = Span.objects.filter(name="send rel.node").count()
    counted = EdgeStat.objects.filter(source=EDGE[0], target=EDGE[1]).aggregate(total=Sum("count"))["total"] or 0
    counted_by_hour = EdgeHour.objects.filter(source=EDGE[0], target=EDGE[1]).aggregate(total=Sum("count"))["total"] or 0
    spread = sorted(Span.objects.filter(name="process rel.node").values_list("attributes__flowscope.worker", flat=True).distinct())

    # Both web nodes' live frames come to the same count on the edge.
    wait_for(lambda: all(s.count() == n for s in sockets), timeout=30, what=f"both web nodes' frames to show {n} on {EDGE}: {[s.count() for s in sockets]}")
    agree = [s.count() for s in sockets]
    for live in sockets:
        live.close()

    figure(
        f"{n} messages on 3 worker nodes ({len(spread)} seen in spans), 2 collectors (one SIGKILLed holding {killed_holding} unacknowledged batches), 2 web nodes: "
        f"{stored} process spans stored for {len(by_message)} messages, {sends} send spans, edge counted {counted}; live frames {agree}; {time.monotonic() - started:.0f}s"
    )
    assert stored == n and len(by_message) == n, f"{stored} process spans for {len(by_message)} messages of {n}: none lost, none twice"
    assert sends == n, f"{sends} send spans for {n} sends"
    assert counted == n, f"the graph counted {counted} handlings of {n}: every span once"
    assert counted_by_hour == n, f"the hourly sums counted {counted_by_hour} handlings of {n}"
    assert len(spread) == 3, f"the three nodes shared the work: {spread}"
    assert agree == [n, n]


def test_a_bulk_requeue_started_on_one_web_node_is_followed_and_cancelled_on_the_other(nodes, figure):
    webs = nodes["webs"]
    n = sized(60, 40)
    for i in range(n):
        flows.send("rel.fixable", {"key": f"m{i}"})
    wait_for(lambda: DeadLetter.objects.filter(consumer="r_fixable", state="dead").count() == n, timeout=60, what=f"{n} dead letters")
    get_redis().set(key("rel", "fixed"), 1)
    ids = list(DeadLetter.objects.filter(consumer="r_fixable", state="dead").values_list("pk", flat=True))
    token = token_for("operator")
    a, b = Api(webs[0].url, token), Api(webs[1].url, token)
    status, created = a.call("POST", "/api/v1/requeue-jobs", {"ids": ids, "rate_per_s": 2})
    assert status == 200, created
    job = created["id"]
    seen = wait_for(lambda: (j := b.job(job))["done"] > 0 and j, timeout=60, what="web B to see the job progressing")
    status, cancelled = b.call("POST", f"/api/v1/requeue-jobs/{job}/cancel")
    assert status == 200, cancelled
    final = wait_for(lambda: (j := a.job(job))["state"] == "cancelled" and j, timeout=30, what="web A to see the job cancelled")

    wait_for(lambda: settled("r.fixable"), timeout=60, what="the requeued copies handled")
    resolved = DeadLetter.objects.filter(pk__in=ids, state="resolved").count()
    ran = runs("r_fixable")
    after = a.job(job)["done"]
    figure(
        f"requeue of {n} at 2/s started on web A, seen on web B at {seen['done']} done, cancelled on B; A saw {final['state']} at {final['done']} done, {after} at the end; {resolved} resolved, {len(ran)} runs"
    )
    assert final["done"] < n, "the cancel stopped the job before its end"
    # The one requeue being sent when the cancel landed may still complete; nothing after it.
    assert after - final["done"] <= 1, f"a cancelled job sends nothing more: {final['done']} done when cancelled, {after} now"
    assert resolved == after == len(ran), "what was requeued ran once and resolved its dead letter; nothing else ran"
