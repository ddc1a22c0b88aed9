"""A RabbitMQ node of the test's own, for checks that take the broker away: never the machine's.

`rabbitmq-server` runs in the foreground as our child, in a process group of its own, under a
node name, ports and directories of its own (a temp dir: data, logs, config, plugins, pid file,
and HOME, so the Erlang cookie is its own too and `rabbitmqctl` reaches only this node).
Started again on the same name, port and data directory, it finds its durable queues (quorum
queues replay their log) and every message it confirmed.

Debian's /usr/sbin wrappers `su` to the rabbitmq user; the scripts under /usr/lib/rabbitmq/bin
run as the caller, who owns the temp dir.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tooling.devredis import free_port
from tooling.rabbitmq import answers

SCRIPTS = Path("/usr/lib/rabbitmq/bin")
START_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 60.0


def script(name: str) -> str:
    found = SCRIPTS / name
    if found.exists():
        return str(found)
    on_path = shutil.which(name)
    if on_path is None:
        raise RuntimeError(f"{name} not found (Debian: apt install rabbitmq-server)")
    return on_path


class RabbitServer:
    """A private RabbitMQ node on 127.0.0.1 (no plugins, guest/guest from localhost)."""

    def __init__(self, *, directory: Path | None = None) -> None:
        self.directory = Path(directory or tempfile.mkdtemp(prefix="flowscope-rabbit-"))
        self.node = f"flowscope{os.getpid()}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def env(self) -> dict[str, str]:
        d = self.directory
        return {
            **os.environ,
            "HOME": str(d),  # the Erlang cookie of this node and of the rabbitmqctl that talks to it
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
        }

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> RabbitServer:
        """Start it (again, on the same port and data) and return once it takes connections."""
        d = self.directory
        (d / "mnesia").mkdir(parents=True, exist_ok=True)
        (d / "log").mkdir(exist_ok=True)
        if not (d / "rabbitmq.conf").exists():
            (d / "rabbitmq.conf").write_text("loopback_users.guest = false\n")
            (d / "enabled_plugins").write_text("[].\n")
        output = open(d / "server.out", "ab")  # noqa: SIM115 - the child writes to it until it ends
        self.process = subprocess.Popen([script("rabbitmq-server")], env=self.env(), cwd=d, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        output.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self.process.returncode}:\n{self.log_tail()}")
            if answers(self.url, timeout=1.0):
                return self
            time.sleep(0.25)
        self.kill()
        raise RuntimeError(f"rabbitmq-server did not answer on port {self.port} within {timeout:g}s:\n{self.log_tail()}")

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """`rabbitmqctl -n <this node> ...`; its output, or RuntimeError with its error."""
        done = subprocess.run([script("rabbitmqctl"), "-n", self.node, *args], env=self.env(), capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[:500]}")
        return done.stdout

    def kill(self) -> None:
        """SIGKILL the whole node, Erlang VM included: a crash, nothing flushed on the way out."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM (RabbitMQ's orderly stop), SIGKILL what is left after `timeout`."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def remove(self) -> None:
        """Stop it and delete its data: the test is done with it."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        out = self.directory / "server.out"
        return out.read_text(errors="replace")[-chars:] if out.exists() else ""
