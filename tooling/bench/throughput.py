"""Drain rate of a real worker: bare Celery no-op tasks against Flowscope hops.

Beside the rate, the worker's CPU time a message (its main process and pool children, threads
included): on a machine shared with other load, the wall clock measures that load too, and the
CPU a message costs moves much less with it.

Both sides: the same broker (Redis or RabbitMQ, the same queue type and exchange), a worker with
the same pool, concurrency, prefetch and late acknowledgement, the same Redis call per message
to count it. The queues are filled first; the rate is taken between the first and
the last completion, so worker start-up and filling are outside the measurement.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from celery import current_app
from django.conf import settings

import flows
from flows.core.brokers import RABBITMQ, broker_kind
from tooling.bench import counting, processes
from tooling.brokers import purge

ProgressFn = Callable[[str], None]


class Drained(NamedTuple):
    rate: float  # messages a second between the first completion and the last
    cpu_ms: float  # the worker's CPU milliseconds a message over the same stretch


def start_worker(queues: list[str], *, concurrency: int, log_dir: Path, events: bool = False) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FLOWS_MODULES": ",".join([*settings.FLOWS_MODULES, "tooling.bench.catalog"]), "REDIS_URL": settings.REDIS_URL}
    name = "-".join(queues)
    log = open(log_dir / f"bench-worker-{name}.log", "ab")  # noqa: SIM115 - lives as long as the worker
    # The celery command itself, same flags for both sides (manage.py worker only takes queues
    # that a Flowscope handler consumes).
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "console",
            "worker",
            "-Q",
            ",".join(queues),
            "-c",
            str(concurrency),
            "-P",
            "prefork",
            "-O",
            "fair",
            "-l",
            "WARNING",
            "-n",
            f"bench-{name}@%h",
            *(["-E"] if events else []),
        ],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def drain(
    run: str,
    queues: list[str],
    expected: int,
    fill: Callable[[], None],
    *,
    concurrency: int,
    log_dir: Path,
    progress: ProgressFn,
    timeout: float = 600,
    events: bool = False,
    start: Callable[[], subprocess.Popen[bytes]] | None = None,
) -> Drained:
    """Fill, then start a worker (`start`, else the console's worker on `queues`) and time it to the last message."""
    counting.reset(run)
    purge(*queues)
    progress(f"{run}: filling {', '.join(queues)}")
    fill()
    worker = start() if start else start_worker(queues, concurrency=concurrency, log_dir=log_dir, events=events)
    try:
        deadline = time.monotonic() + timeout
        cpu_from: tuple[int, float] | None = None  # (done, CPU seconds) when the first completion is seen
        while True:
            done, first, last = counting.progress(run)
            progress(f"{run}: {done}/{expected} done")
            if cpu_from is None and done:
                cpu_from = done, processes.cpu_seconds(worker.pid)
            if done >= expected:
                cpu_to = processes.cpu_seconds(worker.pid)
                break
            if worker.poll() is not None:
                raise RuntimeError(f"the {run} worker exited with {worker.returncode}; see {log_dir}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{run}: only {done} of {expected} messages done after {timeout:.0f}s")
            # Often until the first completion, so the CPU count starts near it (the worker's
            # start-up left out); then often enough that it also stops near the last one (an idle
            # worker's CPU after it would count against short rounds).
            time.sleep(0.05 if cpu_from else 0.01)
    finally:
        stop(worker)
    assert cpu_from is not None
    counted = max(expected - cpu_from[0], 1)
    return Drained((expected - 1) / max(last - first, 1e-9), (cpu_to - cpu_from[1]) / counted * 1000)


def bare_rate(n: int, *, concurrency: int, log_dir: Path, progress: ProgressFn, events: bool = False) -> Drained:
    def fill() -> None:
        with counting.bare_noop.app.producer_or_acquire() as producer:
            for _ in range(n):
                counting.bare_noop.apply_async(args=["bare"], queue="bench.bare", producer=producer)

    return drain("bare", ["bench.bare"], n, fill, concurrency=concurrency, log_dir=log_dir, progress=progress, events=events)


def flowscope_rate(n: int, *, concurrency: int, log_dir: Path, progress: ProgressFn) -> Drained:
    def fill() -> None:
        for i in range(n):
            flows.send("bench.ping", {"n": i})

    return drain("flows", ["bench.flows"], n, fill, concurrency=concurrency, log_dir=log_dir, progress=progress)


def paired_rates(n: int, rounds: int, *, concurrency: int, log_dir: Path, progress: ProgressFn) -> list[tuple[Drained, Drained]]:
    """`rounds` pairs of (bare, Flowscope) drains of `n` messages, back to back, the side that
    goes first alternating (bare then Flowscope, Flowscope then bare, ...). This machine's speed
    drifts between minutes: in a pair the two sides are neighbours, and across pairs the drift
    falls on either side as often, so the median of the pairs' ratios leaves it out."""
    pairs = []
    for i in range(rounds):
        if i % 2 == 0:
            bare = bare_rate(n, concurrency=concurrency, log_dir=log_dir, progress=progress)
            traced = flowscope_rate(n, concurrency=concurrency, log_dir=log_dir, progress=progress)
        else:
            traced = flowscope_rate(n, concurrency=concurrency, log_dir=log_dir, progress=progress)
            bare = bare_rate(n, concurrency=concurrency, log_dir=log_dir, progress=progress)
        pairs.append((bare, traced))
    return pairs


def bare_setup(concurrency: int) -> str:
    """What the bare side runs on, in words: the same as the Flowscope side, from the settings."""
    conf = current_app.conf
    prefetch = f"prefetch {conf.worker_prefetch_multiplier} per pool process ({concurrency} processes)"
    acks = "late acks" if counting.bare_noop.acks_late else "early acks"
    if broker_kind() == RABBITMQ:
        confirms = "publisher confirms" if conf.broker_transport_options.get("confirm_publish") else "no publisher confirms"
        return f"RabbitMQ {conf.task_create_missing_queue_type} queue, {conf.task_create_missing_queue_exchange_type} exchange, {prefetch}, {acks}, {confirms}"
    return f"Redis list ({conf.broker_transport or 'kombu redis'} transport), {prefetch}, {acks}"
