"""The pattern lab: a quick run of every scenario in both styles, its figures and the Lab page.

Only sense is checked (both styles complete orders, counts add up, nothing lost asynchronously),
never timings: the machine is shared and speeds vary. The run is on a database and a Redis of
its own: the user's keep only the LabRun row.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from tests.people import client_for
from tests.support import REPO
from tests.support.brokers import on_rabbitmq
from tests.support.stores import run_keys, run_rows
from tests.support.waiting import wait_for
from tests.support.workers import worker_database_url
from tooling.lab import results
from tooling.lab.load import Order
from tooling.lab.models import LabRun
from tooling.lab.processes import LabProcessError, LabProcesses
from tooling.lab.scenarios import QUICK, SCENARIO_NAMES, STYLES
from tooling.own_stores import INSIDE_ENV
from tooling.rabbitmq import vhost_names
from tracing.redis import get_redis

pytestmark = pytest.mark.django_db(transaction=True)
SERVICES = ("inventory", "billing", "shipping", "notifications")


def lab_env() -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": worker_database_url(), "REDIS_URL": settings.REDIS_URL, "PYTHONUNBUFFERED": "1"}


def lab_processes(lab_pid: int) -> dict[int, dict[str, str]]:
    """The environment of each process still alive that the lab `lab_pid` started (its
    services, workers and collector, all run by the lab's child on the lab's own stores)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = dict(e.decode(errors="replace").split("=", 1) for e in (proc / "environ").read_bytes().split(b"\0") if b"=" in e)
        except OSError:
            continue
        if environ.get(INSIDE_ENV) == str(lab_pid) and "FLOWSCOPE_LAB_SERVICES" in environ:
            found[int(proc.name)] = environ
    return found


def test_a_quick_lab_runs_every_scenario_in_both_styles_and_every_order_is_accounted_for(tmp_path):
    out = tmp_path / "lab.json"
    rows, keys = run_rows(), run_keys()
    # The quick run's load at half its length (one second steady, a second and a half of outage,
    # eight orders a second): every scenario and style still sees orders before, in and after its fault.
    lab = subprocess.Popen([sys.executable, "manage.py", "lab", "--quick", "--scale", "0.5", "--json", str(out)], cwd=REPO, env=lab_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = lab.communicate(timeout=170)
    finally:
        if lab.poll() is None:
            lab.kill()
    assert lab.returncode == 0, stderr[-3000:]

    figures = json.loads(out.read_text())
    assert set(figures["scenarios"]) == set(SCENARIO_NAMES)
    assert (figures["setup"]["steady_s"], figures["setup"]["outage_s"]) == (QUICK.steady_s / 2, QUICK.outage_s / 2)
    for name, scenario in figures["scenarios"].items():
        for style in STYLES:
            row = scenario[style]
            where = f"{name}/{style}: {row}"
            assert row["sent"] > 0 and row["completed"] > 0, where
            assert row["completed"] + row["failed"] + row["lost"] == row["sent"], where
            for key in ("completed_per_s", "e2e_p50_ms", "e2e_p99_ms", "caller_p99_ms", "caller_failures", "lost", "recovery_s"):
                assert key in row, f"{where}: no {key}"
            assert row["e2e_p50_ms"] <= row["e2e_p99_ms"], where
            assert sum(row["series"]["completed"]) == row["completed"], where
        assert scenario["async"]["lost"] == 0, f"{name}: the asynchronous style lost orders: {scenario['async']}"
        assert scenario["async"]["series"]["queue_depth"].keys() == set(SERVICES), name
    # A fault was applied and lifted in each fault scenario, inside the load.
    for name in ("slow", "failing", "outage"):
        start, end = figures["scenarios"][name]["sync"]["fault_window_s"]
        assert 0 < start < end, name
    # The outage refuses the synchronous chain's calls: the caller sees it, and billing's part is missing.
    outage = figures["scenarios"]["outage"]
    assert outage["sync"]["caller_failures"] > 0 and outage["sync"]["failed"] > 0
    assert any("billing" in kind for kind in outage["sync"]["caller_errors"])
    assert figures["machine"]["commit"] and figures["machine"]["cores"] >= 1
    assert figures["machine"]["broker"] == ("rabbitmq" if on_rabbitmq() else "redis")

    assert "scenario" in stdout and "outage" in stdout and "async" in stdout
    # The one row the lab leaves in the user's database, for the Lab page; its dead letters,
    # spans and keys were in its own stores, removed with them.
    stored = LabRun.latest_run()
    assert stored is not None and stored.quick and stored.scenarios == figures["scenarios"]
    assert "runs on a database of its own" in stderr
    if on_rabbitmq():  # its queues were in a vhost of its own, deleted with them
        vhost = re.search(r"its broker RabbitMQ vhost (\S+) at", stderr)
        assert vhost is not None, stderr[:2000]
        assert vhost[1] not in vhost_names()
    assert run_rows() == rows
    assert run_keys() == keys
    assert lab_processes(lab.pid) == {}


def test_ctrl_c_during_the_load_stops_every_process_the_lab_started_removes_its_stores_and_stores_nothing():
    lab = subprocess.Popen([sys.executable, "manage.py", "lab", "--quick", "--only", "outage"], cwd=REPO, env=lab_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The services record effects in the lab's own Redis once orders flow: the warm-up has begun.
        def flowing() -> dict[int, dict[str, str]]:
            assert lab.poll() is None, f"the lab exited with {lab.returncode}"
            started = lab_processes(lab.pid)
            return started if any(redis.Redis.from_url(env["REDIS_URL"]).keys("flows:lab:effects:*") for env in started.values()) else {}

        started = wait_for(flowing, timeout=90, interval=0.2, what="orders flowing")
        assert len(started) == 9  # four services, four workers, the collector
        own = next(iter(started.values()))
        assert own["REDIS_URL"] != settings.REDIS_URL and own["DATABASE_URL"] != worker_database_url()
        assert own["CELERY_BROKER_URL"] != settings.CELERY_BROKER_URL
        own_vhost = own["CELERY_BROKER_URL"].rsplit("/", 1)[1] if on_rabbitmq() else ""
        assert not on_rabbitmq() or own_vhost in vhost_names()
        assert not get_redis().keys("flows:lab:*"), "nothing of the lab's in the user's Redis"
        lab.send_signal(signal.SIGINT)
        _, stderr = lab.communicate(timeout=120)
    finally:
        if lab.poll() is None:
            lab.kill()
    assert lab.returncode != 0
    assert "interrupted" in stderr and "its database and Redis removed" in stderr
    wait_for(lambda: lab_processes(lab.pid) == {}, timeout=10, what="no lab process left")
    assert redis.Redis.from_url(own["REDIS_URL"]).dbsize() == 0, "the lab's Redis database is empty again"
    assert not Path(own["DATABASE_URL"].removeprefix("sqlite:///")).exists(), "the lab's database is removed"
    assert not own_vhost or own_vhost not in vhost_names(), "the lab's vhost is deleted"
    assert LabRun.objects.count() == 0


def test_an_unreachable_redis_is_named_before_anything_starts(settings):
    settings.REDIS_URL = "redis://127.0.0.1:9/0"
    with pytest.raises(CommandError, match=r"Redis at redis://127.0.0.1:9/0 did not answer"):
        call_command("lab", "--quick")


def test_a_service_that_cannot_start_is_reported_with_its_log(tmp_path):
    processes = LabProcesses(log_dir=tmp_path)
    with socket.socket() as taken:
        taken.bind(processes.addresses["billing"])
        taken.listen()
        try:
            with pytest.raises(LabProcessError, match=r"billing exited with 1; see .*lab-billing.log"):
                processes.start_service("billing")
        finally:
            processes.stop_all()
    assert "Address already in use" in (tmp_path / "lab-billing.log").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "steady,meteor"], "unknown scenario(s) ['meteor']; choose from steady, slow, failing, outage"),
        (["--json", "/no/such/dir/lab.json"], "the directory /no/such/dir does not exist"),
        (["--json", "/tmp"], "that is a directory"),
        (["--scale", "0"], "--scale 0: give a factor above 0, at most 10"),
    ],
)
def test_bad_options_are_refused_with_a_clear_error(args, message):
    with pytest.raises(CommandError) as refused:
        call_command("lab", *args)
    assert message in str(refused.value)


def measured(orders: list[Order], effects: dict[str, dict[str, float]], **extra) -> results.Measured:
    defaults = {"duplicates": 0, "dead": {}, "fault": None, "queue_depth": [], "backpressure_activations": 0}
    return results.Measured(orders=orders, effects=effects, **{**defaults, **extra})


def test_an_order_neither_completed_nor_reported_failed_counts_as_lost():
    every = dict.fromkeys(SERVICES, 100.5)
    orders = [
        Order("r-0", 100.0, caller_done=100.01),
        Order("r-1", 100.1, caller_done=100.11),
        Order("r-2", 100.2, caller_done=100.3, caller_error="DownstreamError: billing answered 503"),
        Order("r-3", 100.3, caller_done=100.31),
    ]
    figures = results.figures(measured(orders, {"r-0": every, "r-2": {"inventory": 100.25}, "r-3": {"inventory": 100.4, "billing": 100.5}}, dead={}))
    assert (figures["sent"], figures["completed"], figures["failed"], figures["lost"]) == (4, 1, 1, 2)
    assert figures["partial"] == 2  # r-2 failed after inventory; r-3 stopped half way, unreported
    assert figures["caller_failures"] == 1
    assert figures["e2e_p50_ms"] == 500.0


def test_recovery_counts_until_the_orders_caught_in_the_fault_are_settled():
    every = lambda t: dict.fromkeys(SERVICES, t)  # noqa: E731
    orders = [Order("r-0", 10.0, caller_done=10.01), Order("r-1", 11.0, caller_done=11.01), Order("r-2", 13.0, caller_done=13.01)]
    effects = {"r-0": every(10.1), "r-1": every(14.5), "r-2": every(13.2)}  # r-1 waited out the fault, ending at 12
    assert results.figures(measured(orders, effects, fault=(10.5, 12.0)))["recovery_s"] == 2.5
    assert results.figures(measured(orders, effects))["recovery_s"] is None
    # A dead-lettered copy settles its order as failed, at the time it died.
    assert results.figures(measured(orders, {"r-0": every(10.1), "r-2": every(13.2)}, dead={"r-1": 12.5}, fault=(10.5, 12.0)))["recovery_s"] == 1.2
    # An order after the fault that is still slow (backlog ahead of it) does not end the recovery.
    orders = [Order("r-0", 10.0), Order("r-2", 12.1), Order("r-4", 13.5)]
    effects = {"r-0": every(10.1), "r-2": every(13.0), "r-4": every(13.6)}
    assert results.figures(measured(orders, effects, fault=(10.5, 12.0)))["recovery_s"] == 1.6


def stored_run() -> LabRun:
    every = dict.fromkeys(SERVICES, 100.2)
    row = results.figures(measured([Order("x-0", 100.0, caller_done=100.1), Order("x-1", 101.0, caller_done=101.1)], {"x-0": every}, fault=(100.5, 101.5), queue_depth=[(100.5, {"billing": 7})]))
    scenarios = {"outage": {"title": "billing down, then back", "sync": row, "async": {**row, "completed_per_s": 123.45}}}
    return LabRun.objects.create(
        started_at=timezone.now(),
        seconds=321.0,
        quick=False,
        figures={"scenarios": scenarios, "setup": {"rate_per_s": 20, "faulty_service": "billing"}, "machine": {"cores": 2, "commit": "abc1234", "database": "sqlite"}},
    )


def test_the_lab_page_shows_the_last_run_with_its_table_and_chart_data():
    LabRun.objects.create(started_at=timezone.now() - timezone.timedelta(days=1), seconds=1, quick=True, figures={"scenarios": {}})
    stored_run()
    page = client_for("viewer").get("/lab/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "No lab run yet" not in html
    assert 'id="lab-table"' in html and "123.45" in html and "billing down, then back" in html and "abc1234" in html
    charts = page.context["charts"]
    assert charts[0]["name"] == "outage" and charts[0]["fault"] == [0.5, 1.5]
    assert charts[0]["styles"]["sync"]["queue_depth"]["billing"] == [7]
    assert 'id="lab-data"' in html and "console/lab.js" in html
    assert 'href="/lab/"' in html  # in the navigation


def test_the_lab_page_says_how_to_make_a_run_when_there_is_none():
    page = client_for("viewer").get("/lab/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "No lab run yet" in html and "python manage.py lab" in html
    assert 'id="lab-table"' not in html


def test_the_lab_page_needs_a_sign_in():
    page = client_for(None).get("/lab/")
    assert page.status_code == 200  # any signed-in user reads; anonymous visitors sign in first
    from django.test import Client

    assert Client().get("/lab/").status_code == 302
