"""The one process supervisor (tooling/processes.py), on real child processes."""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.support.waiting import wait_for
from tooling.devredis import free_port
from tooling.processes import FailedToStart, LogLine, PortOpen, ProcessError, Supervisor, port_taken, spawn, wait_ready

pytestmark = pytest.mark.worker  # starts processes

PY = sys.executable


def alive(pid: int) -> bool:
    """Whether pid is a process that is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_a_process_is_ready_when_its_log_shows_the_line_and_ends_on_term(tmp_path):
    supervisor = Supervisor(log_dir=tmp_path)
    script = "import time; print('warming up'); time.sleep(0.3); print('server ready to serve', flush=True); time.sleep(60)"
    child = supervisor.start("server", [PY, "-c", script], ready=LogLine(r"ready to \w+"), timeout=20)
    assert "server ready to serve" in child.log_text()
    assert child.returncode is None and child.log_path == tmp_path / "server.log"
    report = supervisor.stop()
    assert report.stopped == {"server": -15} and report.killed == [] and report.exited == {}
    assert not alive(child.pid)


def test_a_process_is_ready_when_its_port_answers_or_a_callable_says_so(tmp_path):
    port = free_port()
    supervisor = Supervisor(log_dir=tmp_path)
    try:
        supervisor.start("http", [PY, "-m", "http.server", "--bind", "127.0.0.1", str(port)], ready=PortOpen(port), timeout=30)
        assert port_taken("127.0.0.1", port)
        flag = tmp_path / "flag"
        supervisor.start("flagger", [PY, "-c", f"import time, pathlib; time.sleep(0.3); pathlib.Path({str(flag)!r}).touch(); time.sleep(60)"], ready=flag.exists, timeout=20)
        assert flag.exists()
    finally:
        report = supervisor.stop()
    assert set(report.stopped) == {"http", "flagger"}
    assert not port_taken("127.0.0.1", port)


def test_a_process_that_exits_at_start_raises_with_the_tail_of_its_log(tmp_path):
    supervisor = Supervisor(log_dir=tmp_path, log_prefix="lab-")
    (tmp_path / "lab-broken.log").write_text("an earlier run's line\n")
    script = "import sys; [print(f'line {i}') for i in range(40)]; sys.exit('cannot bind: Address already in use')"
    with pytest.raises(FailedToStart) as failed:
        supervisor.start("broken", [PY, "-c", script], ready=LogLine("never"), timeout=20)
    message = str(failed.value)
    assert message.startswith(f"broken exited with 1; see {tmp_path / 'lab-broken.log'}; its log ends:\n")
    assert message.endswith("cannot bind: Address already in use")
    assert "line 39" in message and "line 10" not in message  # the last lines, not all of them
    assert "an earlier run's line" not in message  # only what this start wrote
    assert failed.value.name == "broken" and supervisor.children == {}


def test_a_process_whose_log_says_ready_before_it_exits_was_started(tmp_path):
    # A worker may take work and die of it (the saga chaos check kills whole nodes) between two
    # polls: it was ready, and its end is the caller's to see, not a failure to start.
    brief = spawn("brief", [PY, "-c", "import os; print('brief ready', flush=True); os._exit(9)"], log_path=tmp_path / "brief.log")
    brief.popen.wait(timeout=20)  # ended before anyone looked
    wait_ready({brief: LogLine("ready")}, timeout=5)
    assert brief.returncode == 9
    # Without the line it is still a failure to start, whatever it printed before.
    early = spawn("early", [PY, "-c", "import os; print('warming', flush=True); os._exit(9)"], log_path=tmp_path / "early.log")
    early.popen.wait(timeout=20)
    with pytest.raises(FailedToStart, match="early exited with 9"):
        wait_ready({early: LogLine("ready")}, timeout=5)


def test_a_process_not_ready_by_its_deadline_is_stopped_and_raises_with_its_log(tmp_path):
    supervisor = Supervisor(log_dir=tmp_path, cwd=tmp_path)
    script = "import os, time; open('pid', 'w').write(str(os.getpid())); print('still thinking', flush=True); time.sleep(60)"
    started = time.monotonic()
    with pytest.raises(FailedToStart, match=r"slow was not ready \(a log line matching 'ready'\) within 1s; see .*slow.log; its log ends:\nstill thinking"):
        supervisor.start("slow", [PY, "-c", script], ready=LogLine("ready"), timeout=1)
    assert time.monotonic() - started < 15
    assert not alive(int((tmp_path / "pid").read_text()))
    assert supervisor.children == {}


def test_a_process_that_ignores_term_is_killed_after_the_deadline_and_reported(tmp_path):
    supervisor = Supervisor(log_dir=tmp_path)
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ignoring TERM', flush=True); time.sleep(60)"
    polite = supervisor.start("polite", [PY, "-c", "import time; print('up', flush=True); time.sleep(60)"], ready=LogLine("up"))
    child = supervisor.start("stubborn", [PY, "-c", stubborn], ready=LogLine("ignoring TERM"))
    quitter = supervisor.start("quitter", [PY, "-c", "import sys; sys.exit(3)"])
    wait_for(lambda: quitter.returncode is not None, timeout=20, what="the quitter to exit")
    assert supervisor.exited() == {"quitter": 3}
    with pytest.raises(ProcessError, match="quitter exited with 3"):
        supervisor.check_running()
    started = time.monotonic()
    report = supervisor.stop(timeout=1.5)
    assert 1.5 <= time.monotonic() - started < 10
    assert report.killed == ["stubborn"] and report.stopped == {"polite": -15} and report.exited == {"quitter": 3}
    assert str(report) == "stopped: polite; killed after the deadline: stubborn; had exited on their own: quitter (3)"
    assert not alive(child.pid) and not alive(polite.pid)


def test_stopping_a_group_stops_the_grandchild_its_leader_left_behind(tmp_path):
    """A worker's pool child, say: the leader ends on TERM, the grandchild ignores it."""
    # Ready once the grandchild ignores TERM (it shares the leader's log): a TERM that reached
    # it while Python was still starting would end it, and the group, before the deadline.
    grandchild = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ignoring TERM', flush=True); time.sleep(60)"
    script = f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {grandchild!r}]); print('grandchild', p.pid, flush=True); time.sleep(60)"
    supervisor = Supervisor(log_dir=tmp_path)
    child = supervisor.start("parent", [PY, "-c", script], ready=LogLine("ignoring TERM"))
    grandchild_pid = int(re.search(r"grandchild (\d+)", child.log_text()).group(1))
    assert alive(grandchild_pid) and os.getpgid(grandchild_pid) == child.pid
    report = supervisor.stop(timeout=1.5)
    assert report.killed == ["parent"], "the leader ended on TERM, but its group lived past the deadline"
    wait_for(lambda: not alive(grandchild_pid), timeout=10, what="the grandchild to be gone")


def test_kill_ends_the_whole_group_at_once(tmp_path):
    script = "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print('grandchild', p.pid, flush=True); time.sleep(60)"
    supervisor = Supervisor(log_dir=tmp_path)
    child = supervisor.start("parent", [PY, "-c", script], ready=LogLine(r"grandchild \d+"))
    grandchild_pid = int(child.log_text().split()[1])
    assert supervisor.kill("parent") == -9
    wait_for(lambda: not alive(grandchild_pid), timeout=10, what="the grandchild to be gone")
    assert supervisor.children == {} and str(supervisor.stop()) == "nothing to stop"


def test_a_name_still_running_cannot_be_started_twice(tmp_path):
    supervisor = Supervisor(log_dir=tmp_path)
    try:
        supervisor.start("once", [PY, "-c", "import time; time.sleep(60)"])
        with pytest.raises(ProcessError, match=r"once is already running \(pid \d+\)"):
            supervisor.start("once", [PY, "-c", "pass"])
    finally:
        supervisor.stop()


def test_a_port_with_a_listener_is_taken_and_a_closed_one_is_not():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_taken("127.0.0.1", port)
    assert not port_taken("127.0.0.1", port)
