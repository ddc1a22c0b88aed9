"""Start, watch and stop the demo's processes: only the ones it started, each in its own group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class Supervisor:
    def __init__(self, *, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *manage_args: str, log: bool = True) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_dir / f"{name}.log", "ab") if log else None  # noqa: SIM115 - lives as long as the child
        process = subprocess.Popen(
            [sys.executable, "manage.py", *manage_args],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT if log else None,
            start_new_session=True,  # its own process group: Ctrl-C reaches us, we stop it cleanly
        )
        self.children[name] = process
        return process

    def exited(self) -> dict[str, int]:
        return {name: p.returncode for name, p in self.children.items() if p.poll() is not None}

    def stop(self, timeout: float = 15.0) -> None:
        for process in self.children.values():
            self._signal(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.children.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in self.children.values():
            # Whatever is left of each group (a prefork child, say) goes now.
            self._signal(process, signal.SIGKILL)
            if process.poll() is None:
                process.wait()

    @staticmethod
    def _signal(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
