"""`manage.py bench`: Flowscope's cost against plain Celery, and how fast its collector stores.

It measures on the configured kinds of broker and database, on a database and a Redis
database of its own, and on RabbitMQ a vhost of its own (tooling.own_stores): this command makes
them, runs the measurements in a child process on them, and removes them after, so a user's
tables, keys and queues are never touched. The broker is the engine's choice (CELERY_BROKER_URL),
or BROKER=rabbitmq / BROKER=redis (tooling.brokers); the figures say which.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import django
import redis as redis_py
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from flows.core.brokers import broker_kind
from flows.patterns import check_catalog
from tooling.bench import alerts, attach, flower, graph_day, live, memory, pages, patterns, prune, spans, throughput, trace_search
from tooling.bench import processes as bench_processes
from tooling.brokers import BrokerNotReady, ready_url, server_version
from tooling.own_stores import inside, run_on_own_stores, shown
from tracing import setup as tracing_setup
from tracing.redis import get_redis


def production_settings() -> dict[str, str]:
    """The environment the measured processes run in: DEBUG off, as a deployment runs them (with
    DEBUG on, Django logs every query a handler makes and Celery warns of the memory it holds),
    with a key of the run's own. The web server is reached over plain http on 127.0.0.1 only,
    so the https redirect and secure-only cookies (the rest of the production hardening) are off."""
    return {
        "DEBUG": "0",
        "SECRET_KEY": f"bench-{secrets.token_urlsafe(40)}",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "0",
        "SESSION_COOKIE_SECURE": "0",
        "CSRF_COOKIE_SECURE": "0",
        "SECURE_HSTS_SECONDS": "0",
    }


MEASUREMENTS = ("p1", "flower", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10", "p11", "p12")


class Command(BaseCommand):
    help = "Measure Flowscope against bare Celery on this machine's broker and database (in a database, Redis database and RabbitMQ vhost of the bench's own; BROKER=rabbitmq for RabbitMQ); print a table, optionally --json PATH."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quick", action="store_true", help="small runs, under two minutes")
        parser.add_argument("--json", dest="json_path", default="", help="also write the figures here")
        parser.add_argument("--concurrency", type=int, default=2, help="pool processes of each measured worker")
        parser.add_argument("--only", default="", help=f"comma-separated: {', '.join(MEASUREMENTS)}")

    def handle(self, *args: Any, **options: Any) -> None:
        only = {p.strip() for p in options["only"].split(",") if p.strip()}
        unknown = only - set(MEASUREMENTS)
        if unknown:
            raise CommandError(f"unknown measurement(s) {sorted(unknown)}; choose from {', '.join(MEASUREMENTS)}")
        if options["concurrency"] < 1:
            raise CommandError(f"--concurrency {options['concurrency']}: give at least 1")
        if options["json_path"] and not Path(options["json_path"]).resolve().parent.is_dir():
            raise CommandError(f"--json {options['json_path']}: the directory {Path(options['json_path']).parent} does not exist")
        if not inside():
            self._on_own_stores(options)
            return
        import tooling.bench.catalog  # noqa: F401 - the benchmark's handlers, in this process too

        check_catalog()
        try:
            self._measure(only, options)
        except KeyboardInterrupt:
            raise CommandError("interrupted: the bench's processes are stopped") from None

    def _on_own_stores(self, options: dict[str, Any]) -> None:
        """This run again, in a child process on a database and a Redis of its own."""
        try:
            get_redis().ping()
        except redis_py.RedisError as exc:
            raise CommandError(f"Redis at {shown(settings.REDIS_URL)} did not answer ({exc}); the bench needs it for its counts and spans (and as the broker on Redis)") from exc
        try:
            ready_url()
        except BrokerNotReady as exc:
            raise CommandError(str(exc)) from None
        args = ["--concurrency", str(options["concurrency"])]
        args += ["--quick"] if options["quick"] else []
        args += ["--only", options["only"]] if options["only"] else []
        args += ["--json", str(Path(options["json_path"]).resolve())] if options["json_path"] else []
        try:
            run_on_own_stores("bench", args, kind="bench", out=self.stdout.write, env=production_settings())
        except KeyboardInterrupt:
            raise CommandError("interrupted: the bench's processes are stopped, its database and Redis removed") from None
        except RuntimeError as exc:  # its processes are stopped and its stores removed by now
            raise CommandError(f"the bench failed: {exc}; its database and Redis are removed") from exc

    def _measure(self, only: set[str], options: dict[str, Any]) -> None:
        call_command("migrate", interactive=False, verbosity=0)  # the run's own database starts empty
        quick = options["quick"]
        log_dir = Path(settings.VAR_DIR) / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        figures: dict[str, Any] = {"broker": broker_kind(), "debug": settings.DEBUG, "quick": quick, "machine": self._machine()}
        self.stdout.write(f"measuring on {figures['broker']} ({figures['machine']['broker']})")
        started = time.monotonic()

        if not only or "p1" in only:
            with self._timed(figures, "p1"):
                figures.update(self._patterns(quick=quick, concurrency=options["concurrency"], log_dir=log_dir))
        if not only or "flower" in only:
            with self._timed(figures, "flower"):
                if flower.installed():
                    figures.update(flower.flower_ratio(1_500 if quick else 6_000, 1 if quick else 2, concurrency=options["concurrency"], log_dir=log_dir, progress=self._progress))
                else:
                    self._skip(figures, "p1_flower_ratio", flower.NOT_INSTALLED)
        if not only or "p2" in only:
            with self._timed(figures, "p2"):
                n = 20_000 if quick else 200_000
                figures.update({"p2_spans": n, "p2_spans_per_s": round(spans.collector_rate(n, self._progress), 1)})
        if not only or "p3" in only:
            with self._timed(figures, "p3"):
                if live.installed():
                    figures.update(live.live_latency(4 if quick else 20, 1_000, concurrency=options["concurrency"], log_dir=log_dir, progress=self._progress))
                else:
                    self._skip(figures, "p3_live_p95_ms", live.NOT_INSTALLED)
        if not only or "p6" in only:
            with self._timed(figures, "p6"):
                figures.update(patterns.requeue_rates(2_000 if quick else 20_000, 200 if quick else 1_000, 100.0 if quick else 500.0, self._progress))
        if not only or "p4" in only:
            with self._timed(figures, "p4"):
                figures.update(pages.dead_letter_page_ms(100_000 if quick else 1_000_000, self._progress))
        if not only or "p5" in only:
            with self._timed(figures, "p5"):
                figures.update(pages.trace_page_ms(20_000, self._progress))
        if not only or "p9" in only:
            with self._timed(figures, "p9"):
                figures.update(trace_search.trace_search_p95_ms(20_000 if quick else 2_000_000, self._progress, runs=5 if quick else 10))
        if not only or "p10" in only:
            with self._timed(figures, "p10"):
                figures.update(alerts.alert_latency(5 if quick else 20, 100.0 if quick else 300.0, concurrency=options["concurrency"], log_dir=log_dir, progress=self._progress))
        if not only or "p11" in only:
            with self._timed(figures, "p11"):
                figures.update(prune.prune_day_ms(100_000 if quick else prune.full_day(), self._progress))
        if not only or "p12" in only:
            with self._timed(figures, "p12"):
                figures.update(graph_day.day_window_ms(6 if quick else 60, self._progress, runs=3))
        if not only or "p7" in only:
            with self._timed(figures, "p7"):
                if memory.installed():
                    figures.update(memory.rss_growth(6_000 if quick else 300_000, 1_000 if quick else 10_000, concurrency=options["concurrency"], log_dir=log_dir, progress=self._progress))
                else:
                    self._skip(figures, "p7_rss_growth_pct", memory.NOT_INSTALLED)
        if not only or "p8" in only:
            with self._timed(figures, "p8"):
                if attach.installed():
                    sizes = (1_500, 2, 6_000, 1_000) if quick else (6_000, 5, 300_000, 10_000)  # per round, rounds; memory run, its warm-up
                    figures.update(attach.attach_ratio(*sizes, concurrency=options["concurrency"], log_dir=log_dir, progress=self._progress))
                else:
                    self._skip(figures, "p8_attach_ratio", attach.NOT_INSTALLED)

        figures["seconds"] = round(time.monotonic() - started, 1)
        self._progress("")
        self._table(figures)
        if options["json_path"]:
            Path(options["json_path"]).write_text(json.dumps(figures, indent=2) + "\n")
            self.stdout.write(f"figures written to {options['json_path']}")

    def _patterns(self, *, quick: bool, concurrency: int, log_dir: Path) -> dict[str, Any]:
        """Every pattern on real workers against bare Celery, the collector running throughout."""
        # Several short rounds, the side that goes first alternating, the median of back-to-back
        # ratios: this machine's speed drifts by a quarter between minutes, so one run of each
        # side would measure the drift (throughput.paired_rates).
        per_round, rounds = (1_000, 3) if quick else (3_000, 6)
        n = 1_500 if quick else 6_000  # the other patterns' runs
        report = self._progress
        collector = bench_processes.start_collector(log_dir=log_dir)
        try:
            collector_cpu = bench_processes.cpu_seconds(collector.pid)
            pairs = throughput.paired_rates(per_round, rounds, concurrency=concurrency, log_dir=log_dir, progress=report)
            # The collector's CPU for the traced rounds' spans, taken once it has stored them all:
            # with the worker's, the whole cost of a hop on this machine.
            tracing_setup.flush()  # the send spans this process made, out of its batch processor first
            spans.wait_sink_empty(report, what="p1 collector")
            collector_cpu_ms = (bench_processes.cpu_seconds(collector.pid) - collector_cpu) / (per_round * rounds) * 1000
            bare, traced = [b for b, _ in pairs], [t for _, t in pairs]
            ratios = [x.rate / y.rate for x, y in zip(traced, bare)]
            cpu_ratios = [y.cpu_ms / x.cpu_ms for x, y in zip(traced, bare)]
            bare3, fanned = patterns.fanout_rates(n // 3, concurrency=concurrency, log_dir=log_dir, progress=report)
            idempotent = patterns.idempotent_rate(n, concurrency=concurrency, log_dir=log_dir, progress=report)
            bare_after = throughput.bare_rate(n, concurrency=concurrency, log_dir=log_dir, progress=report).rate
            figures: dict[str, Any] = {
                "bare_celery_setup": throughput.bare_setup(concurrency),
                "p1_messages": per_round,
                "p1_rounds": rounds,
                "bare_celery_per_s": round(statistics.median(d.rate for d in bare), 1),
                "flowscope_fire_and_forget_per_s": round(statistics.median(d.rate for d in traced), 1),
                "p1_fire_and_forget_ratio": round(statistics.median(ratios), 3),
                "p1_round_ratios": [round(r, 3) for r in ratios],
                # The same comparison in the worker's CPU a message (bare / Flowscope): what the
                # engine costs, moved less by other load on the machine than the rates are.
                "bare_celery_cpu_ms": round(statistics.median(d.cpu_ms for d in bare), 3),
                "flowscope_fire_and_forget_cpu_ms": round(statistics.median(d.cpu_ms for d in traced), 3),
                "p1_fire_and_forget_cpu_ratio": round(statistics.median(cpu_ratios), 3),
                "p1_round_cpu_ratios": [round(r, 3) for r in cpu_ratios],
                "p1_collector_cpu_ms": round(collector_cpu_ms, 3),
                # bare worker CPU a message / (Flowscope's worker CPU + the collector's) a message
                "p1_hop_cpu_ratio_with_collector": round(statistics.median(d.cpu_ms for d in bare) / (statistics.median(d.cpu_ms for d in traced) + collector_cpu_ms), 3),
                "bare_3_queues_per_s": round(bare3, 1),
                "flowscope_fanout_deliveries_per_s": round(fanned, 1),
                "p1_fanout_ratio": round(fanned / bare3, 3),
                "flowscope_idempotent_per_s": round(idempotent, 1),
                "p1_idempotent_ratio": round(idempotent / bare_after, 3),
            }
            figures.update(patterns.request_reply(200 if quick else 1_000, concurrency=concurrency, log_dir=log_dir, progress=report))
            figures["saga_per_s"] = round(patterns.saga_rate(60 if quick else 400, concurrency=concurrency, log_dir=log_dir, progress=report), 1)
            return figures
        finally:
            bench_processes.stop(collector)

    @contextmanager
    def _timed(self, figures: dict[str, Any], name: str) -> Iterator[None]:
        """How long each measurement took, beside its figures: the runs have a time budget."""
        started = time.monotonic()
        yield
        figures.setdefault("seconds_by_measurement", {})[name] = round(time.monotonic() - started, 1)

    def _skip(self, figures: dict[str, Any], name: str, why: str) -> None:
        """One measurement left out (a bench extra missing); the others still run."""
        self.stdout.write(f"{name} skipped: {why}")
        figures.setdefault("skipped", {})[name] = why

    def _progress(self, text: str) -> None:
        sys.stderr.write(f"\r\033[K{text}" if text else "\r\033[K")
        sys.stderr.flush()

    def _table(self, figures: dict[str, Any]) -> None:
        width = max(len(k) for k in figures)
        for name, value in figures.items():
            if name != "machine":
                self.stdout.write(f"{name:<{width}}  {value}")
        for name, value in figures["machine"].items():
            self.stdout.write(f"{'machine.' + name:<{width}}  {value}")

    def _machine(self) -> dict[str, Any]:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            commit = ""
        try:
            redis_version = get_redis().info("server").get("redis_version", "")
        except redis_py.RedisError:
            redis_version = "unreachable"
        return {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "django": django.get_version(),
            "redis": redis_version,
            "broker": server_version(),
            "database": f"{connection.vendor} {connection.Database.sqlite_version if connection.vendor == 'sqlite' else connection.pg_version}",
            # Where the run wrote: its own database and Redis, removed after it (tooling.own_stores).
            "run_database": str(connection.settings_dict["NAME"]),
            "run_redis": shown(settings.REDIS_URL),
            "run_broker": shown(settings.CELERY_BROKER_URL),
            "commit": commit or "unknown",
        }
