"""Throughput of the other patterns, and of bulk requeue, on real workers."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from django.utils import timezone

import flows
from flows.models import DeadLetter, RequeueJob, SagaInstance
from flows.operate.requeue_jobs import requeue_job_run_slice, requeue_job_start
from flows.operate.selectors import DeadLetterFilter
from tooling.bench import counting, throughput
from tooling.bench.rows import dead_letter_row, insert_dead_letters
from tooling.brokers import purge

ProgressFn = Callable[[str], None]


def fanout_rates(events: int, *, concurrency: int, log_dir: Path, progress: ProgressFn) -> tuple[float, float]:
    """Deliveries a second: 1 event to 3 subscribers, against 3 bare tasks on 3 queues."""
    bare_queues, flow_queues = ["bench.b1", "bench.b2", "bench.b3"], ["bench.f1", "bench.f2", "bench.f3"]

    def fill_bare() -> None:
        with counting.bare_noop.app.producer_or_acquire() as producer:
            for _ in range(events):
                for queue in bare_queues:
                    counting.bare_noop.apply_async(args=["bare3"], queue=queue, producer=producer)

    def fill_flows() -> None:
        for i in range(events):
            flows.send("bench.event", {"n": i})

    bare = throughput.drain("bare3", bare_queues, 3 * events, fill_bare, concurrency=concurrency, log_dir=log_dir, progress=progress).rate
    fan = throughput.drain("fanout", flow_queues, 3 * events, fill_flows, concurrency=concurrency, log_dir=log_dir, progress=progress).rate
    return bare, fan


def idempotent_rate(n: int, *, concurrency: int, log_dir: Path, progress: ProgressFn) -> float:
    def fill() -> None:
        for i in range(n):
            flows.send("bench.credit", {"n": i})

    return throughput.drain("idempotent", ["bench.idem"], n, fill, concurrency=concurrency, log_dir=log_dir, progress=progress).rate


def request_reply(n: int, *, concurrency: int, log_dir: Path, progress: ProgressFn, callers: int = 8) -> dict[str, float]:
    worker = throughput.start_worker(["bench.rr"], concurrency=concurrency, log_dir=log_dir)
    try:
        flows.request("bench.ask", {"n": -1}, timeout=60)  # the worker is up and answering

        def one(i: int) -> float:
            started = time.perf_counter()
            flows.request("bench.ask", {"n": i}, timeout=30)
            return (time.perf_counter() - started) * 1000

        started = time.perf_counter()
        with ThreadPoolExecutor(callers) as pool:
            latencies = list(pool.map(one, range(n)))
        elapsed = time.perf_counter() - started
        progress(f"request-reply: {n} done")
    finally:
        throughput.stop(worker)
    cuts = statistics.quantiles(latencies, n=100)
    return {"request_reply_per_s": round(n / elapsed, 1), "request_reply_p50_ms": round(statistics.median(latencies), 1), "request_reply_p99_ms": round(cuts[98], 1)}


def saga_rate(n: int, *, concurrency: int, log_dir: Path, progress: ProgressFn, timeout: float = 600) -> float:
    marker = f"bench-{uuid.uuid4().hex[:8]}"
    worker = throughput.start_worker(["bench.saga"], concurrency=concurrency, log_dir=log_dir)
    try:
        # One saga through first, so the clock starts with the worker up and answering: its
        # start-up (seconds here) was counted in the rate, most of it at the quick size.
        flows.start_saga("bench.saga", {"n": -1}, correlation_id=f"{marker}-warm-up")
        _until_completed(f"{marker}-warm-up", 1, time.monotonic() + timeout, progress)
        started = time.monotonic()
        for i in range(n):
            flows.start_saga("bench.saga", {"n": i}, correlation_id=marker)
        _until_completed(marker, n, started + timeout, progress)
        elapsed = time.monotonic() - started
    finally:
        throughput.stop(worker)
        SagaInstance.objects.filter(correlation_id__startswith=marker).delete()
    return n / elapsed


def _until_completed(marker: str, n: int, deadline: float, progress: ProgressFn) -> None:
    while True:
        done = SagaInstance.objects.filter(correlation_id=marker, state=SagaInstance.State.COMPLETED).count()
        progress(f"sagas: {done}/{n} completed")
        if done >= n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done} of {n} sagas completed in time")
        time.sleep(0.05)


def _dead_letters(n: int) -> None:
    now = timezone.now()
    rows = []
    for i in range(n):
        message_id = uuid.uuid4()
        envelope = f'{{"type": "bench.requeue", "payload": {{}}, "message_id": "{message_id}", "headers": {{"pattern": "fire_and_forget"}}}}'
        rows.append(
            dead_letter_row(
                message_type="bench.requeue",
                queue="bench.requeue",
                consumer="bench_requeue",
                envelope=envelope,
                fingerprint="bench-requeue",
                state="dead",
                at=now - timedelta(microseconds=i),
                message_id=message_id,
            )
        )
    insert_dead_letters(rows)


def _run_job(rate: float | None) -> tuple[int, float, float]:
    """Done, wall seconds and this process's CPU seconds (a figure the machine's other load
    does not move as much as the wall)."""
    job = requeue_job_start(actor="bench", filters=DeadLetterFilter(message_type="bench.requeue"), rate_per_s=rate, canary_size=0)  # the raw rate: no canary, no ramp
    started, cpu = time.perf_counter(), time.process_time()
    while requeue_job_run_slice(job.pk):
        pass
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return RequeueJob.objects.get(pk=job.pk).done, elapsed, cpu


def requeue_rates(n: int, rated: int, rate: float, progress: ProgressFn) -> dict[str, float]:
    """Bulk requeue as fast as it goes, then at a set rate: how far the achieved rate is from it."""
    try:
        _dead_letters(n)
        done, elapsed, cpu = _run_job(None)
        progress(f"requeue: {done} in {elapsed:.1f}s")
        DeadLetter.objects.filter(message_type="bench.requeue").delete()
        _dead_letters(rated)
        done_rated, elapsed_rated, _ = _run_job(rate)
    finally:
        DeadLetter.objects.filter(message_type="bench.requeue")._raw_delete(DeadLetter.objects.db)
        RequeueJob.objects.filter(created_by="bench").delete()
        purge("bench.requeue")
    achieved = done_rated / elapsed_rated
    return {
        "p6_requeue_per_s": round(done / elapsed, 1),
        "p6_requeue_per_cpu_s": round(done / cpu, 1),
        "p6_rate_set_per_s": rate,
        "p6_rate_achieved_per_s": round(achieved, 1),
        "p6_rate_error_pct": round(abs(achieved - rate) / rate * 100, 2),
    }
