"""`manage.py demo` (what `make demo` runs) from nothing: its own Redis, database and processes."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.support import REPO
from tests.support.waiting import wait_for
from tooling.devredis import free_port


def processes_with(marker: str) -> list[int]:
    """Pids whose environment carries `marker`: everything the demo started inherits it."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker.encode() in (proc / "environ").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def test_the_demo_starts_everything_runs_the_flows_and_stops_all_it_started_on_ctrl_c():
    var_dir = tempfile.mkdtemp(prefix="flowscope-demo-")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "FLOWS_MODULES")}
    env.update(
        # What `make demo` adds to the production settings: the tooling and the demo catalog.
        FLOWSCOPE_EXTRA_APPS="tooling,tooling.lab,examples.demo",
        FLOWS_MODULES="examples.demo.catalog",
        FLOWSCOPE_VAR_DIR=var_dir,
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",  # nothing there: the demo must start its own
        FLOWSCOPE_ADMIN_PASSWORD="demo-password-123",
        PYTHONUNBUFFERED="1",
    )
    log = Path(var_dir) / "demo-output.log"
    with open(log, "wb") as out:
        demo = subprocess.Popen([sys.executable, "manage.py", "demo", "--port", str(port), "--rate", "20"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: healthy(f"http://127.0.0.1:{port}/healthz") or demo.poll() is not None, timeout=90, interval=0.5, what="the web server")
            assert demo.poll() is None, log.read_text()
            text = log.read_text()
            assert f"Flowscope demo running at http://127.0.0.1:{port}/" in text
            assert "login: admin / demo-password-123" in text
            assert "(started for the demo)" in text
            assert len(processes_with(var_dir)) >= 6, "web, four workers, the load generator and redis"
            time.sleep(15)  # let the flows run
            demo.send_signal(signal.SIGINT)
            assert demo.wait(60) == 0, log.read_text()
        finally:
            if demo.poll() is None:
                demo.kill()
    text = log.read_text()
    assert "stopping the demo's processes" in text
    summary = dict(re.findall(r"^\s+(\w+)\s+(.*ok=\d+.*)$", text, re.MULTILINE))
    assert {"fan_out", "saga", "request_reply", "competing_consumers", "fire_and_forget"} <= set(summary), text
    assert re.search(r"sagas by state \(all runs\): \{.*'completed': \d+", text), text
    wait_for(lambda: not processes_with(var_dir), timeout=20, what="every process the demo started to be gone")
    assert not healthy(f"http://127.0.0.1:{port}/healthz")
