"""p8: a plain Celery app with flowscope-agent attached, against the same app without it.

The app (tooling.bench.plain_app) is written with nothing but Celery. Both sides run the same
`celery -A tooling.bench.plain_app worker` (prefork, the same concurrency, the same broker and
queue, the same Redis call per task to count it), one through `flowscope-agent` reporting to a
live console (daphne and the collector, started here) with an agent token, one bare. The
producer that fills the queue runs through the agent on the attached side too, as an attached
app's would, so the console stores a send and a process span for every task.

1. Rounds alternate bare and attached (the order flipped each round), each a full drain timed
   between its first and last completion (tooling.bench.throughput.drain); the ratio is the
   median of the rounds' ratios, so the machine's drift between minutes cancels out.
2. A third side in the same rounds, where it is installed (the test extra): the app with
   OpenTelemetry's own Celery instrumentation (tooling.bench.otel_app), exporting to the same
   console with the same token, so the agent is read beside what a team would otherwise use.
3. Memory: the attached worker, daphne and the collector after a warm-up, then after the whole
   run, both at rest (every task done, every span stored), as tooling.bench.memory does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from django.conf import settings

from console.models import ApiToken, Role
from tooling.bench import counting, processes, spans, throughput
from tooling.brokers import purge
from tooling.devredis import free_port
from tracing.models import Span
from tracing.sink import sink_status

ProgressFn = Callable[[str], None]
APP = "bench_plain"  # the plain app's main name: the service its spans are stored under
QUEUE = "bench.plain"
MODULE = "tooling.bench.plain_app"
OTEL_MODULE = "tooling.bench.otel_app"
BIN = Path(sys.executable).parent
AGENT, CELERY = BIN / "flowscope-agent", BIN / "celery"
SETTLED = 15.0  # seconds the spans stored may stay short of every task's, nothing waiting, before the run counts them as all that came
BACKLOG = 2_000  # tasks waiting at most in the memory run: the broker stays small over a long run
# The plain app's environment has none of this project's settings: Celery's Django fix-up stays
# off, and CELERY_BROKER_URL (read by Celery before any setting) cannot move it off its broker.
FOREIGN = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "FLOWS_MODULES", "FLOWSCOPE_", "OTEL_", "CELERY_")
NOT_INSTALLED = f"flowscope-agent is not installed beside {sys.executable} (pip install -e . installs it)"


def installed() -> bool:
    return AGENT.exists() and CELERY.exists()


def otel_installed() -> bool:
    """OpenTelemetry's Celery instrumentation (the test extra installs it): p8's other peer."""
    return importlib.util.find_spec("opentelemetry.instrumentation.celery") is not None


OTEL_NOT_INSTALLED = "opentelemetry-instrumentation-celery is not installed (pip install -c requirements.lock -e '.[test,bench]', as make bench does)"
BARE, AGENT_SIDE, OTEL = "bare", "attached", "otel"  # the sides: the plain app alone, through the agent, with OpenTelemetry's instrumentation


class Attached:
    """How the plain app's processes are started: bare, with the agent reporting to `url`, or with
    OpenTelemetry's Celery instrumentation exporting to the same console with the same token."""

    def __init__(self, *, url: str, token: str, concurrency: int, log_dir: Path, cpus: set[int] | None = None) -> None:
        self.url, self.token, self.concurrency, self.log_dir = url, token, concurrency, log_dir
        self.cpus = cpus  # the CPUs the app's processes may use (None: all)

    def pin(self) -> Callable[[], None] | None:
        """Run in the new process before it starts: the app's CPUs, inherited by its pool processes."""
        cpus = self.cpus
        return None if cpus is None else lambda: os.sched_setaffinity(0, cpus)

    def env(self, side: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
        env.update(PLAIN_BROKER_URL=settings.CELERY_BROKER_URL, PLAIN_REDIS_URL=settings.REDIS_URL, PLAIN_QUEUE=QUEUE)
        if side == AGENT_SIDE:
            env.update(FLOWSCOPE_URL=self.url, FLOWSCOPE_TOKEN=self.token)
        elif side == OTEL:
            env.update(
                OTEL_SERVICE_NAME=APP,
                OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{self.url}/v1/traces",
                OTEL_EXPORTER_OTLP_TRACES_HEADERS=f"Authorization=Bearer%20{self.token}",  # OpenTelemetry's env format: URL-encoded values
            )
        return env

    def _start(self, command: list[str], side: str, log: str) -> subprocess.Popen[bytes]:
        out = open(self.log_dir / log, "ab")  # noqa: SIM115 - lives as long as the process
        return subprocess.Popen(command, cwd=settings.BASE_DIR, env=self.env(side), stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=self.pin())

    def worker(self, side: str) -> subprocess.Popen[bytes]:
        celery = [
            str(CELERY),
            "-A",
            OTEL_MODULE if side == OTEL else MODULE,
            "worker",
            "-Q",
            QUEUE,
            "-c",
            str(self.concurrency),
            "-P",
            "prefork",
            "-l",
            "WARNING",
            "-n",
            f"bench-plain-{side}@%h",
            "--without-mingle",
            "--without-gossip",
        ]
        return self._start([str(AGENT), *celery] if side == AGENT_SIDE else celery, side, f"bench-plain-worker-{side}.log")

    def producer(self, run: str, n: int, side: str, *, backlog: int = 0) -> subprocess.Popen[bytes]:
        """A producer of the app's own (through the agent, or instrumented, as the side's worker is) sending n no-op tasks."""
        command = [sys.executable, "-m", OTEL_MODULE if side == OTEL else MODULE, str(n), str(backlog), *counting.keys(run)]
        return self._start([str(AGENT), *command] if side == AGENT_SIDE else command, side, "bench-plain-producer.log")

    def send(self, run: str, n: int, side: str, *, backlog: int = 0) -> None:
        producer = self.producer(run, n, side, backlog=backlog)
        try:
            returncode = producer.wait(3600)
        finally:
            throughput.stop(producer)  # a no-op once it has exited
        if returncode != 0:
            raise RuntimeError(f"the plain app's producer exited with {returncode}; see {self.log_dir / 'bench-plain-producer.log'}")

    def drain(self, run: str, n: int, side: str, *, progress: ProgressFn) -> throughput.Drained:
        return throughput.drain(run, [QUEUE], n, lambda: self.send(run, n, side), concurrency=self.concurrency, log_dir=self.log_dir, progress=progress, start=lambda: self.worker(side))


def _stored() -> int:
    return Span.objects.filter(service=APP).count()


def _at_rest(run: str, done: int, worker: subprocess.Popen[bytes], progress: ProgressFn, *, before: int, timeout: float = 900) -> int:
    """Until `done` tasks have run and their spans (a send and a process each) are stored beside
    the `before` stored already, or the count stored has stayed the same for SETTLED seconds with
    nothing waiting (a batch the console answered with an error is lost to the agent, not waited
    for); the count this run stored."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while True:
        finished, pending = counting.progress(run)[0], sink_status()["pending"]
        stored = _stored() - before if finished >= done and pending <= 0 else 0
        progress(f"p8 memory: {finished}/{done} done, {pending} spans waiting, {stored} stored")
        if stored != last:
            last, since = stored, time.monotonic()
        if finished >= done and pending <= 0 and (stored >= 2 * done or time.monotonic() - since > SETTLED):
            return stored
        if worker.poll() is not None:
            raise RuntimeError(f"the attached worker exited with {worker.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"p8 memory: {finished} of {done} tasks done, {pending} spans waiting, {stored} of {2 * done} stored after {timeout:.0f}s")
        time.sleep(1)


def _clean() -> None:
    Span.objects.filter(service=APP)._raw_delete(Span.objects.db)
    purge(QUEUE)
    for run in (f"p8-{BARE}", f"p8-{AGENT_SIDE}", f"p8-{OTEL}", "p8-memory"):
        counting.reset(run)


def attach_ratio(n: int, rounds: int, total: int, first: int, *, concurrency: int, log_dir: Path, progress: ProgressFn) -> dict[str, Any]:
    _clean()
    port = free_port()
    token, secret = ApiToken.issue(name=f"bench p8 {uuid.uuid4().hex[:6]}", role=Role.AGENT, created_by="manage.py bench")
    web = processes.start_daphne(port, log_dir=log_dir)
    collector = processes.start_collector(log_dir=log_dir)
    side = Attached(url=f"http://127.0.0.1:{port}", token=secret, concurrency=concurrency, log_dir=log_dir)
    try:
        processes.wait_http(f"http://127.0.0.1:{port}/healthz", web)
        sides = (BARE, AGENT_SIDE, OTEL) if otel_installed() else (BARE, AGENT_SIDE)
        drained, console_ms = _rounds(side, n, rounds, web=web, collector=collector, progress=progress, sides=sides)
        figures = _ratios(n, drained[BARE], drained[AGENT_SIDE])
        figures["p8_console_web_cpu_ms"] = round(statistics.median(w for w, _, _ in console_ms[AGENT_SIDE]), 3)
        figures["p8_console_collector_cpu_ms"] = round(statistics.median(c for _, c, _ in console_ms[AGENT_SIDE]), 3)
        figures["p8_spans_a_task"] = round(min(s for _, _, s in console_ms[AGENT_SIDE]), 3)  # 2 when every round reached the console
        figures.update(_otel(drained, console_ms) if OTEL in drained else {"p8_otel": f"left out: {OTEL_NOT_INSTALLED}"})
        figures.update(_apart(side, n, min(rounds, 3), web=web, collector=collector, progress=progress))
        figures.update(_memory(side, total, first, web=web, collector=collector, progress=progress))
    finally:
        for process in (collector, web):
            processes.stop(process)
        token.delete()
        _clean()
    return figures


def _rounds(
    side: Attached, n: int, rounds: int, *, web: subprocess.Popen[bytes], collector: subprocess.Popen[bytes], progress: ProgressFn, label: str = "p8", sides: tuple[str, ...] = (BARE, AGENT_SIDE)
) -> tuple[dict[str, list[throughput.Drained]], dict[str, list[list[float]]]]:
    """The sides' drains in turn, the order reversed each round so none always drains first; with
    the console's CPU a task (web, collector) and the spans it stored a task, in each round of a
    side that reports to it."""
    drained: dict[str, list[throughput.Drained]] = {s: [] for s in sides}
    console_ms: dict[str, list[list[float]]] = {s: [] for s in sides if s != BARE}
    for i in range(rounds):
        for kind in sides if i % 2 == 0 else sides[::-1]:
            progress(f"{label}: round {i + 1} of {rounds}, {kind}")
            cpu_before, stored = [processes.cpu_seconds(p.pid) for p in (web, collector)], _stored()
            drained[kind].append(side.drain(f"p8-{kind}", n, kind, progress=progress))
            if kind != BARE:  # what the console spent on this round's tasks: the producer's spans, the worker's spans and live reports
                spans.wait_sink_empty(progress, what=label)
                console_ms[kind].append([*((processes.cpu_seconds(p.pid) - b) / n * 1000 for p, b in zip((web, collector), cpu_before)), (_stored() - stored) / n])
    return drained, console_ms


def _apart(side: Attached, n: int, rounds: int, *, web: subprocess.Popen[bytes], collector: subprocess.Popen[bytes], progress: ProgressFn) -> dict[str, Any]:
    """The same comparison with the console on CPUs of its own, as it is deployed (on another
    machine, or cores set aside), the app's processes bare and attached on the rest: what the
    agent alone costs the app. The machine's CPUs are split in two halves; on one CPU there is
    nothing to split and the figure is left out."""
    if not hasattr(os, "sched_setaffinity"):
        return {"p8_apart": "left out: this system sets no CPU affinity (Linux does)"}
    everything = os.sched_getaffinity(0)
    if len(everything) < 2:
        return {"p8_apart": "left out: one CPU, nothing to set aside for the console"}
    ordered = sorted(everything)
    app_cpus, console_cpus = set(ordered[: len(ordered) // 2]), set(ordered[len(ordered) // 2 :])
    pinned = Attached(url=side.url, token=side.token, concurrency=side.concurrency, log_dir=side.log_dir, cpus=app_cpus)
    try:
        for process in (web, collector):
            pin_threads(process.pid, console_cpus)
        drained, _ = _rounds(pinned, n, rounds, web=web, collector=collector, progress=progress, label="p8 apart")
    finally:
        for process in (web, collector):
            pin_threads(process.pid, everything)
    ratios = _ratios(n, drained[BARE], drained[AGENT_SIDE])
    return {
        "p8_apart_cpus": f"app {sorted(app_cpus)}, console {sorted(console_cpus)}",
        "p8_apart_rounds": ratios["p8_rounds"],
        "p8_apart_bare_celery_per_s": ratios["p8_bare_celery_per_s"],
        "p8_apart_attached_per_s": ratios["p8_attached_per_s"],
        "p8_apart_attach_ratio": ratios["p8_attach_ratio"],
        "p8_apart_round_ratios": ratios["p8_round_ratios"],
        "p8_apart_attach_cpu_ratio": ratios["p8_attach_cpu_ratio"],
    }


def _otel(drained: dict[str, list[throughput.Drained]], console_ms: dict[str, list[list[float]]]) -> dict[str, Any]:
    """OpenTelemetry's Celery instrumentation on the same app, console and rounds: the agent's
    figures beside the instrumentation a team would otherwise reach for."""
    bare, otel, agent = drained[BARE], drained[OTEL], drained[AGENT_SIDE]
    return {
        "p8_otel_per_s": round(statistics.median(d.rate for d in otel), 1),
        "p8_otel_ratio": round(statistics.median(o.rate / b.rate for o, b in zip(otel, bare)), 3),
        "p8_otel_cpu_ms": round(statistics.median(d.cpu_ms for d in otel), 3),
        "p8_otel_cpu_ratio": round(statistics.median(b.cpu_ms / o.cpu_ms for o, b in zip(otel, bare)), 3),
        "p8_otel_console_web_cpu_ms": round(statistics.median(w for w, _, _ in console_ms[OTEL]), 3),
        "p8_otel_console_collector_cpu_ms": round(statistics.median(c for _, c, _ in console_ms[OTEL]), 3),
        "p8_otel_spans_a_task": round(min(s for _, _, s in console_ms[OTEL]), 3),
        # Above 1: the agent's worker drained faster than the instrumented one in the same round.
        "p8_agent_vs_otel_ratio": round(statistics.median(a.rate / o.rate for a, o in zip(agent, otel)), 3),
    }


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Every thread of a running process onto `cpus` (Linux sets affinity per thread; those it
    starts later inherit it from the thread that starts them)."""
    for thread in psutil.Process(pid).threads():
        try:
            os.sched_setaffinity(thread.id, cpus)
        except ProcessLookupError:  # ended meanwhile
            pass


def _ratios(n: int, bare: list[throughput.Drained], attached: list[throughput.Drained]) -> dict[str, Any]:
    ratios = [a.rate / b.rate for a, b in zip(attached, bare)]
    cpu_ratios = [b.cpu_ms / a.cpu_ms for a, b in zip(attached, bare)]
    return {
        "p8_tasks": n,
        "p8_rounds": len(ratios),
        "p8_bare_celery_per_s": round(statistics.median(d.rate for d in bare), 1),
        "p8_attached_per_s": round(statistics.median(d.rate for d in attached), 1),
        "p8_attach_ratio": round(statistics.median(ratios), 3),
        "p8_round_ratios": [round(r, 3) for r in ratios],
        # The worker's CPU a task, bare / attached: what the agent costs the app's own processes.
        "p8_bare_celery_cpu_ms": round(statistics.median(d.cpu_ms for d in bare), 3),
        "p8_attached_cpu_ms": round(statistics.median(d.cpu_ms for d in attached), 3),
        "p8_attach_cpu_ratio": round(statistics.median(cpu_ratios), 3),
    }


def _memory(side: Attached, total: int, first: int, *, web: subprocess.Popen[bytes], collector: subprocess.Popen[bytes], progress: ProgressFn) -> dict[str, Any]:
    """RSS of Flowscope's processes and the attached worker, after `first` tasks and after `total`."""
    run = "p8-memory"
    counting.reset(run)
    purge(QUEUE)
    worker = side.worker(AGENT_SIDE)
    kinds = {"web": web, "collector": collector, "worker": worker}
    trend = side.log_dir / "bench-p8-rss.jsonl"
    sender: subprocess.Popen[bytes] | None = None
    # The rounds' spans are all in (their workers and producers flushed as they stopped) once the sink is empty.
    spans.wait_sink_empty(progress, what="p8")
    before = _stored()
    try:
        side.send(run, first, AGENT_SIDE, backlog=BACKLOG)
        _at_rest(run, first, worker, progress, before=before)
        early = {kind: processes.rss_mib(p.pid) for kind, p in kinds.items()}
        started = time.monotonic()
        sender = side.producer(run, total - first, AGENT_SIDE, backlog=BACKLOG)
        while sender.poll() is None:  # the trend on the way, in the log: a long run stopped early still tells
            with open(trend, "a") as out:
                out.write(json.dumps({"done": counting.progress(run)[0], **{kind: round(processes.rss_mib(p.pid), 1) for kind, p in kinds.items()}}) + "\n")
            progress(f"p8 memory: {counting.progress(run)[0]}/{total} done")
            if worker.poll() is not None:
                raise RuntimeError(f"the attached worker exited with {worker.returncode}; see {side.log_dir}")
            time.sleep(2)
        if sender.returncode != 0:
            raise RuntimeError(f"the plain app's producer exited with {sender.returncode}; see {side.log_dir / 'bench-plain-producer.log'}")
        stored = _at_rest(run, total, worker, progress, before=before)
        late = {kind: processes.rss_mib(p.pid) for kind, p in kinds.items()}
        elapsed = time.monotonic() - started
    finally:
        for process in (sender, worker):
            if process is not None:
                throughput.stop(process)
    growth = {kind: (late[kind] - early[kind]) / early[kind] * 100 for kind in kinds}
    figures: dict[str, Any] = {
        "p8_memory_tasks": total,
        "p8_memory_baseline_tasks": first,
        "p8_memory_per_s": round((total - first) / elapsed, 1),
        "p8_spans_expected": 2 * total,
        "p8_spans_stored": stored,
    }
    for kind in kinds:
        figures[f"p8_{kind}_rss_mib"] = [round(early[kind], 1), round(late[kind], 1)]
        figures[f"p8_{kind}_rss_growth_pct"] = round(growth[kind], 2)
    figures["p8_attach_rss_growth_pct"] = round(max(growth.values()), 2)
    return figures
