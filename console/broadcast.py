"""The live broadcaster: one snapshot a second to every connected browser, four a second while
spans arrive, none while nobody watches, however high the load, so the channel layer never sees a burst it would drop
(channels_redis drops past its capacity). Runs in the collector process, beside the aggregates
it reads.

Why faster while spans arrive: a hop reaches the browser when the first frame after the
collector stored its span leaves; at one frame a second that wait alone is up to a second
(the bench's p3). Quiet, nothing but queues and workers changes, and a second is fresh enough.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import close_old_connections, reset_queries

from console import live
from tracing.redis import get_redis
from tracing.sink import STREAM

log = logging.getLogger(__name__)
INTERVAL = 1.0  # at least this often
BUSY_INTERVAL = 0.25  # this often while spans arrive
POLL = 0.05  # how often to look for arriving spans: one cheap Redis call


def span_mark() -> object:
    """The span sink's newest entry id: it moves whenever a batch of spans arrives."""
    try:
        return get_redis().xinfo_stream(STREAM)["last-generated-id"]
    except redis.ResponseError:  # no stream yet: nothing has arrived
        return None


def due(*, now: float, last_sent: float, last_activity: float, interval: float, busy_interval: float) -> bool:
    """A frame is due `interval` after the last, or `busy_interval` after it while spans arrived
    within the last `interval` (so the hops stored just after the last arrival are shown soon too)."""
    since = now - last_sent
    return since >= interval or (since >= busy_interval and now - last_activity < interval)


def listening(layer: Any, group: str) -> bool:
    """Whether any socket is in the group. A snapshot costs the collector's process a dozen
    queries; with nobody watching, building four a second only takes CPU from the workers (the
    bench's p1 lost a tenth of its rate to it on two cores). A browser that joins gets its own
    snapshot on connect, so nothing is missed while frames are skipped."""
    try:
        return bool(get_redis().zcard(layer._group_key(group)))  # channels_redis keeps members in a sorted set
    except redis.RedisError:
        return True  # let the frame try, and say why it fails


def send_frame(send: Callable[[str, dict[str, Any]], None], group: str) -> None:
    try:
        close_old_connections()
        send(group, {"type": "live.frame", "frame": live.snapshot()})
    except Exception:  # Redis or the database away for a moment: the next frame tries again
        log.warning("live snapshot not sent", exc_info=True)
    finally:
        # A frame is this thread's request: with DEBUG on, Django keeps every query of a
        # connection until a request starts (up to 9,000), which a thread that never serves
        # one holds for good (the bench's p7 saw the collector grow by it).
        reset_queries()


def run(stop: threading.Event, interval: float = INTERVAL, group: str = live.GROUP, busy_interval: float = BUSY_INTERVAL) -> None:
    layer = get_channel_layer()
    send = async_to_sync(layer.group_send)
    mark: object = object()
    last_sent = last_activity = last_asked = -math.inf
    anyone = False
    while not stop.is_set():
        now = time.monotonic()
        # Who listens, asked once an interval: with nobody watching, the sink's mark is not polled
        # either (twenty Redis calls a second were a fifth of the collector's CPU in the bench's
        # p1). A browser that joins gets its own snapshot on connect, then frames from here
        # within an interval.
        if now - last_asked >= interval:
            anyone, last_asked = listening(layer, group), now
        if anyone:
            try:
                current = span_mark()
            except redis.RedisError:  # Redis away: the frame below fails too, and says so
                current = mark
            if current != mark:
                mark, last_activity = current, now
            if due(now=now, last_sent=last_sent, last_activity=last_activity, interval=interval, busy_interval=busy_interval):
                last_sent = now
                send_frame(send, group)
        pause = min(POLL, busy_interval) if anyone else interval
        stop.wait(max(0.01, pause - (time.monotonic() - now)))


def start(stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=run, args=(stop,), name="live-broadcast", daemon=True)
    thread.start()
    return thread
