"""How long after a hop ends a signed-in browser sees it: fire-and-forget load at a set rate
through a real worker, the collector and daphne, read by a real websocket client.

Which frame shows hop X: the console shows a hop as one more on its flow-graph edge
(queue -> handler), so hop X, the k-th to end, is shown by the first frame whose edge count
reaches k. Each hop notes its end time (one Redis call, like the p1 counting); sorted, they
give the k-th. Hops from different pool processes reach the collector in batches, not strictly
in end order, so a single hop's attribution can be off by a batch; the mean is exact and the
percentiles are those of the frames' arrival against the hops' ends.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.db.models import Q

import flows
from tooling.bench import counting, processes, sender, throughput
from tooling.brokers import purge
from tooling.devredis import free_port
from tracing.models import EdgeHour, EdgeStat, Span
from tracing.redis import get_redis

if TYPE_CHECKING:
    from tooling.bench.websocket import LiveSocket

ProgressFn = Callable[[str], None]
QUEUE, EDGE = "bench.live", ("queue:bench.live", "handler:bench_live")
NOT_INSTALLED = "websockets is not installed; make bench installs it (pip install -c requirements.lock -e '.[bench]')"


def installed() -> bool:
    return importlib.util.find_spec("websockets") is not None


def latencies(ends: list[float], frames: list[tuple[float, int]], *, skip: int = 0) -> list[float]:
    """Milliseconds from each hop's end (sorted) to the first frame whose count includes it;
    hops no frame showed are left out. The first `skip` hops (a warm-up) are not measured."""
    out, i = [], 0
    for k, ended in enumerate(ends, start=1):
        while i < len(frames) and frames[i][1] < k:
            i += 1
        if i == len(frames):
            break
        if k > skip:
            out.append((frames[i][0] - ended) * 1000)
    return out


def _wait_count(socket: LiveSocket, count: int, timeout: float, progress: ProgressFn) -> None:
    deadline = time.monotonic() + timeout
    while socket.count() < count and time.monotonic() < deadline:
        progress(f"live: {socket.count()}/{count} hops shown")
        time.sleep(0.2)


def _wait_done(count: int, worker: Any, progress: ProgressFn, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while (done := get_redis().llen(counting.ends_key("live"))) < count:
        progress(f"live: {done}/{count} hops done")
        if worker.poll() is not None:
            raise RuntimeError(f"the live worker exited with {worker.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"live: only {done} of {count} hops done after {timeout:.0f}s")
        time.sleep(0.2)


def _clean(marker: str) -> None:
    for model in (EdgeStat, EdgeHour):
        model.objects.filter(Q(source=EDGE[0]) | Q(target=EDGE[0])).delete()
    Span.objects.filter(correlation_id=marker)._raw_delete(Span.objects.db)
    purge(QUEUE)
    get_redis().delete(counting.ends_key("live"))


def live_latency(seconds: float, rate: float, *, concurrency: int, log_dir: Path, progress: ProgressFn, senders: int = 2) -> dict[str, Any]:
    from tooling.bench import websocket  # the bench extra: only when this runs

    marker = f"bench-live-{uuid.uuid4().hex[:8]}"
    n = int(seconds * rate)
    _clean(marker)
    port = free_port()
    web = processes.start_daphne(port, log_dir=log_dir)
    collector = processes.start_collector(log_dir=log_dir)
    worker = throughput.start_worker([QUEUE], concurrency=concurrency, log_dir=log_dir)
    socket = websocket.LiveSocket(port, edge=EDGE)
    try:
        processes.wait_http(f"http://127.0.0.1:{port}/", web)
        socket.connect(websocket.session_cookie())
        # One hop through the whole chain first: the worker, collector and broadcaster are up.
        flows.send("bench.live", {"n": -1}, correlation_id=marker)
        _wait_count(socket, 1, 60, progress)
        if socket.count() < 1:
            raise RuntimeError(f"the first hop never reached the websocket; see {log_dir}")
        achieved = sender.run_senders("bench.live", n, rate, marker, senders=senders, progress=lambda elapsed: progress(f"live: sending {n} at {rate:.0f}/s, {elapsed:.0f}s"))
        _wait_done(n + 1, worker, progress)  # a backlog on a busy machine: the workers finish it first
        _wait_count(socket, n + 1, 60, progress)
        measured = latencies(counting.ends("live"), list(socket.frames), skip=1)
    finally:
        socket.close()
        for process in (worker, collector, web):
            processes.stop(process)
        websocket.forget_bench_user()
        _clean(marker)
    if len(measured) < 2:
        raise RuntimeError(f"only {len(measured)} of {n} hops reached the websocket; see {log_dir}")
    cuts = statistics.quantiles(measured, n=100)
    return {
        "p3_load_set_per_s": rate,
        "p3_load_per_s": round(achieved, 1),
        "p3_hops": n,
        "p3_hops_shown": len(measured),
        "p3_live_p50_ms": round(statistics.median(measured), 1),
        "p3_live_p95_ms": round(cuts[94], 1),
        "p3_live_max_ms": round(max(measured), 1),
    }
