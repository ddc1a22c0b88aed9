"""One supervisor for every process the demo, the lab, the benchmark and the tests start.

Each process runs in a process group of its own (a Celery worker's pool children, a shell's
grandchildren share it), so a signal to the group reaches all of it and Ctrl-C at the terminal
reaches only us. Its output goes to a log file, appended to; what it wrote since this start is
what readiness and error messages look at.

1. start: spawn, then wait for a readiness sign: a line of its log matching a pattern
   (`LogLine`), a TCP port answering (`PortOpen`), or a callable returning true (`Check`
   names it for the error message).
2. A process that exits before it is ready, or is not ready by its deadline, raises
   `FailedToStart`, whose message ends with the last lines of its log: the cause, on screen.
3. stop: TERM to every group, then KILL to each group still alive at the deadline (its leader
   or anything left in it); the `StopReport` says which ended on TERM, which had to be killed,
   and which had exited on their own before, with their codes.

The timeouts are named once here; callers pass their own only for a reason they can state.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT = 90.0  # start to ready: a Celery worker on a busy two-core machine takes a while
STOP_TIMEOUT = 20.0  # TERM to KILL: a worker finishes the deliveries in hand (warm shutdown)
POLL_INTERVAL = 0.1
TAIL_LINES = 20  # of a log, in an error message


class ProcessError(RuntimeError):
    """A supervised process did not start, or is gone when it should be running."""


class FailedToStart(ProcessError):
    """The process exited before it was ready, or was not ready by its deadline."""

    def __init__(self, child: Child, reason: str) -> None:
        self.name, self.reason, self.log_path, self.tail = child.name, reason, child.log_path, child.tail()
        super().__init__(child.describe(reason))


@dataclass(frozen=True)
class LogLine:
    """Ready once a line the process wrote since this start matches `pattern` (a regex)."""

    pattern: str

    def __str__(self) -> str:
        return f"a log line matching {self.pattern!r}"


@dataclass(frozen=True)
class PortOpen:
    """Ready once a TCP connection to host:port is accepted."""

    port: int
    host: str = "127.0.0.1"

    def __str__(self) -> str:
        return f"{self.host}:{self.port} answering"


@dataclass(frozen=True)
class Check:
    """Ready once `test()` returns true; `what` names it in an error (an HTTP health check, say)."""

    what: str
    test: Callable[[], bool]

    def __str__(self) -> str:
        return self.what


Ready = LogLine | PortOpen | Check | Callable[[], bool]


def port_answers(host: str, port: int, *, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_answers(url: str, *, any_status: bool = False, timeout: float = 2.0) -> bool:
    """Whether `url` answers 200 (any HTTP status if asked). Stronger than `PortOpen` for a web
    server: another program holding the port accepts connections but does not answer this."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own local URLs
            return any_status or response.status == 200
    except urllib.error.HTTPError:
        return any_status
    except OSError:
        return False


def port_taken(host: str, port: int) -> bool:
    """Whether a server could not bind host:port now: another program listens there.

    Binds as the servers we start do (SO_REUSEADDR), so a port whose last connections are
    still in TIME_WAIT counts as free, and one held by a listener on any address counts as taken.
    """
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _living_groups() -> set[int]:
    """Process groups with a member that is not a zombie (a zombie holds no resources and
    cannot be signalled away; an orphan's zombie lingers where pid 1 does not reap)."""
    groups = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            if fields[0] not in (b"Z", b"X"):
                groups.add(int(fields[2]))
    return groups


@dataclass(eq=False)  # compared and hashed by identity: one object per start
class Child:
    """One started process: its group is its pid."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None
    log_offset: int = 0  # the log is appended to: this start wrote past here

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def log_text(self) -> str:
        """What the process wrote since this start."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.log_text().rstrip("\n").splitlines()[-lines:])

    def describe(self, reason: str) -> str:
        """`<name> <reason>; see <log>; its log ends: <its last lines>`: the cause, on screen."""
        if self.log_path is None:
            return f"{self.name} {reason}"
        tail = self.tail()
        return f"{self.name} {reason}; see {self.log_path}" + (f"; its log ends:\n{tail}" if tail.strip() else "; its log is empty")

    def signal(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:  # the whole group is gone already
            pass

    def is_ready(self, ready: Ready) -> bool:
        if isinstance(ready, LogLine):
            return re.search(ready.pattern, self.log_text(), re.MULTILINE) is not None
        if isinstance(ready, PortOpen):
            return port_answers(ready.host, ready.port)
        if isinstance(ready, Check):
            return bool(ready.test())
        return bool(ready())


def spawn(name: str, command: list[str], *, log_path: Path | None, env: Mapping[str, str] | None = None, cwd: Path | str | None = None) -> Child:
    """Start `command` in a group of its own, appending its output to log_path (None: ours)."""
    if log_path is None:
        return Child(name, subprocess.Popen(command, cwd=cwd, env=env, start_new_session=True), None)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        popen = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return Child(name, popen, log_path, offset)


def wait_ready(signs: Mapping[Child, Ready], *, timeout: float = START_TIMEOUT) -> None:
    """Until every child shows its sign, all against one deadline; FailedToStart (with the log's
    tail) for the first that exits first or is not ready in time."""
    deadline = time.monotonic() + timeout
    waiting = dict(signs)
    while True:
        for child, ready in list(waiting.items()):
            # Exit is checked before the sign: a server that died at start may leave its port
            # answered by the other program that made it die. A line in its own log, though, says
            # it was ready before it ended: a worker may take work and die of it between two polls.
            if child.returncode is not None:
                if isinstance(ready, LogLine) and child.is_ready(ready):
                    del waiting[child]
                    continue
                raise FailedToStart(child, f"exited with {child.returncode}")
            if child.is_ready(ready):
                del waiting[child]
        if not waiting:
            return
        if time.monotonic() > deadline:
            child, ready = next(iter(waiting.items()))
            what = ready if isinstance(ready, LogLine | PortOpen | Check) else "its readiness check"
            raise FailedToStart(child, f"was not ready ({what}) within {timeout:g}s")
        time.sleep(POLL_INTERVAL)


@dataclass
class StopReport:
    """What stopping left: each name once, in one of three places."""

    exited: dict[str, int] = field(default_factory=dict)  # had ended on their own, with this code
    stopped: dict[str, int] = field(default_factory=dict)  # ended on TERM, with this code
    killed: list[str] = field(default_factory=list)  # something of the group outlived the deadline

    def __str__(self) -> str:
        parts = []
        if self.stopped:
            parts.append("stopped: " + ", ".join(self.stopped))
        if self.killed:
            parts.append("killed after the deadline: " + ", ".join(self.killed))
        if self.exited:
            parts.append("had exited on their own: " + ", ".join(f"{n} ({rc})" for n, rc in self.exited.items()))
        return "; ".join(parts) or "nothing to stop"


def stop(children: Iterable[Child], *, timeout: float = STOP_TIMEOUT) -> StopReport:
    """TERM every group, KILL each still alive at the deadline; wait for every leader."""
    children = list(children)
    report = StopReport()
    for child in children:
        if child.returncode is not None:
            report.exited[child.name] = child.popen.returncode
        # A leader gone may have left its group behind (a pool child): that gets TERM too.
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    alive = list(children)
    while alive:
        living = _living_groups() if any(c.returncode is not None for c in alive) else set()
        alive = [c for c in alive if c.returncode is None or c.pid in living]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(POLL_INTERVAL / 2)
    for child in alive:
        child.signal(signal.SIGKILL)
        report.killed.append(child.name)
        report.exited.pop(child.name, None)  # its leader had exited, but not all of it
    for child in children:
        code = child.popen.wait()
        if child.name not in report.exited and child.name not in report.killed:
            report.stopped[child.name] = code
    return report


class Supervisor:
    """The processes one command started, by name; it stops exactly these."""

    def __init__(self, *, log_dir: Path, env: Mapping[str, str] | None = None, cwd: Path | str | None = None, log_prefix: str = "") -> None:
        self.log_dir = Path(log_dir)
        self.env = dict(env) if env is not None else None  # None: this process's, as it is at each start
        self.cwd = cwd
        self.log_prefix = log_prefix
        self.children: dict[str, Child] = {}

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{self.log_prefix}{name}.log"

    def start(self, name: str, command: list[str], *, ready: Ready | None = None, timeout: float = START_TIMEOUT, env: Mapping[str, str] | None = None, log: bool = True) -> Child:
        """Start one process (replacing a stopped one of that name); wait for `ready` if given.
        A process that fails to start is stopped with what it left, then FailedToStart raised."""
        if name in self.children and self.children[name].returncode is None:
            raise ProcessError(f"{name} is already running (pid {self.children[name].pid})")
        child = spawn(name, command, log_path=self.log_path(name) if log else None, env={**(os.environ if self.env is None else self.env), **(env or {})}, cwd=self.cwd)
        self.children[name] = child
        if ready is not None:
            self.wait_ready({name: ready}, timeout=timeout)
        return child

    def wait_ready(self, signs: Mapping[str, Ready], *, timeout: float = START_TIMEOUT) -> None:
        try:
            wait_ready({self.children[name]: ready for name, ready in signs.items()}, timeout=timeout)
        except FailedToStart as failed:
            stop([self.children.pop(failed.name)])
            raise

    def exited(self) -> dict[str, int]:
        """Processes that have ended, with their exit codes."""
        return {name: child.popen.returncode for name, child in self.children.items() if child.returncode is not None}

    def check_running(self) -> None:
        """ProcessError naming the first process that is gone, with its log's tail."""
        for name, code in self.exited().items():
            raise ProcessError(self.children[name].describe(f"exited with {code}"))

    def kill(self, name: str) -> int:
        """KILL the whole group now, as a crash would, and forget it; its exit code."""
        child = self.children.pop(name)
        child.signal(signal.SIGKILL)
        return child.popen.wait()

    def stop(self, timeout: float = STOP_TIMEOUT) -> StopReport:
        """Stop every process started here (see `stop`), and forget them."""
        report = stop(self.children.values(), timeout=timeout)
        self.children.clear()
        return report
