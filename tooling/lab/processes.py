"""The processes a lab run starts: four downstream services, a worker per service, the span
collector, under the one supervisor (tooling/processes.py): each in a process group of its own,
so stopping one stops its pool children too; the lab stops exactly these, on success, error or
Ctrl-C."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from django.conf import settings

from tooling.database import database_url_for_children
from tooling.lab import calls, scenarios
from tooling.lab.effects import SERVICES
from tooling.processes import START_TIMEOUT, Check, LogLine, ProcessError, Ready, Supervisor


class LabProcessError(ProcessError):
    """A process the lab needs did not start or did not answer."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LabProcesses:
    def __init__(self, *, log_dir: Path, base_ms: float = scenarios.BASE_MS, capacity: int = scenarios.CAPACITY) -> None:
        self.log_dir = log_dir
        self.base_ms = base_ms
        self.capacity = capacity
        self.addresses = {service: ("127.0.0.1", free_port()) for service in SERVICES}
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url_for_children(),
            "REDIS_URL": settings.REDIS_URL,
            "FLOWS_MODULES": ",".join([*settings.FLOWS_MODULES, "tooling.lab.catalog"]),
            calls.ADDRESSES_ENV: ",".join(f"{s}={h}:{p}" for s, (h, p) in self.addresses.items()),
            calls.TIMEOUT_ENV: str(scenarios.TIMEOUT_S),
            "PYTHONUNBUFFERED": "1",
        }
        self.supervisor = Supervisor(log_dir=log_dir, env=self.env, cwd=settings.BASE_DIR, log_prefix="lab-")

    @property
    def children(self) -> dict[str, subprocess.Popen[bytes]]:
        return {name: child.popen for name, child in self.supervisor.children.items()}

    # -- starting --
    def start_all(self, timeout: float = START_TIMEOUT) -> None:
        for service in SERVICES:
            self.start_service(service, wait=False)
        self.supervisor.start("collector", [sys.executable, "manage.py", "collector"])
        for service in SERVICES:
            self.supervisor.start(
                f"worker-{service}",
                [
                    sys.executable,
                    "manage.py",
                    "worker",
                    "--queues",
                    scenarios.queue_name(service),
                    "--pool",
                    "threads",
                    "--concurrency",
                    str(scenarios.ASYNC_CONCURRENCY),
                    "--name",
                    f"lab-{service}-{os.getpid()}@%h",
                    "--loglevel",
                    "INFO",
                ],
            )
        signs: dict[str, Ready] = {service: self._health(service) for service in SERVICES}
        signs.update({name: LogLine(" ready") for name in self.supervisor.children if name.startswith("worker-") or name == "collector"})
        self._wait(signs, timeout)

    def start_service(self, service: str, *, wait: bool = True) -> None:
        _, port = self.addresses[service]
        command = [sys.executable, "-m", "tooling.lab.downstream", "--service", service, "--port", str(port), "--base-ms", str(self.base_ms), "--capacity", str(self.capacity)]
        self.supervisor.start(service, command)
        if wait:
            self._wait({service: self._health(service)}, START_TIMEOUT)

    def wait_healthy(self, service: str, deadline: float) -> None:
        self._wait({service: self._health(service)}, max(0.0, deadline - time.monotonic()))

    def _health(self, service: str) -> Check:
        return Check(f"{service} answering GET /health on port {self.addresses[service][1]}", lambda: self.healthy(service))

    def _wait(self, signs: Mapping[str, Ready], timeout: float) -> None:
        try:
            self.supervisor.wait_ready(signs, timeout=timeout)
        except ProcessError as failed:
            raise LabProcessError(str(failed)) from failed

    def healthy(self, service: str) -> bool:
        connection = http.client.HTTPConnection(*self.addresses[service], timeout=1)
        try:
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def check_running(self) -> None:
        try:
            self.supervisor.check_running()
        except ProcessError as gone:
            raise LabProcessError(str(gone)) from gone

    # -- faults --
    def set_fault(self, service: str, *, slow: float = 1.0, fail_rate: float = 0.0) -> None:
        connection = http.client.HTTPConnection(*self.addresses[service], timeout=5)
        try:
            connection.request("PUT", "/fault", body=f'{{"slow": {slow}, "fail_rate": {fail_rate}}}', headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise LabProcessError(f"{service} refused the fault settings: {response.status}")

    def take_down(self, service: str) -> None:
        """Kill the service outright, as a crash would: in-flight requests get a reset."""
        self.supervisor.kill(service)

    def bring_back(self, service: str) -> None:
        self.start_service(service, wait=True)

    # -- stopping --
    def stop_all(self) -> None:
        """Stop every process this lab started, and only those."""
        self.supervisor.stop()
