"""manage.py bench: its choices, a bench extra missing, and the memory it reads."""

import io
import subprocess
import sys

import psutil
import pytest
from django.core.management import CommandError, call_command

from tests.support.waiting import wait_for
from tooling.bench import flower, live, memory, processes

pytestmark = pytest.mark.django_db


def test_an_unknown_measurement_is_refused_with_the_choices():
    with pytest.raises(CommandError, match=r"unknown measurement\(s\) \['p9'\]; choose from p1, flower, p2, p3, p4, p5, p6, p7"):
        call_command("bench", only="p1,p9")


def test_a_missing_bench_extra_skips_only_its_own_figures(monkeypatch, tmp_path):
    monkeypatch.setattr(flower, "installed", lambda: False)
    monkeypatch.setattr(live, "installed", lambda: False)
    monkeypatch.setattr(memory, "installed", lambda: False)
    out = io.StringIO()
    call_command("bench", only="flower,p3,p7", json_path=str(tmp_path / "bench.json"), stdout=out)
    text = out.getvalue()
    for name in ("p1_flower_ratio", "p3_live_p95_ms", "p7_rss_growth_pct"):
        assert f"{name} skipped: " in text
    figures = (tmp_path / "bench.json").read_text()
    assert '"skipped"' in figures and "make bench installs it" in figures and '"machine"' in figures


def test_resident_memory_counts_a_process_with_its_children():
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import time; x = bytearray(64 << 20); time.sleep(60)'])"])
    try:
        wait_for(lambda: processes.rss_mib(parent.pid) > 64, timeout=30, what="the child to hold its 64 MiB")
        assert processes.rss_mib(parent.pid, children=False) < 64 < processes.rss_mib(parent.pid)
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()


def test_the_memory_of_a_process_gone_is_nothing():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert processes.rss_mib(process.pid) == 0.0


def test_the_tasks_flower_saw_are_summed_over_workers_and_task_names():
    metrics = "\n".join(
        [
            "# HELP flower_events_total Number of events",
            'flower_events_total{task="flows.bench_noop",type="task-received",worker="a@h"} 9.0',
            'flower_events_total{task="flows.bench_noop",type="task-succeeded",worker="a@h"} 7.0',
            'flower_events_total{task="flows.bench_noop",type="task-succeeded",worker="b@h"} 5.0',
            'flower_events_created{task="flows.bench_noop",type="task-succeeded",worker="b@h"} 1.7e9',
        ]
    )
    assert flower.succeeded(metrics) == 12
