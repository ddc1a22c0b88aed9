"""The peer users would pick instead: the bare Celery workload with worker events on (-E) and
Flower consuming them, against the same workload without, in alternating rounds; and Flower's
resident memory after it.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tooling.bench import processes, throughput
from tooling.devredis import free_port

ProgressFn = Callable[[str], None]
NOT_INSTALLED = "flower is not installed; make bench installs it (pip install -c requirements.lock -e '.[bench]')"


def installed() -> bool:
    return importlib.util.find_spec("flower") is not None


def succeeded(metrics: str) -> int:
    """Tasks counted as succeeded in Flower's Prometheus metrics, over every worker and task name."""
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("flower_events_total{") and 'type="task-succeeded"' in line))


def tasks_seen(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:  # noqa: S310 - our own Flower
        return succeeded(response.read().decode())


def flower_ratio(n: int, rounds: int, *, concurrency: int, log_dir: Path, progress: ProgressFn) -> dict[str, Any]:
    port = free_port()
    # Flower must not switch events on by itself: the bare rounds run while it listens, and
    # must stay bare. The -E rounds switch them on, as a user running Flower would.
    flower = processes.start("flower", [sys.executable, "-m", "celery", "-A", "console", "flower", "--address=127.0.0.1", f"--port={port}", "--enable_events=False"], log_dir=log_dir)
    try:
        processes.wait_http(f"http://127.0.0.1:{port}/healthcheck", flower)
        bare, watched = [], []
        for i in range(rounds):
            progress(f"flower: round {i + 1} of {rounds}")
            bare.append(throughput.bare_rate(n, concurrency=concurrency, log_dir=log_dir, progress=progress).rate)
            watched.append(throughput.bare_rate(n, concurrency=concurrency, log_dir=log_dir, progress=progress, events=True).rate)
        # Flower may still be reading the last events: its memory is taken once it has them all.
        deadline, seen = time.monotonic() + 30, 0
        while (seen := tasks_seen(port)) < n * rounds and time.monotonic() < deadline:
            progress(f"flower: {seen}/{n * rounds} tasks seen")
            time.sleep(0.5)
        rss = processes.rss_mib(flower.pid)
    finally:
        processes.stop(flower)
    ratios = [w / b for w, b in zip(watched, bare)]
    return {
        "flower_bare_per_s": round(statistics.median(bare), 1),
        "bare_with_events_and_flower_per_s": round(statistics.median(watched), 1),
        "p1_flower_ratio": round(statistics.median(ratios), 3),
        "p1_flower_round_ratios": [round(r, 3) for r in ratios],
        "flower_rss_mib": round(rss, 1),
        "flower_tasks_seen": seen,
    }
