"""Drain rate of a real worker: bare Celery no-op tasks against Flowscope fire-and-forget hops.

Both sides: the same broker, a worker with the same pool and concurrency, the same Redis call
per message to count it. The queue is filled first; the rate is taken between the first and the
last completion, so worker start-up and filling are outside the measurement.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings

import flows
from flows.bench import counting
from flows.redis import get_redis

ProgressFn = Callable[[str], None]


def _start_worker(queue: str, *, concurrency: int, log_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FLOWS_MODULES": ",".join([*settings.FLOWS_MODULES, "flows.bench.catalog"]), "REDIS_URL": settings.REDIS_URL}
    log = open(log_dir / f"bench-worker-{queue}.log", "ab")  # noqa: SIM115 - lives as long as the worker
    # The celery command itself, same flags for both sides (manage.py worker only takes queues
    # that a Flowscope handler consumes).
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "console", "worker", "-Q", queue, "-c", str(concurrency), "-P", "prefork", "-O", "fair", "-l", "WARNING", "-n", f"bench-{queue}@%h"],
        cwd=settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    import signal

    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def _drain(run: str, queue: str, n: int, fill: Callable[[], None], *, concurrency: int, log_dir: Path, progress: ProgressFn, timeout: float) -> float:
    counting.reset(run)
    get_redis().delete(queue)
    progress(f"{run}: filling {queue} with {n} messages")
    fill()
    worker = _start_worker(queue, concurrency=concurrency, log_dir=log_dir)
    try:
        deadline = time.monotonic() + timeout
        while True:
            done, first, last = counting.progress(run)
            progress(f"{run}: {done}/{n} done")
            if done >= n:
                break
            if worker.poll() is not None:
                raise RuntimeError(f"the {run} worker exited with {worker.returncode}; see {log_dir}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{run}: only {done} of {n} messages done after {timeout:.0f}s")
            time.sleep(0.25)
    finally:
        _stop(worker)
    return (n - 1) / max(last - first, 1e-9)


def bare_rate(n: int, *, concurrency: int, log_dir: Path, progress: ProgressFn, timeout: float = 600) -> float:
    def fill() -> None:
        with counting.bare_noop.app.producer_or_acquire() as producer:
            for _ in range(n):
                counting.bare_noop.apply_async(queue="bench.bare", producer=producer)

    return _drain("bare", "bench.bare", n, fill, concurrency=concurrency, log_dir=log_dir, progress=progress, timeout=timeout)


def flowscope_rate(n: int, *, concurrency: int, log_dir: Path, progress: ProgressFn, timeout: float = 600) -> float:
    def fill() -> None:
        for i in range(n):
            flows.send("bench.ping", {"n": i})

    return _drain("flows", "bench.flows", n, fill, concurrency=concurrency, log_dir=log_dir, progress=progress, timeout=timeout)
