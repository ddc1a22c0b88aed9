"""p10: how long after an alert rule's condition becomes true its webhook is received, under load.

A real worker with the beat (evaluating at the default ALERTS_EVALUATE_SECONDS) consumes the
load's queue, the doomed messages' queue and the control queue (where evaluations and
deliveries run); a sender keeps fire-and-forget load going the whole time. Each trial makes a
fresh rule "at least N dead letters of bench_doomed in the window", sends N doomed messages a
little apart, and measures from the moment the N-th dead letter is stored (its dead_at: the
condition is true from then) to the moment the bench's own HTTP receiver (a real server in a
thread) has the signed webhook.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings

import flows
from console.alerts.models import AlertRule, Channel
from flows.models import DeadLetter
from tooling.bench import sender, throughput
from tooling.bench.alert_catalog import QUEUE
from tooling.brokers import purge
from tooling.webhook_receiver import WebhookReceiver

ProgressFn = Callable[[str], None]
THRESHOLD = 3
LOAD_QUEUE = "bench.flows"
CONSUMER = "bench_doomed"


def _start_worker(log_dir: Path, concurrency: int) -> subprocess.Popen[bytes]:
    schedule = log_dir / "bench-alerts-beat-schedule"
    env = {**os.environ, "FLOWS_MODULES": ",".join([*settings.FLOWS_MODULES, "tooling.bench.catalog", "tooling.bench.alert_catalog"]), "REDIS_URL": settings.REDIS_URL}
    env.pop("ALERTS_EVALUATE_SECONDS", None)  # the default interval is what is measured
    log = open(log_dir / "bench-worker-alerts.log", "ab")  # noqa: SIM115 - lives as long as the worker
    command = [sys.executable, "-m", "celery", "-A", "console", "worker", "-B", "-s", str(schedule), "-Q", f"{LOAD_QUEUE},{QUEUE},flows.control"]
    command += ["-c", str(concurrency), "-P", "prefork", "-O", "fair", "-l", "WARNING", "-n", "bench-alerts@%h"]
    return subprocess.Popen(command, cwd=settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait(condition: Callable[[], Any], timeout: float, what: str, worker: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if worker.poll() is not None:
            raise RuntimeError(f"the alert bench's worker exited with {worker.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"p10: no {what} after {timeout:.0f}s")
        time.sleep(0.02)
    return value


def _clean() -> None:
    AlertRule.objects.all().delete()
    Channel.objects.all().delete()
    DeadLetter.objects.filter(consumer=CONSUMER).delete()
    purge(QUEUE, LOAD_QUEUE)


def alert_latency(trials: int, load_rate: float, *, concurrency: int, log_dir: Path, progress: ProgressFn) -> dict[str, Any]:
    """p10_alert_latency_p95_ms and its company, over `trials` rules crossing their threshold."""
    _clean()
    receiver = WebhookReceiver().start()
    channel = Channel.objects.create(name="bench receiver", kind="webhook", url=receiver.url, secret="bench-secret", created_by="bench")
    worker = _start_worker(log_dir, concurrency)
    stop_load = threading.Event()
    achieved: list[float] = []

    def load() -> None:
        while not stop_load.is_set():  # bursts of a few seconds, so the load ends soon after the trials
            achieved.append(sender.run_senders("bench.ping", int(load_rate * 3), load_rate, "bench-alerts-load", senders=1, progress=lambda _: None))

    loader = threading.Thread(target=load, name="p10-load", daemon=True)
    measured: list[float] = []
    try:
        # Warm-up: the worker is up and its beat ticking once an evaluation has run.
        warm = AlertRule.objects.create(name="warm-up", kind="spans", threshold=1e9, created_by="bench")
        _wait(lambda: AlertRule.objects.filter(pk=warm.pk, evaluated_at__isnull=False).exists(), 120, "evaluation by the beat", worker)
        warm.delete()
        loader.start()
        for trial in range(trials):
            progress(f"p10: trial {trial + 1}/{trials}")
            DeadLetter.objects.filter(consumer=CONSUMER).delete()
            rule = AlertRule.objects.create(name=f"bench trial {trial}", kind="dead_letters", scope="handler", scope_value=CONSUMER, threshold=THRESHOLD, window_seconds=600, created_by="bench")
            rule.channels.set([channel])
            for i in range(THRESHOLD):
                flows.send("bench.doomed", {"n": i}, correlation_id=f"bench-alerts-{trial}")
                time.sleep(0.1)
            hit = _wait(lambda r=rule: next((h for h in receiver.received if (h.json().get("alert") or {}).get("rule", {}).get("id") == r.pk), None), 60, "webhook", worker)
            crossed = DeadLetter.objects.filter(consumer=CONSUMER).order_by("dead_at").values_list("dead_at", flat=True)[THRESHOLD - 1]
            measured.append((hit.at - crossed.timestamp()) * 1000)
            rule.delete()  # its firing alert with it: the next trial starts from quiet
    finally:
        stop_load.set()
        if loader.is_alive():
            loader.join(30)
        throughput.stop(worker)
        receiver.stop()
        _clean()
    cuts = statistics.quantiles(measured, n=100, method="inclusive") if len(measured) > 1 else measured * 100  # inclusive: a few trials never reach past their max
    return {
        "p10_trials": trials,
        "p10_threshold": THRESHOLD,
        "p10_evaluate_seconds": settings.ALERTS_EVALUATE_SECONDS,
        "p10_load_set_per_s": load_rate,
        "p10_load_per_s": round(statistics.mean(achieved), 1) if achieved else 0.0,
        "p10_alert_latency_p50_ms": round(statistics.median(measured), 1),
        "p10_alert_latency_p95_ms": round(cuts[94], 1),
        "p10_alert_latency_max_ms": round(max(measured), 1),
    }
