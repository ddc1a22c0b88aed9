"""Processing counters, kept in memory and flushed to Redis once a second per process.

One pipelined write a second instead of one per hop; the console and the demo read the totals.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import Counter
from typing import Any

from tracing.redis import get_redis, key

log = logging.getLogger(__name__)
PROCESSED_KEY = key("stats", "processed")
WORKERS_KEY = key("workers")
FLUSH_SECONDS = 1.0
ONLINE_SECONDS = 10.0


class _Counters:
    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._pid = 0
        self._stop = threading.Event()
        # A fork leaves the flusher thread behind: the child starts its own on first use. Told
        # by the fork rather than by comparing pids, which cost a getpid call on every hop.
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._pid = 0

    def identify(self, worker: str) -> None:
        """Name this process in the heartbeat that tells the console which workers are online."""
        if not self._pid:
            self._start()
        self.worker = worker

    def add(self, pattern: str, consumer: str, outcome: str) -> None:
        if not self._pid:
            self._start()  # first use in this process, or first after a fork
        with self._lock:
            self._counts[f"{pattern}|{consumer}|{outcome}"] += 1

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, Counter()
        worker = getattr(self, "worker", "")
        if not counts and not worker:
            return
        try:
            pipe = get_redis().pipeline(transaction=False)
            for field, n in counts.items():
                pipe.hincrby(PROCESSED_KEY, field, n)
            if worker:
                pipe.hset(WORKERS_KEY, worker, repr(time.time()))
            pipe.execute()
        except Exception:  # Redis away: keep the counts for the next flush
            log.warning("could not flush processing counters; will retry", exc_info=True)
            with self._lock:
                self._counts.update(counts)

    def _start(self) -> None:
        self._pid = os.getpid()
        self.worker = ""
        self._counts = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._loop, name="flows-stats", daemon=True).start()
        atexit.register(self.flush)

    def _loop(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self.flush()


counters = _Counters()


def workers_online() -> list[dict[str, Any]]:
    """Worker processes that sent a heartbeat in the last ONLINE_SECONDS, and how long ago."""
    now = time.time()
    online = []
    for worker, seen in get_redis().hgetall(WORKERS_KEY).items():
        age = now - float(seen)
        if age <= ONLINE_SECONDS:
            online.append({"worker": worker.decode(), "seen_s": round(age, 1)})
    return sorted(online, key=lambda w: w["worker"])


def processed_totals() -> dict[tuple[str, str, str], int]:
    """{(pattern, consumer, outcome): count} over every process since the keys were cleared."""
    totals = {}
    for field, value in get_redis().hgetall(PROCESSED_KEY).items():
        pattern, consumer, outcome = field.decode().split("|", 2)
        totals[(pattern, consumer, outcome)] = int(value)
    return totals
