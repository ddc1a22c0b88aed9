"""Resident memory of the web server, the worker (main process and pool children) and the
collector after many messages, against after the first few: a process that keeps something per
message grows with them.

Both samples are taken at rest (every hop done, every span stored), so what is compared is
what each process holds, not what it is in the middle of. Meanwhile a signed-in websocket client
reads the live frames and the overview page is fetched now and then, so the web server works too.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.db.models import Q

from tooling.bench import counting, live, processes, sender, throughput
from tooling.brokers import purge
from tooling.devredis import free_port
from tracing.models import EdgeHour, EdgeStat, Span
from tracing.sink import sink_status

ProgressFn = Callable[[str], None]
QUEUE, EDGE = "bench.memory", ("queue:bench.memory", "handler:bench_memory")
BACKLOG = 2_000  # messages waiting at most: Redis stays small over a long run
installed, NOT_INSTALLED = live.installed, live.NOT_INSTALLED  # the same websocket client


def _clean(marker: str) -> None:
    for model in (EdgeStat, EdgeHour):
        model.objects.filter(Q(source=EDGE[0]) | Q(target=EDGE[0])).delete()
    Span.objects.filter(correlation_id=marker)._raw_delete(Span.objects.db)
    purge(QUEUE)
    counting.reset("memory")


def _at_rest(done: int, worker: Any, progress: ProgressFn, timeout: float = 600) -> None:
    """Until `done` hops have run and the collector has stored every span waiting."""
    deadline = time.monotonic() + timeout
    while True:
        finished, pending = counting.progress("memory")[0], sink_status()["pending"]
        progress(f"memory: {finished}/{done} done, {pending} spans waiting")
        if finished >= done and pending <= 0:
            return
        if worker.poll() is not None:
            raise RuntimeError(f"the memory worker exited with {worker.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"memory: {finished} of {done} hops done, {pending} spans waiting after {timeout:.0f}s")
        time.sleep(0.5)


def rss_growth(total: int, first: int, *, concurrency: int, log_dir: Path, progress: ProgressFn, senders: int = 2) -> dict[str, Any]:
    from tooling.bench import websocket  # the bench extra: only when this runs

    marker = f"bench-memory-{uuid.uuid4().hex[:8]}"
    _clean(marker)
    port = free_port()
    kinds = {
        "web": processes.start_daphne(port, log_dir=log_dir),
        "collector": processes.start_collector(log_dir=log_dir),
        "worker": throughput.start_worker([QUEUE], concurrency=concurrency, log_dir=log_dir),
    }
    socket = websocket.LiveSocket(port, edge=EDGE)
    visits = {"ok": 0, "failed": 0, "last": 0.0}
    try:
        processes.wait_http(f"http://127.0.0.1:{port}/", kinds["web"])
        cookie = websocket.session_cookie()
        socket.connect(cookie)

        def send(n: int) -> None:
            def report(elapsed: float) -> None:
                done = counting.progress("memory")[0]
                progress(f"memory: {done}/{total} done, {elapsed:.0f}s")
                if time.monotonic() - visits["last"] > 2:  # the overview page, now and then
                    visits["last"] = time.monotonic()
                    visits["ok" if _visit(port, cookie) else "failed"] += 1
                    # The trend on the way, in the log: a long run stopped early still tells.
                    with open(log_dir / "bench-memory-rss.jsonl", "a") as trend:
                        trend.write(json.dumps({"done": done, **{kind: round(processes.rss_mib(p.pid), 1) for kind, p in kinds.items()}}) + "\n")

            sender.run_senders("bench.memory", n, 1e9, marker, senders=senders, progress=report, queue=QUEUE, backlog=BACKLOG)

        send(first)
        _at_rest(first, kinds["worker"], progress)
        early = {kind: processes.rss_mib(p.pid) for kind, p in kinds.items()}
        started = time.monotonic()
        send(total - first)
        _at_rest(total, kinds["worker"], progress)
        late = {kind: processes.rss_mib(p.pid) for kind, p in kinds.items()}
        elapsed = time.monotonic() - started
        frames = len(socket.frames)
    finally:
        socket.close()
        for process in kinds.values():
            processes.stop(process)
        websocket.forget_bench_user()
        _clean(marker)
    growth = {kind: (late[kind] - early[kind]) / early[kind] * 100 for kind in kinds}
    figures: dict[str, Any] = {
        "p7_messages": total,
        "p7_baseline_messages": first,
        "p7_per_s": round((total - first) / elapsed, 1),
        "p7_frames_read": frames,
        "p7_pages_fetched": visits["ok"],
        "p7_pages_failed": visits["failed"],
    }
    for kind in kinds:
        figures[f"p7_{kind}_rss_mib"] = [round(early[kind], 1), round(late[kind], 1)]
        figures[f"p7_{kind}_rss_growth_pct"] = round(growth[kind], 2)
    figures["p7_rss_growth_pct"] = round(max(growth.values()), 2)
    return figures


def _visit(port: int, cookie: str) -> bool:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Cookie": cookie})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own server
            response.read()
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
