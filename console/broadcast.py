"""The live broadcaster: one snapshot a second to every connected browser, however high the
load, so the channel layer never sees a burst it would drop (channels_redis drops past its
capacity). Runs in the collector process, beside the aggregates it reads."""

from __future__ import annotations

import logging
import threading
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import close_old_connections

from console import live

log = logging.getLogger(__name__)
INTERVAL = 1.0


def run(stop: threading.Event, interval: float = INTERVAL, group: str = live.GROUP) -> None:
    layer = get_channel_layer()
    send = async_to_sync(layer.group_send)
    while not stop.is_set():
        started = time.monotonic()
        try:
            close_old_connections()
            send(group, {"type": "live.frame", "frame": live.snapshot()})
        except Exception:  # Redis or the database away for a moment: the next second tries again
            log.warning("live snapshot not sent", exc_info=True)
        stop.wait(max(0.05, interval - (time.monotonic() - started)))


def start(stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=run, args=(stop,), name="live-broadcast", daemon=True)
    thread.start()
    return thread
