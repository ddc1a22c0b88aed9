"""The flow graph of attached apps: canvases drawn task to task, and each app's nodes its own.

Two apps written only with Celery (tests/attached_canvas, started as "canvas" and "ledger"), the
same task names and the same queue name, each on a broker of its own, each worker started through
`flowscope-agent` in a subprocess and reporting to the real console, whose collector keeps the
graph's aggregates. What the graph API answers is what the assertions read.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import transaction

from console.models import ApiToken
from flows.operate.selectors import OWN_FLOWS
from tests.people import client_for
from tests.support import REPO
from tests.support.brokers import on_rabbitmq, purge
from tests.support.waiting import wait_for
from tooling.processes import LogLine, Supervisor
from tracing import aggregates
from tracing.models import EdgeStat
from tracing.selectors import flow_graph

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

BIN = Path(sys.executable).parent
AGENT = str(BIN / "flowscope-agent")
QUEUE = "parcels"
# The apps' own environment: none of this project's settings (see tests/test_agent.py).
FOREIGN = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "FLOWS_MODULES", "FLOWSCOPE_EXTRA_APPS", "OTEL_", "CELERY_")


def redis_db(n: int) -> str:
    return settings.REDIS_URL.rsplit("/", 1)[0] + f"/{n}"


def brokers() -> dict[str, str]:
    """canvas follows the run's broker (a Redis database, or the run's RabbitMQ vhost); ledger is
    another team's app on a Redis of its own, where its queue of the same name is another queue."""
    return {"canvas": settings.CELERY_BROKER_URL if on_rabbitmq() else redis_db(10), "ledger": redis_db(11)}


RESULTS = 12  # the Redis database both apps keep results in (a chord needs a result backend)


def app_env(app: str, reporting: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    return {**env, **reporting, "CANVAS_APP": app, "CANVAS_BROKER_URL": brokers()[app], "CANVAS_RESULT_URL": redis_db(RESULTS), "PYTHONUNBUFFERED": "1", "FLOWSCOPE_EXPORT_DELAY_MS": "100"}


class CanvasWorker:
    """`flowscope-agent celery -A tests.attached_canvas worker -Q parcels` as one app."""

    def __init__(self, app: str, reporting: dict[str, str]) -> None:
        node = f"{app}-{uuid.uuid4().hex[:8]}@%h"
        self.supervisor = Supervisor(log_dir=Path(tempfile.mkdtemp(prefix=f"flowscope-{app}-")), cwd=REPO, env=app_env(app, reporting))
        self.command = [AGENT, str(BIN / "celery"), "-A", "tests.attached_canvas", "worker", "-l", "info", "-Q", QUEUE, "-c", "2", "-n", node, "--without-mingle", "--without-gossip"]

    def __enter__(self) -> CanvasWorker:
        self.child = self.supervisor.start("worker", self.command)  # both apps' workers start at once: see ready()
        return self

    def ready(self) -> None:
        self.supervisor.wait_ready({"worker": LogLine(re.escape(" ready."))})

    def __exit__(self, *_: object) -> None:
        self.supervisor.stop()


def produce(app: str, reporting: dict[str, str], script: str) -> None:
    """Run `script` through the agent as the app's producer process; it waits on its own results."""
    command = [AGENT, sys.executable, "-c", textwrap.dedent(script)]
    result = subprocess.run(command, cwd=REPO, env=app_env(app, reporting), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def reporting(live_server, collector, settings) -> Iterator[dict[str, str]]:
    settings.TRACING_OTLP_OPEN = False
    settings.TRACING_OTLP_TOKEN = ""
    _, secret = ApiToken.issue(name="canvas apps", role="agent", created_by="tests")
    yield {"FLOWSCOPE_URL": live_server.url, "FLOWSCOPE_TOKEN": secret}


@pytest.fixture
def empty_brokers() -> Iterator[None]:
    def empty() -> None:
        for n in (10, 11, RESULTS):
            redis.Redis.from_url(redis_db(n)).flushdb()  # databases of the suite's own Redis that only this module uses
        if on_rabbitmq():
            purge(QUEUE)

    empty()
    yield
    empty()


CANVASES = """
    from celery import chain, chord, group
    from tests.attached_canvas import label, pack, reserve, ship, total, weigh

    good = chain(reserve.s("o-1"), pack.s(), ship.s())()
    assert good.get(timeout=90) == "o-1"
    bad = chain(reserve.s("bad-1"), pack.s(), ship.s())()
    bad.parent.get(timeout=90, propagate=False)  # pack's result: it failed, ship was never sent
    assert bad.parent.failed(), bad.parent.state
    assert group(weigh.s(i) for i in range(3))().get(timeout=90) == [0, 1, 2]
    assert chord([weigh.s(i) for i in (1, 2, 3)], total.s())().get(timeout=90) == 6
    assert label.delay("o-2").get(timeout=90) == "o-2"
"""

LEDGER = """
    from celery import chain
    from tests.attached_canvas import reserve, ship

    assert chain(reserve.s("l-1"), ship.s())().get(timeout=90) == "l-1"
"""


def edges_of(graph: dict[str, Any]) -> dict[tuple[str, str, str | None], dict[str, Any]]:
    return {(e["source"], e["target"], e["queue"]): e for e in graph["edges"]}


def graph_api(viewer: Any, **query: str) -> dict[str, Any]:
    answer = viewer.get("/api/v1/graph", {"minutes": "30", **query})
    assert answer.status_code == 200, answer.content
    return answer.json()


def test_a_chain_a_group_and_a_chord_are_drawn_task_to_task_and_two_apps_queues_of_one_name_stay_apart(reporting, empty_brokers):
    viewer = client_for("viewer")
    with CanvasWorker("canvas", reporting) as canvas_worker, CanvasWorker("ledger", reporting) as ledger_worker:
        canvas_worker.ready()
        ledger_worker.ready()
        with ThreadPoolExecutor(2) as producers:  # the two apps' producers at once, each waiting on its own results
            for produced in [producers.submit(produce, "canvas", reporting, CANVASES), producers.submit(produce, "ledger", reporting, LEDGER)]:
                produced.result()
        # 14 executions of canvas (chains 3 + 2, group 3, chord 3 + its callback, a retried task 2), 2 of ledger.
        executions = lambda app: sum(e["count"] for e in graph_api(viewer, app=app)["edges"] if e["target"].startswith(f"{app}|handler:"))  # noqa: E731
        wait_for(lambda: executions("canvas") >= 14 and executions("ledger") >= 2, timeout=120, interval=0.5, what="every execution of both apps in the graph")

    q, svc = "canvas|queue:parcels", "canvas|service:canvas"
    task = lambda name: f"canvas|handler:canvas.{name}"  # noqa: E731
    canvas = edges_of(graph_api(viewer, app="canvas"))
    # Executions, sender -> task through the queue: (count, errors).
    expected = {
        (svc, task("reserve"), q): (2, 0),  # both chains start at the producer
        (task("reserve"), task("pack"), q): (2, 1),  # a chain step is sent by the step before; the bad order fails here
        (task("pack"), task("ship"), q): (1, 0),  # ...and stops: ship is sent once
        (svc, task("weigh"), q): (6, 0),  # the group's three and the chord header's three: a fan-out from the producer
        (task("weigh"), task("total"), q): (1, 0),  # the chord's callback, sent by the last header task's worker (fan-in)
        (svc, task("label"), q): (2, 1),  # a retry counts on the edge from its first sender: two attempts, one failed
        # Publishes, sender -> queue.
        (svc, q, None): (9, 0),
        (task("label"), q, None): (1, 0),  # the retry's republish, by the attempt that failed
        (task("reserve"), q, None): (2, 0),
        (task("pack"), q, None): (1, 0),
        (task("weigh"), q, None): (1, 0),
    }
    assert {k: (e["count"], e["errors"]) for k, e in canvas.items()} == expected
    for key, edge in canvas.items():
        assert edge["app"] == "canvas" and edge["rate_per_s"] > 0 and edge["p95_ms"] is not None
        if key[2] is not None:  # an execution: its queue wait is measured from the publish
            assert edge["queue_wait_p95_ms"] is not None and edge["queue_wait_p95_ms"] >= 0, edge
    assert canvas[(task("reserve"), task("pack"), q)]["error_rate"] == pytest.approx(0.5)

    ledger = edges_of(graph_api(viewer, app="ledger"))
    lq, lsvc = "ledger|queue:parcels", "ledger|service:ledger"
    assert {k: (e["count"], e["errors"]) for k, e in ledger.items()} == {
        (lsvc, "ledger|handler:canvas.reserve", lq): (1, 0),
        ("ledger|handler:canvas.reserve", "ledger|handler:canvas.ship", lq): (1, 0),
        (lsvc, lq, None): (1, 0),
        ("ledger|handler:canvas.reserve", lq, None): (1, 0),
    }

    everything = graph_api(viewer)
    nodes = {n["id"]: n for n in everything["nodes"]}
    assert nodes[q] == {"id": q, "kind": "queue", "label": "parcels", "app": "canvas"}
    assert nodes[lq] == {"id": lq, "kind": "queue", "label": "parcels", "app": "ledger"}
    assert "queue:parcels" not in nodes  # no node of Flowscope's own flows took either app's traffic
    assert {k for k in edges_of(everything) if k[0].startswith(("canvas|", "ledger|"))} == set(canvas) | set(ledger)
    assert all(e["app"] == "" for e in graph_api(viewer, app=OWN_FLOWS)["edges"])


def test_the_graph_api_refuses_an_app_name_too_long_to_be_one():
    answer = client_for("viewer").get("/api/v1/graph", {"app": "x" * 101})
    assert answer.status_code == 422, answer.content


def span(kind: int, *, app: str = "", queue: str = "q", producer: str = "", consumer: str = "h", wait: float | None = None, error: bool = False) -> dict[str, Any]:
    """A span as the sink hands it to the collector."""
    attributes: dict[str, Any] = {"messaging.destination.name": queue, "flowscope.consumer": consumer}
    if app:
        attributes["flowscope.app"] = app
    if producer:
        attributes["flowscope.producer"] = producer
    if wait is not None:
        attributes["flowscope.queue_wait_ms"] = wait
    end = int(datetime.now(UTC).timestamp() * 1e9)
    return {"k": kind, "a": attributes, "st": end - 2_000_000, "en": end, "sc": 2 if error else 1, "sv": app or "flowscope"}


def applied(spans: list[dict[str, Any]]) -> None:
    with transaction.atomic():  # as the collector does: the aggregates lock their rows (PostgreSQL refuses that outside one)
        aggregates.apply(spans)


def test_aggregates_keep_apps_apart_add_queue_waits_across_batches_and_leave_own_flows_queue_to_handler():
    with_wait = [span(4, app="a", producer="handler:x", wait=w) for w in (5.0, 5.0, 400.0)]
    applied(with_wait[:2] + [span(4, app="b", producer="handler:x", wait=1.0), span(4, producer="handler:x")])
    applied(with_wait[2:] + [span(4, app="a", producer="handler:x", error=True)])  # the same rows, updated
    rows = {(r.app, r.source, r.target, r.queue): r for r in EdgeStat.objects.all()}
    assert set(rows) == {("a", "handler:x", "handler:h", "q"), ("b", "handler:x", "handler:h", "q"), ("", "queue:q", "handler:h", "")}
    a = rows[("a", "handler:x", "handler:h", "q")]
    assert (a.count, a.errors, sum(a.waits)) == (4, 1, 3)  # the failed one said no queue wait
    assert rows[("", "queue:q", "handler:h", "")].waits == []  # Flowscope's own: no producer edge, no wait
    edge = edges_of(flow_graph(app="a"))[("a|handler:x", "a|handler:h", "a|queue:q")]
    assert 4 <= edge["queue_wait_p95_ms"] <= 500 and edge["error_rate"] == pytest.approx(0.25)
    assert flow_graph(app="")["edges"][0]["queue_wait_p95_ms"] is None


def test_the_graph_page_offers_the_apps_with_edges_and_keeps_the_chosen_one_for_its_live_frames():
    applied([span(4, app="canvas", producer="service:canvas"), span(4)])
    page = client_for("viewer").get("/graph/", {"app": "canvas"})
    assert page.status_code == 200
    html = page.content.decode()
    assert "<option selected>canvas</option>" in html  # known from its edges alone: no worker or dead letter of it
    assert f'<option value="{OWN_FLOWS}" >' in html
    assert '{"app": "canvas", "own": "(flowscope)"}' in html  # the script narrows every live frame to it
    frame = page.context["frame"]["graph"]  # the frame itself carries every app, each node saying whose
    assert {(n["id"], n["app"]) for n in frame["nodes"]} >= {("canvas|handler:h", "canvas"), ("handler:h", "")}


def test_an_app_or_sender_that_is_not_text_or_too_long_is_counted_under_its_text_cut_to_fit():
    odd = span(4, app="7", producer="x")
    odd["a"].update({"flowscope.app": 7, "flowscope.producer": 8})  # any JSON value can come over OTLP
    applied([odd])
    applied([odd])  # the second batch finds the row the first made
    long = span(4, app="a" * 150, producer="x", queue="q" * 400)
    applied([long])  # cut to the columns' lengths, not refused by the database
    rows = {r.app: r for r in EdgeStat.objects.all()}
    assert (rows["7"].source, rows["7"].target, rows["7"].queue, rows["7"].count) == ("8", "handler:h", "q", 2)
    assert (len(rows["a" * 100].queue), rows["a" * 100].count) == (300, 1)
