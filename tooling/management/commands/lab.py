"""`manage.py lab`: the same order workload as a synchronous chain and through Flowscope, under
four scenarios; a table on stdout, the figures as JSON and as the console's Lab page.

The run itself is a child process on a database and a Redis database of the lab's own, and on
RabbitMQ (CELERY_BROKER_URL an AMQP URL, or BROKER=rabbitmq) a vhost of its own
(tooling.own_stores), removed after it: its dead letters, spans, sagas and queues never reach
the user's. The one thing written where the user's data is, on purpose, is the LabRun row with
the figures, which the console's Lab page shows.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import django
import redis as redis_py
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.utils import timezone

from flows.core.brokers import broker_kind
from tooling.brokers import BrokerNotReady, ready_url
from tooling.lab import scenarios
from tooling.lab.models import LabRun
from tooling.own_stores import inside, run_on_own_stores, shown
from tracing.redis import get_redis

COLUMNS = (
    ("completed_per_s", "done/s"),
    ("e2e_p50_ms", "e2e p50"),
    ("e2e_p99_ms", "e2e p99"),
    ("caller_p99_ms", "caller p99"),
    ("caller_failures", "caller fail"),
    ("completed", "completed"),
    ("failed", "failed"),
    ("lost", "lost"),
    ("partial", "partial"),
    ("recovery_s", "recovery s"),
    ("backpressure_activations", "backpr."),
)


class Command(BaseCommand):
    help = "Run the pattern lab: synchronous HTTP chain against Flowscope fan-out, four scenarios; print a table, store the run for the Lab page."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quick", action="store_true", help="a smoke run of every scenario, about a minute")
        parser.add_argument("--json", dest="json_path", default="", help="also write the figures to this file")
        parser.add_argument("--only", default="", help=f"comma-separated scenarios: {', '.join(scenarios.SCENARIO_NAMES)}")
        parser.add_argument("--scale", type=float, default=1.0, help="each stretch of the load this many times as long, at the same rate (the tests' smoke run: 0.5)")

    def handle(self, *args: Any, **options: Any) -> None:
        only = self._scenarios(options["only"])
        json_path = self._json_path(options["json_path"])
        scale = options["scale"]
        if not 0 < scale <= 10:
            raise CommandError(f"--scale {scale:g}: give a factor above 0, at most 10")
        self._check_stores()
        if inside():
            self._run(only, quick=options["quick"], scale=scale, json_path=json_path)
            return
        call_command("migrate", "lab", interactive=False, verbosity=0)  # LabRun's table, on a fresh clone
        args = ["--quick"] if options["quick"] else []
        args += ["--only", ",".join(only), "--scale", repr(scale)]
        with tempfile.TemporaryDirectory(prefix="flowscope-lab-figures-") as tmp:
            figures_path = Path(tmp) / "lab.json"
            try:
                run_on_own_stores("lab", [*args, "--json", str(figures_path)], kind="lab", out=self.stdout.write)
            except KeyboardInterrupt:
                raise CommandError("interrupted: the lab's processes are stopped, its database and Redis removed, nothing was stored") from None
            except RuntimeError as exc:  # its processes are stopped and its stores removed by now
                raise CommandError(f"the lab failed: {exc}; its database and Redis are removed, nothing was stored") from exc
            figures = json.loads(figures_path.read_text())
        # The one write on the configured database, on purpose: the console's Lab page shows the
        # last run from the user's database. Everything else the run wrote went with its own.
        LabRun.objects.create(started_at=datetime.fromisoformat(figures["started_at"]), seconds=figures["seconds"], quick=figures["quick"], figures=figures)
        self.stdout.write(f"lab took {figures['seconds']:.0f} s; shown on the console's Lab page (/lab/)")
        if json_path:
            json_path.write_text(json.dumps(figures, indent=2) + "\n")
            self.stdout.write(f"figures written to {json_path}")

    def _run(self, only: list[str], *, quick: bool, scale: float, json_path: Path | None) -> None:
        """The run itself, in the child process on the lab's own database and Redis."""
        import tooling.lab.catalog  # noqa: F401 - the asynchronous style's handlers, in this process too
        from flows.patterns import check_catalog
        from tooling.lab.runner import run_lab

        check_catalog()
        call_command("migrate", interactive=False, verbosity=0)  # the run's own database starts empty
        size = (scenarios.QUICK if quick else scenarios.FULL).scaled(scale)
        started_at, started = timezone.now(), time.monotonic()
        previous = signal.signal(signal.SIGTERM, _interrupt)  # stopped like Ctrl-C: the finally blocks stop our processes
        try:
            results = run_lab(size=size, only=only, log_dir=Path(settings.VAR_DIR) / "log", progress=self._progress)
        except KeyboardInterrupt:
            raise CommandError("interrupted: the lab's processes are stopped, nothing was stored") from None
        except (RuntimeError, OSError, redis_py.RedisError) as exc:  # its processes are stopped by now
            raise CommandError(f"the lab failed: {type(exc).__name__}: {exc}") from exc
        finally:
            signal.signal(signal.SIGTERM, previous)
        seconds = round(time.monotonic() - started, 1)
        figures = {"quick": quick, "seconds": seconds, "started_at": started_at.isoformat(), "setup": self._setup(size), "machine": self._machine(), "scenarios": results}
        self.stdout.write(f"broker: {figures['machine']['broker']}")
        self._table(results)
        if json_path:
            json_path.write_text(json.dumps(figures, indent=2) + "\n")

    @staticmethod
    def _scenarios(text: str) -> list[str]:
        chosen = [s.strip() for s in text.split(",") if s.strip()]
        unknown = sorted(set(chosen) - set(scenarios.SCENARIO_NAMES))
        if unknown:
            raise CommandError(f"unknown scenario(s) {unknown}; choose from {', '.join(scenarios.SCENARIO_NAMES)}")
        return chosen or list(scenarios.SCENARIO_NAMES)

    @staticmethod
    def _check_stores() -> None:
        try:
            get_redis().ping()
        except redis_py.RedisError as exc:
            raise CommandError(f"Redis at {shown(settings.REDIS_URL)} did not answer ({exc}); the lab needs it for its counts (and as the broker on Redis)") from exc
        try:
            ready_url()
        except BrokerNotReady as exc:
            raise CommandError(str(exc)) from None

    @staticmethod
    def _json_path(text: str) -> Path | None:
        if not text:
            return None
        path = Path(text)
        if path.is_dir():
            raise CommandError(f"--json {text}: that is a directory; name a file")
        if not path.parent.is_dir():
            raise CommandError(f"--json {text}: the directory {path.parent} does not exist")
        return path

    def _progress(self, text: str) -> None:
        sys.stderr.write(f"\r\033[K{text}" if text else "\r\033[K")
        sys.stderr.flush()

    def _table(self, results: dict[str, Any]) -> None:
        header = f"{'scenario':<10} {'style':<6} " + " ".join(f"{title:>11}" for _, title in COLUMNS)
        self.stdout.write(header)
        self.stdout.write("-" * len(header))
        for name, scenario in results.items():
            for style in scenarios.STYLES:
                row = scenario[style]
                cells = " ".join(f"{_cell(row.get(key)):>11}" for key, _ in COLUMNS)
                self.stdout.write(f"{name:<10} {style:<6} {cells}")

    @staticmethod
    def _setup(size: scenarios.Size) -> dict[str, Any]:
        return {
            "rate_per_s": size.rate,
            "callers": scenarios.CALLERS,
            "async_consumers_per_service": scenarios.ASYNC_CONCURRENCY,
            "service_ms": scenarios.BASE_MS,
            "service_capacity": scenarios.CAPACITY,
            "timeout_s": scenarios.TIMEOUT_S,
            "sync_retries": scenarios.SYNC_RETRIES,
            "faulty_service": scenarios.FAULTY_SERVICE,
            "steady_s": size.steady_s,
            "before_s": size.before_s,
            "fault_s": size.fault_s,
            "outage_s": size.outage_s,
            "after_s": size.after_s,
        }

    @staticmethod
    def _machine() -> dict[str, Any]:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            commit = ""
        return {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "django": django.get_version(),
            "database": connection.vendor,
            "broker": broker_kind(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "commit": commit or "unknown",
        }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)
