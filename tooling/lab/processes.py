"""The processes a lab run starts: four downstream services, a worker per service, the span
collector. Each in a process group of its own, so stopping one stops its pool children too;
the lab stops exactly these, on success, error or Ctrl-C."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

from tooling.database import database_url_for_children
from tooling.lab import calls, scenarios
from tooling.lab.effects import SERVICES


class LabProcessError(RuntimeError):
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
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._log_offsets: dict[str, int] = {}  # logs are appended to: look for markers past this
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url_for_children(),
            "REDIS_URL": settings.REDIS_URL,
            "FLOWS_MODULES": ",".join([*settings.FLOWS_MODULES, "tooling.lab.catalog"]),
            calls.ADDRESSES_ENV: ",".join(f"{s}={h}:{p}" for s, (h, p) in self.addresses.items()),
            calls.TIMEOUT_ENV: str(scenarios.TIMEOUT_S),
            "PYTHONUNBUFFERED": "1",
        }

    # -- starting --
    def _start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"lab-{name}.log"
        self._log_offsets[name] = path.stat().st_size if path.exists() else 0
        with open(path, "ab") as log:
            process = subprocess.Popen(command, cwd=settings.BASE_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.children[name] = process
        return process

    def start_all(self, timeout: float = 90.0) -> None:
        for service in SERVICES:
            self.start_service(service, wait=False)
        self._start("collector", [sys.executable, "manage.py", "collector"])
        for service in SERVICES:
            self._start(
                f"worker-{service}",
                [
                    sys.executable,
                    "manage.py",
                    "worker",
                    "--queues",
                    f"lab.{service}",
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
        deadline = time.monotonic() + timeout
        for service in SERVICES:
            self.wait_healthy(service, deadline)
        for name in [n for n in self.children if n.startswith("worker-")] + ["collector"]:
            self._wait_log(name, " ready", deadline)

    def start_service(self, service: str, *, wait: bool = True) -> None:
        _, port = self.addresses[service]
        command = [sys.executable, "-m", "tooling.lab.downstream", "--service", service, "--port", str(port), "--base-ms", str(self.base_ms), "--capacity", str(self.capacity)]
        self._start(service, command)
        if wait:
            self.wait_healthy(service, time.monotonic() + 30)

    def wait_healthy(self, service: str, deadline: float) -> None:
        while not self.healthy(service):
            self._check_alive(service)
            if time.monotonic() > deadline:
                raise LabProcessError(f"the {service} service did not answer on {self.addresses[service]}; see {self.log_dir / f'lab-{service}.log'}")
            time.sleep(0.05)

    def healthy(self, service: str) -> bool:
        connection = http.client.HTTPConnection(*self.addresses[service], timeout=1)
        try:
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def _wait_log(self, name: str, marker: str, deadline: float) -> None:
        path = self.log_dir / f"lab-{name}.log"
        while True:
            self._check_alive(name)
            with open(path, "rb") as log:
                log.seek(self._log_offsets[name])
                text = log.read().decode(errors="replace")
            if marker in text:
                return
            if time.monotonic() > deadline:
                raise LabProcessError(f"{name} did not get ready; see {path}")
            time.sleep(0.1)

    def _check_alive(self, name: str) -> None:
        process = self.children[name]
        if process.poll() is not None:
            raise LabProcessError(f"{name} exited with {process.returncode}; see {self.log_dir / f'lab-{name}.log'}")

    def check_running(self) -> None:
        for name in self.children:
            self._check_alive(name)

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
        process = self.children.pop(service)
        _signal(process, signal.SIGKILL)
        process.wait()

    def bring_back(self, service: str) -> None:
        self.start_service(service, wait=True)

    # -- stopping --
    def stop_all(self) -> None:
        """Stop every process this lab started, and only those."""
        for process in self.children.values():
            _signal(process, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.children.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in self.children.values():
            _signal(process, signal.SIGKILL)  # what is left of each group, a pool child say
            if process.poll() is None:
                process.wait()
        self.children.clear()


def _signal(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
