import json
import time

import pytest

import flows
from tests.support.waiting import wait_for
from tests.tracing_helpers import flush_here, wait_spans
from tracing import collector as collector_module
from tracing import setup, sink
from tracing.collector import Collector, store
from tracing.models import EdgeStat, Span
from tracing.redis import get_redis
from tracing.selectors import flow_graph

pytestmark = pytest.mark.django_db(transaction=True)
CONSUMER = 4


def fake_span(trace: str, span: str, *, queue: str = "q.fake", consumer: str = "c_fake", error: bool = False, outcome: str = "ok", ms: float = 5.0) -> dict:
    now = time.time_ns()
    return {
        "t": trace,
        "s": span,
        "p": "",
        "n": "process fake",
        "k": CONSUMER,
        "sv": "test",
        "st": now - int(ms * 1e6),
        "en": now,
        "sc": 2 if error else 1,
        "sm": "",
        "a": {"messaging.destination.name": queue, "flowscope.consumer": consumer, "flowscope.outcome": outcome},
        "e": [],
        "l": [],
    }


def test_spans_sent_while_the_collector_is_down_wait_in_the_sink_and_are_all_stored_later(worker, collector):
    dropped_before = sink.sink_status()["dropped"]  # the counter is the session's: other tests fill the sink on purpose
    collector.stop()
    try:
        sent = [flows.send("test.command", {"key": f"offline-{i}"}) for i in range(50)]
        ids = [str(e.message_id) for e in sent]
        flush_here()
        wait_for(lambda: sink.sink_status()["pending"] >= 100, what="sends and attempts to wait in the sink")
        assert not Span.objects.filter(message_id__in=ids).exists()
    finally:
        collector.start()
    stored = wait_spans(100, message_id__in=ids, what="every span of the 50 messages")
    assert len(stored) == 100  # one send and one process span each, none twice
    assert sink.sink_status()["dropped"] == dropped_before


def test_past_its_bound_the_sink_refuses_batches_and_counts_every_dropped_span(settings):
    flush_here()  # so this process's own exporter has nothing to drop while the bound is low
    before = sink.sink_status()["dropped"]
    settings.TRACING_SINK_MAX_SPANS = 0  # whatever the collector has drained meanwhile, nothing fits
    with pytest.raises(sink.SinkFull, match="limit of 0 spans; 2 dropped"):
        sink.push([fake_span("a" * 32, f"{i:016x}") for i in range(2)])
    assert sink.sink_status()["dropped"] == before + 2
    settings.TRACING_SINK_MAX_SPANS = 10**9
    sink.push([fake_span("a" * 32, f"{i:016x}") for i in range(2)])
    assert sink.sink_status()["dropped"] == before + 2


def test_a_batch_redelivered_after_a_crash_is_stored_and_counted_once():
    spans = [fake_span("b" * 32, f"{i:016x}", queue="q.once", consumer="c_once") for i in range(5)]
    assert store(spans) == 5
    assert store(spans + [fake_span("b" * 32, "ffffffffffffffff", queue="q.once", consumer="c_once")]) == 1
    assert Span.objects.filter(trace_id="b" * 32).count() == 6
    assert sum(EdgeStat.objects.filter(source="queue:q.once").values_list("count", flat=True)) == 6


def test_a_collector_that_died_before_acknowledging_has_its_batches_taken_up_again():
    redis = get_redis()
    stream, group = "flows:spans:crashtest", "collector"
    redis.delete(stream)
    redis.xgroup_create(stream, group, id="0", mkstream=True)
    redis.xadd(stream, {"b": json.dumps([fake_span("c" * 32, "0000000000000001", queue="q.crash")])})
    redis.incrby(sink.PENDING, 1)  # as sink.push counts it
    redis.xreadgroup(group, "dead-one", {stream: ">"}, count=10)  # read, never acknowledged

    try:
        survivor = Collector(name="dead-one", stream=stream)  # the same name restarted: recovers its own pending
        assert survivor.step() == 1
        assert survivor.step() == 0
    finally:
        redis.delete(stream)
    assert Span.objects.filter(trace_id="c" * 32).count() == 1


def test_a_running_collector_takes_over_the_batches_another_collector_died_holding(monkeypatch):
    """Not only at start: a survivor that is already running looks for idle batches every few seconds."""
    redis = get_redis()
    stream, group = "flows:spans:takeover", "collector"
    redis.delete(stream)
    redis.xgroup_create(stream, group, id="0", mkstream=True)
    monkeypatch.setattr(collector_module, "RECLAIM_IDLE_MS", 50)
    monkeypatch.setattr(collector_module, "RECLAIM_EVERY_S", 0.1)
    try:
        survivor = Collector(name="survivor", stream=stream)
        assert survivor.step() == 0  # running: its own recovery done, nothing to read
        redis.xadd(stream, {"b": json.dumps([fake_span("d" * 32, f"{i:016x}", queue="q.takeover") for i in range(3)])})
        redis.incrby(sink.PENDING, 3)
        redis.xreadgroup(group, "killed-one", {stream: ">"}, count=10)  # read by another, never acknowledged
        took = wait_for(lambda: survivor.step(), timeout=10, what="the survivor to claim the dead collector's batch")
        assert took == 3
        assert redis.xpending(stream, group)["pending"] == 0
    finally:
        redis.delete(stream)
    assert Span.objects.filter(trace_id="d" * 32).count() == 3


def test_the_flow_graph_counts_a_known_workload_exactly():
    spans = [fake_span("d" * 32, f"{i:016x}", queue="q.graph", consumer="c_graph", ms=10) for i in range(7)]
    spans += [fake_span("d" * 32, f"{i:016x}", queue="q.graph", consumer="c_graph", error=True, ms=100) for i in range(7, 10)]
    spans += [fake_span("d" * 32, "00000000000000aa", queue="q.graph", consumer="c_graph", error=True, outcome="dead", ms=100)]
    producer = dict(fake_span("d" * 32, "00000000000000ab", queue="q.graph"), k=3, a={"messaging.destination.name": "q.graph", "flowscope.producer": "service:shop"})
    store(spans + [producer])

    graph = flow_graph()
    edges = {(e["source"], e["target"]): e for e in graph["edges"]}
    consume = edges[("queue:q.graph", "handler:c_graph")]
    assert (consume["count"], consume["errors"], consume["dead"]) == (11, 4, 1)
    assert consume["error_rate"] == pytest.approx(4 / 11) and consume["dead_rate"] == pytest.approx(1 / 11)
    assert 8 <= consume["p50_ms"] <= 13 and 80 <= consume["p95_ms"] <= 125
    assert edges[("service:shop", "queue:q.graph")]["count"] == 1
    assert {"id": "queue:q.graph", "kind": "queue", "label": "q.graph", "app": ""} in graph["nodes"]


def test_the_flow_graph_of_real_traffic_has_producer_queue_and_handler_edges(worker, collector):
    for i in range(3):
        flows.send("test.graph", {"key": f"g{i}", "fail_times": 1})
    flush_here()

    def edges() -> dict:
        return {(x["source"], x["target"]): x for x in flow_graph()["edges"]}

    producer = f"service:{setup.provider().resource.attributes['service.name']}"  # this test process
    wait_for(lambda: edges().get(("queue:t.graph", "handler:t_graph"), {}).get("count", 0) >= 6, what="six attempts in the graph")
    wait_for(lambda: edges().get((producer, "queue:t.graph"), {}).get("count", 0) >= 3, what="three sends in the graph")
    time.sleep(1)  # anything extra would have arrived by now
    graph = edges()
    consume = graph[("queue:t.graph", "handler:t_graph")]
    assert (consume["count"], consume["errors"], consume["dead"]) == (6, 3, 0)
    assert graph[(producer, "queue:t.graph")]["count"] == 3


def test_a_database_error_does_not_stop_the_collector_and_loses_no_batch(monkeypatch):
    import threading

    from django.db import OperationalError

    import tracing.collector as module

    redis = get_redis()
    stream = "flows:spans:dbtest"
    redis.delete(stream)
    redis.xadd(stream, {"b": json.dumps([fake_span("e" * 32, "0000000000000007", queue="q.db")])})
    redis.incrby(sink.PENDING, 1)
    real_store, calls = module.store, []

    def flaky_store(spans):
        calls.append(len(spans))
        if len(calls) == 1:
            raise OperationalError("canceling statement due to lock timeout")
        return real_store(spans)

    monkeypatch.setattr(module, "store", flaky_store)
    stop = threading.Event()
    collector = Collector(name="survivor", stream=stream, block_ms=50)
    thread = threading.Thread(target=collector.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: Span.objects.filter(trace_id="e" * 32).exists(), what="the batch to be stored on the second try")
    finally:
        stop.set()
        thread.join(15)
        redis.delete(stream)
    assert calls == [1, 1] and not thread.is_alive()
