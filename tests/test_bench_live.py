"""The benchmark's live-latency parts: which frame shows which hop, and its websocket client
against the real daphne, signed in with a session cookie as a browser is."""

import sys
from collections.abc import Iterator

import pytest

from tests.support.workers import ManagedProcess
from tooling.bench import websocket
from tooling.bench.live import latencies
from tooling.devredis import free_port

EDGE = ("queue:bench.live", "handler:bench_live")


def test_each_hop_is_shown_by_the_first_frame_whose_count_reaches_it():
    ends = [10.0, 10.1, 10.2, 10.3]
    frames = [(10.05, 0), (10.5, 2), (11.0, 2), (11.5, 4)]
    assert latencies(ends, frames) == pytest.approx([500.0, 400.0, 1300.0, 1200.0])


def test_warm_up_hops_are_left_out_and_hops_no_frame_showed_are_not_counted():
    ends = [10.0, 10.1, 10.2]
    frames = [(10.5, 2)]
    assert latencies(ends, frames, skip=1) == pytest.approx([400.0])


def test_an_edge_count_is_read_from_the_frames_flow_graph():
    frame = {"graph": {"edges": [{"source": "queue:other", "target": "handler:x", "count": 9}, {"source": EDGE[0], "target": EDGE[1], "count": 42}]}}
    assert websocket.edge_count(frame, *EDGE) == 42
    assert websocket.edge_count({"graph": {"edges": []}}, *EDGE) == 0


@pytest.fixture(scope="module")
def web(django_db_setup) -> Iterator[int]:
    port = free_port()
    process = ManagedProcess("bench-web", ["-b", "127.0.0.1", "-p", str(port), "console.asgi:application"], ready_marker="Listening on TCP address", command=[sys.executable, "-m", "daphne"]).start()
    yield port
    process.stop()


@pytest.mark.django_db(transaction=True)
def test_the_client_signs_in_with_a_session_cookie_and_reads_frames(web):
    socket = websocket.LiveSocket(web, edge=EDGE)
    try:
        socket.connect(websocket.session_cookie())
        assert socket.frames and socket.count() == 0, "a snapshot on connect; nothing on the bench's edge yet"
    finally:
        socket.close()
        websocket.forget_bench_user()


@pytest.mark.django_db(transaction=True)
def test_the_client_says_so_when_the_server_refuses_it(web):
    socket = websocket.LiveSocket(web, edge=EDGE)
    with pytest.raises(RuntimeError, match="live websocket"):
        socket.connect("sessionid=not-a-session", timeout=10)
    socket.close()
