"""`make demo`: Redis, database, admin user, web server, workers and load, in one command.

The broker is Redis unless CELERY_BROKER_URL is an AMQP URL or BROKER=rabbitmq asks for
RabbitMQ (tooling.brokers): then a RabbitMQ that answers (the local one started if none does),
its URL handed to every process the demo starts. The demo's queues live in the URL's vhost.

Beside Flowscope's own flows runs a shop written with nothing but Celery (examples.attached_shop),
its worker and producer started through flowscope-agent with an agent token made here: on the
same broker in queues of its own, none of the console's settings in its environment.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count
from django.utils import timezone

from console.models import ApiToken, Role
from examples import attached_shop
from examples.demo import faults
from flows.consume.stats import processed_totals
from flows.core.brokers import RABBITMQ, kind_of
from flows.models import DeadLetter, SagaInstance
from tooling.brokers import BrokerNotReady, chosen_url, ready_url
from tooling.devredis import ensure_redis
from tooling.own_stores import shown
from tooling.processes import Check, FailedToStart, LogLine, Supervisor, http_answers, port_taken
from tooling.processes import stop as stop_processes
from tooling.rabbitmq import answers
from tracing.models import Span
from tracing.sink import sink_status

HOST = "127.0.0.1"
MANAGE = [sys.executable, "manage.py"]
WORKERS = {
    # name: (queues, concurrency, extra flags)
    "worker-edge": ("inventory,billing,shipping,notifications,audit,flows.control", 2, ["--beat"]),
    "worker-core": ("payments,legacy", 2, []),
    # Two processes on one queue: the competing consumers the console shows the spread of.
    "worker-invoices-1": ("invoices", 1, []),
    "worker-invoices-2": ("invoices", 1, []),
}
AGENT = Path(sys.executable).parent / "flowscope-agent"
SHOP_TOKEN_NAME = "demo: attached_shop"
SHOP_PROCESSES = ("shop-producer", "shop-worker")
# Blank in the shop's environment: an empty DJANGO_SETTINGS_MODULE keeps Celery's Django fix-up
# off, an empty CELERY_BROKER_URL lets the shop's own broker setting count (Celery reads it first).
NOT_THE_SHOPS = ("DJANGO_SETTINGS_MODULE", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL", "FLOWS_MODULES", "FLOWSCOPE_EXTRA_APPS")


class Command(BaseCommand):
    help = "Run the whole demo locally until Ctrl-C (or --duration seconds)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--rate", type=float, default=15.0, help="flows started per second by the load generator")
        parser.add_argument("--duration", type=float, default=float(os.environ.get("DEMO_DURATION", "0")), help="stop after this many seconds; 0: until Ctrl-C")

    def handle(self, *args: Any, **options: Any) -> None:
        port = options["port"]
        if not 0 < port < 65536:
            raise CommandError(f"--port {port} is not a TCP port")
        # Before anything starts: a web server that cannot bind dies quietly in its log, and a
        # new user would see the demo "running" on a port another program answers.
        if port_taken(HOST, port):
            other = next((p for p in range(port + 1, min(port + 100, 65536)) if not port_taken(HOST, p)), 8001)
            raise CommandError(f"port {port} on {HOST} is taken by another program (another demo?); pick another: PORT={other} make demo (or manage.py demo --port {other})")
        if not AGENT.exists():
            raise CommandError(f"flowscope-agent is not installed beside {sys.executable}: make setup installs it (pip install -e .)")
        broker_url = self._broker()  # before anything starts: no RabbitMQ is a one-line error
        var = settings.VAR_DIR
        configured_redis = settings.REDIS_URL
        redis_url, redis_server = ensure_redis(configured_redis, directory=var / "redis")
        settings.REDIS_URL = redis_url  # this process talks to it too (faults, summary)
        self.stdout.write(f"redis: {redis_url}" + (" (started for the demo)" if redis_server else " (already running)"))
        if broker_url == configured_redis:
            broker_url = redis_url  # the broker is that Redis, wherever the demo found or started it
        if kind_of(broker_url) != RABBITMQ:
            self.stdout.write(f"broker: redis at {shown(broker_url)}")
        supervisor: Supervisor | None = None
        signal.signal(signal.SIGTERM, _interrupt)  # while starting, stopped as by Ctrl-C: the finally block stops what started
        try:
            call_command("migrate", interactive=False, verbosity=0)
            username, password = self._admin()
            faults.clear_faults()
            for consumer, fault in faults.DEMO_PROFILE.items():
                faults.set_fault(consumer, fault)
            before = Counter(processed_totals())

            env = {**os.environ, "REDIS_URL": redis_url, "CELERY_BROKER_URL": broker_url, "DEBUG": os.environ.get("DEBUG", "1"), "PYTHONUNBUFFERED": "1"}
            url = f"http://{HOST}:{port}/"
            supervisor = Supervisor(env=env, log_dir=var / "log", cwd=settings.BASE_DIR)
            self.stdout.write("waiting for the web server...")
            # The web server first, alone: one that cannot start (the port taken since the check
            # above, a broken setting) is reported in seconds, before the workers and the attached
            # shop start only to be stopped again. It is ready when it answers its health check:
            # the port alone could be answered by another program that took it.
            web = Check(f"{url}healthz answering", lambda: http_answers(f"{url}healthz"))
            try:
                supervisor.start("web", [*MANAGE, "runserver", "--noreload", f"{HOST}:{port}"], ready=web)
            except FailedToStart as failed:
                raise CommandError(f"the demo could not start: {failed}") from None
            supervisor.start("collector", [*MANAGE, "collector"])
            for name, (queues, concurrency, extra) in WORKERS.items():
                supervisor.start(name, [*MANAGE, "worker", "--queues", queues, "--concurrency", str(concurrency), "--name", f"{name}@%h", *extra])
            shop_env = self._shop_env(broker_url=broker_url, redis_url=redis_url, console_url=url.rstrip("/"))
            shop_worker = ["-m", "celery", "-A", "examples.attached_shop.shop", "worker", "-l", "info", "-Q", ",".join(attached_shop.QUEUES), "-c", "1", "-n", "attached-shop@%h"]
            supervisor.start("shop-worker", [str(AGENT), sys.executable, *shop_worker], env=shop_env)
            self.stdout.write("waiting for the collector and the workers...")
            try:
                supervisor.wait_ready({"collector": LogLine(r" ready$"), **{name: LogLine(r" ready\.$") for name in [*WORKERS, "shop-worker"]}})
            except FailedToStart as failed:
                raise CommandError(f"the demo could not start: {failed}") from None
            # The load starts once something consumes it.
            supervisor.start("loadgen", [*MANAGE, "loadgen", "--rate", str(options["rate"])], log=False)
            supervisor.start("shop-producer", [str(AGENT), sys.executable, "-m", "examples.attached_shop.producer", "--rate", "2"], env=shop_env)

            self.stdout.write(self.style.SUCCESS(f"Flowscope demo running at {url}"))
            self.stdout.write(f"  login: {username} / {password}")
            self.stdout.write(f"  attached: {attached_shop.APP}, plain Celery through flowscope-agent (queues {', '.join(attached_shop.QUEUES)})")
            self.stdout.write(f"  logs:  {var / 'log'}/   faults: python manage.py faults --help   stop: Ctrl-C")
            self._wait(supervisor, options["duration"])
        except KeyboardInterrupt:
            raise CommandError("interrupted while starting; what had started is stopped") from None
        finally:
            if supervisor is not None:
                self.stdout.write("stopping the demo's processes...")
                # The attached shop first: its agent calls the web server all the time, and a
                # request in flight when the web server is told to stop keeps it from exiting
                # (runserver's daphne waits for the request's thread for ever: the demo test saw it).
                shop = [supervisor.children.pop(name) for name in SHOP_PROCESSES if name in supervisor.children]
                if shop:
                    self.stdout.write(f"  {stop_processes(shop)}")
                self.stdout.write(f"  {supervisor.stop()}")
            try:
                self._summary(before if "before" in locals() else Counter())
            finally:
                if redis_server is not None:
                    redis_server.stop()

    def _broker(self) -> str:
        """The broker's URL, RabbitMQ started if it is the local one and down; CommandError when
        none answers. Says which broker the demo runs on."""
        try:
            url = chosen_url()
            if kind_of(url) != RABBITMQ:
                return url
            was_up = answers(url)
            ready_url()
        except BrokerNotReady as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"broker: rabbitmq at {shown(url)}" + (" (already running)" if was_up else " (started for the demo; left running)"))
        return url

    def _shop_env(self, *, broker_url: str, redis_url: str, console_url: str) -> dict[str, str]:
        """The attached shop's environment: its broker and result store, where its agent reports,
        with a token of the agent role (this run's; the previous runs' are revoked)."""
        ApiToken.objects.filter(name=SHOP_TOKEN_NAME, revoked_at__isnull=True).update(revoked_at=timezone.now())
        _, secret = ApiToken.issue(name=SHOP_TOKEN_NAME, role=Role.AGENT, created_by="manage.py demo")
        return {
            **dict.fromkeys(NOT_THE_SHOPS, ""),
            "SHOP_BROKER_URL": broker_url,
            "SHOP_RESULT_BACKEND": redis_url,  # a chord's parts meet in the demo's Redis, on either broker
            "FLOWSCOPE_URL": console_url,
            "FLOWSCOPE_TOKEN": secret,
        }

    def _admin(self) -> tuple[str, str]:
        username = os.environ.get("FLOWSCOPE_ADMIN_USER", "admin")
        password = os.environ.get("FLOWSCOPE_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        user, _ = get_user_model().objects.get_or_create(username=username, defaults={"email": f"{username}@localhost"})
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        return username, password

    def _wait(self, supervisor: Supervisor, duration: float) -> None:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        waited = 0.0
        while not stop.wait(0.5):
            waited += 0.5
            crashed = [supervisor.children[n].describe(f"exited with {rc}") for n, rc in supervisor.exited().items() if n != "loadgen" or rc != 0]
            if crashed:
                raise CommandError("a demo process stopped by itself: " + "\n".join(crashed))
            if duration and waited >= duration:
                return

    def _summary(self, before: Counter[tuple[str, str, str]]) -> None:
        totals = Counter(processed_totals())
        totals.subtract(before)
        by_pattern: dict[str, Counter[str]] = {}
        for (pattern, _consumer, outcome), n in totals.items():
            if n:
                by_pattern.setdefault(pattern, Counter())[outcome] += n
        self.stdout.write("processed this run, per pattern (outcome: deliveries):")
        for pattern, outcomes in sorted(by_pattern.items()):
            self.stdout.write(f"  {pattern:20} " + "  ".join(f"{k}={v}" for k, v in sorted(outcomes.items())))
        dead = dict(DeadLetter.objects.values_list("state").annotate(n=Count("id")).order_by())
        sagas = dict(SagaInstance.objects.values_list("state").annotate(n=Count("id")).order_by())
        self.stdout.write(f"dead letters (all runs): {dead}")
        self.stdout.write(f"sagas by state (all runs): {sagas}")
        shop_dead = dict(DeadLetter.objects.filter(app=attached_shop.APP).values_list("state").annotate(n=Count("id")).order_by())
        self.stdout.write(f"attached app {attached_shop.APP} (all runs): spans stored {Span.objects.filter(service=attached_shop.APP).count()}; dead letters {shop_dead}")
        spans = sink_status()
        self.stdout.write(f"spans stored (all runs): {Span.objects.count()}; waiting in the sink: {spans['pending']}; dropped: {spans['dropped']}")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt
