import asyncio
import math
import threading
import time
import uuid

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from console import broadcast, live
from console.asgi import application
from console.consumers import LiveConsumer
from tests.people import person
from tests.support.brokers import on_rabbitmq
from tracing import sink

pytestmark = pytest.mark.django_db(transaction=True)


def run(coroutine_function) -> None:
    """Run an async test body on a loop of its own, in a thread of its own: this thread may
    already hold one (Playwright's, in the same session)."""
    failures = []

    def target() -> None:
        try:
            asyncio.run(coroutine_function())
        except BaseException as exc:  # handed back to the test below
            failures.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    if failures:
        raise failures[0]
    assert not thread.is_alive(), "the async test body did not finish within 60s"


def connect_as(user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(LiveConsumer.as_asgi(), "/ws/live/")
    communicator.scope["user"] = user
    return communicator


def test_an_anonymous_socket_is_closed_at_once():
    from django.contrib.auth.models import AnonymousUser

    async def go():
        communicator = connect_as(AnonymousUser())
        connected, code = await communicator.connect()
        assert (connected, code) == (False, 4401)

    run(go)


async def answer(communicator: WebsocketCommunicator) -> dict:
    """The next message that is not a broadcast frame: the session's collector broadcasts to the
    same group, four frames a second while spans arrive, between a request and its answer."""
    while True:
        message = await communicator.receive_json_from(timeout=10)
        if message["type"] != "snapshot":
            return message


def test_a_signed_in_browser_gets_a_whole_snapshot_on_connect_and_on_refresh():
    user = person("viewer")

    async def go():
        communicator = connect_as(user)
        connected, _ = await communicator.connect()
        assert connected
        first = await communicator.receive_json_from(timeout=10)
        assert first["type"] == "snapshot"
        assert {"series", "now", "queues", "dead_letters", "sagas", "workers", "graph", "jobs", "sink"} <= set(first["frame"])
        # Consumers as RabbitMQ counts them; None on Redis, which does not say.
        consumers = {q["name"]: q["consumers"] for q in first["frame"]["queues"]}
        assert all(isinstance(n, int) for n in consumers.values()) if on_rabbitmq() else set(consumers.values()) == {None}
        assert "t.commands" in consumers
        await communicator.send_json_to({"type": "refresh"})
        assert (await communicator.receive_json_from(timeout=10))["type"] == "snapshot"
        await communicator.send_json_to({"type": "delete everything"})
        assert (await answer(communicator)) == {"type": "error", "error": 'unknown request; the only one is {"type": "refresh"}'}
        await communicator.send_to(text_data="not json")
        assert (await answer(communicator))["type"] == "error"
        await communicator.disconnect()

    run(go)


def test_a_socket_from_a_foreign_origin_is_refused():
    async def go():
        communicator = WebsocketCommunicator(application, "/ws/live/", headers=[(b"origin", b"http://evil.example"), (b"host", b"localhost")])
        connected, _ = await communicator.connect()
        assert not connected

    run(go)


def test_the_broadcaster_paces_its_frames_whatever_the_load():
    stop = threading.Event()

    async def go():
        layer = get_channel_layer()
        group, channel = f"pacing-{uuid.uuid4().hex}", await layer.new_channel()
        await layer.group_add(group, channel)
        thread = threading.Thread(target=broadcast.run, args=(stop,), kwargs={"interval": 0.5, "busy_interval": 0.5, "group": group}, daemon=True)
        thread.start()
        arrivals = []
        try:
            for _ in range(3):
                message = await asyncio.wait_for(layer.receive(channel), timeout=10)
                assert message["type"] == "live.frame" and "queues" in message["frame"]
                arrivals.append(time.monotonic())
        finally:
            stop.set()
            thread.join(10)
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        assert all(gap > 0.3 for gap in gaps), f"frames are paced, not bursted: {gaps}"

    run(go)


def test_a_frame_is_due_each_interval_when_quiet_and_each_busy_interval_while_spans_arrive():
    quiet = {"last_activity": -math.inf, "interval": 1.0, "busy_interval": 0.25}
    assert not broadcast.due(now=10.5, last_sent=10.0, **quiet)
    assert broadcast.due(now=11.0, last_sent=10.0, **quiet)
    busy = {"interval": 1.0, "busy_interval": 0.25}
    assert not broadcast.due(now=10.1, last_sent=10.0, last_activity=10.05, **busy), "never faster than the busy interval"
    assert broadcast.due(now=10.3, last_sent=10.0, last_activity=10.05, **busy)
    assert broadcast.due(now=10.3, last_sent=10.0, last_activity=9.5, **busy), "spans stored just after the last arrival are shown soon too"
    assert not broadcast.due(now=10.6, last_sent=10.4, last_activity=9.5, **busy), "a second after the last arrival the pace is quiet again"


def a_span(**overrides: object) -> dict:
    now = time.time_ns()
    return {
        "t": uuid.uuid4().hex,
        "s": uuid.uuid4().hex[:16],
        "p": "",
        "n": "broadcast test",
        "k": 0,
        "sv": "test-live",
        "st": now - 1000,
        "en": now,
        "sc": 0,
        "sm": "",
        "a": {},
        "e": [],
        "l": [],
        **overrides,
    }


def test_the_span_mark_moves_when_spans_arrive_in_the_sink():
    before = broadcast.span_mark()
    sink.push([a_span()])
    assert broadcast.span_mark() not in (before, None)


def test_the_broadcaster_sends_at_the_busy_pace_while_spans_arrive():
    stop = threading.Event()

    async def go():
        layer = get_channel_layer()
        group, channel = f"busy-{uuid.uuid4().hex}", await layer.new_channel()
        await layer.group_add(group, channel)
        # A quiet pace far longer than this test: a second frame can only come from the busy pace.
        thread = threading.Thread(target=broadcast.run, args=(stop,), kwargs={"interval": 120, "busy_interval": 0.2, "group": group}, daemon=True)
        thread.start()
        arrivals = []
        try:
            assert (await asyncio.wait_for(layer.receive(channel), timeout=10))["type"] == "live.frame"
            arrivals.append(time.monotonic())
            for _ in range(2):
                sink.push([a_span()])
                await asyncio.wait_for(layer.receive(channel), timeout=30)
                arrivals.append(time.monotonic())
        finally:
            stop.set()
            thread.join(10)
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        assert all(gap > 0.1 for gap in gaps), f"still coalesced at the busy pace, not one frame per span: {gaps}"

    run(go)


def test_the_broadcaster_builds_no_frame_while_nobody_listens(monkeypatch):
    built = []
    monkeypatch.setattr(broadcast.live, "snapshot", lambda: built.append(1) or {"queues": []})
    marks, span_mark = [], broadcast.span_mark
    monkeypatch.setattr(broadcast, "span_mark", lambda: marks.append(1) or span_mark())

    async def go():
        stop = threading.Event()
        layer = get_channel_layer()
        group, channel = f"lonely-{uuid.uuid4().hex}", await layer.new_channel()
        thread = threading.Thread(target=broadcast.run, args=(stop,), kwargs={"interval": 0.1, "busy_interval": 0.1, "group": group}, daemon=True)
        thread.start()
        try:
            await asyncio.sleep(0.5)  # five intervals with nobody in the group
            assert built == [], "no snapshot built for an empty group"
            assert marks == [], "nor the sink's mark polled"
            await layer.group_add(group, channel)
            assert (await asyncio.wait_for(layer.receive(channel), timeout=10))["type"] == "live.frame"
            assert marks, "watched, the sink's mark is polled again"
        finally:
            stop.set()
            thread.join(10)

    run(go)


def test_a_frame_leaves_no_query_log_behind_even_with_debug_on(settings):
    from django.db import connection

    settings.DEBUG = True
    sent = []
    connection.queries_log.clear()
    broadcast.send_frame(lambda group, message: sent.append((group, message)), "a-group")
    assert sent and sent[0][0] == "a-group" and "queues" in sent[0][1]["frame"]
    assert len(connection.queries) == 0, "the snapshot's queries are not kept"


def test_a_signed_in_browser_receives_every_broadcast_frame():
    user = person("viewer")

    async def go():
        communicator = connect_as(user)
        await communicator.connect()
        await communicator.receive_json_from(timeout=10)  # the snapshot on connect
        marker = uuid.uuid4().hex
        await get_channel_layer().group_send(live.GROUP, {"type": "live.frame", "frame": {"marker": marker}})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the session's collector may broadcast meanwhile
            frame = await communicator.receive_json_from(timeout=10)
            if frame["frame"].get("marker") == marker:
                break
        else:
            raise AssertionError("the broadcast frame never reached the browser")
        await communicator.disconnect()

    run(go)
