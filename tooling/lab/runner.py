"""Run the lab: start its processes, run every scenario in both styles, stop what it started."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flows
from flows.models import DeadLetter
from flows.produce.backpressure import ACTIVATIONS_KEY, queue_depth
from tooling.lab import calls, effects, results, scenarios
from tooling.lab.effects import SERVICES
from tooling.lab.load import Order, Timeline, drive
from tooling.lab.processes import LabProcesses
from tooling.lab.scenarios import Scenario, Size, queue_name
from tracing.redis import get_redis

ProgressFn = Callable[[str], None]


def sync_caller(processes: LabProcesses, run: str) -> Callable[[str], None]:
    """The synchronous chain: the caller blocks on each service in turn; an error ends the order."""

    def order(order_id: str) -> None:
        for service in SERVICES:
            for attempt in range(scenarios.SYNC_RETRIES + 1):
                try:
                    calls.call(processes.addresses[service], service, run=run, order_id=order_id, timeout=scenarios.TIMEOUT_S)
                    break
                except calls.DownstreamError:
                    if attempt == scenarios.SYNC_RETRIES:
                        raise

    return order


def async_caller(run: str) -> Callable[[str], None]:
    """The asynchronous style: the caller publishes the order and is done; Flowscope does the rest."""

    def order(order_id: str) -> None:
        flows.send("lab.order", {"run": run, "order_id": order_id, "amount_cents": 4200}, correlation_id=order_id)

    return order


def _dead_letters(run: str) -> dict[str, float]:
    dead: dict[str, float] = {}
    for order_id, at in DeadLetter.objects.filter(message_type="lab.order", correlation_id__startswith=f"{run}-").values_list("correlation_id", "dead_at"):
        dead[order_id] = min(dead.get(order_id, at.timestamp()), at.timestamp())
    return dead


def _activations() -> int:
    values = get_redis().hmget(ACTIVATIONS_KEY, [queue_name(s) for s in SERVICES])
    return sum(int(v) for v in values if v)


class DepthSampler:
    """Queue depth of the lab's four queues, twice a second, while an asynchronous run lasts."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lab-depth", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append((time.time(), {s: queue_depth(queue_name(s)) for s in SERVICES}))

    def __enter__(self) -> DepthSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _timeline(processes: LabProcesses, scenario: Scenario, size: Size) -> Timeline:
    _, start, end = size.timeline(scenario)
    service = scenarios.FAULTY_SERVICE
    on: Callable[[], None]
    off: Callable[[], None]
    if scenario.fault == "slow":
        on, off = (lambda: processes.set_fault(service, slow=10)), (lambda: processes.set_fault(service))
    elif scenario.fault == "fail":
        on, off = (lambda: processes.set_fault(service, fail_rate=0.2)), (lambda: processes.set_fault(service))
    elif scenario.fault == "down":
        on, off = (lambda: processes.take_down(service)), (lambda: processes.bring_back(service))
    else:
        return Timeline(actions=[])
    return Timeline(actions=[(start, "fault_on", on), (end, "fault_off", off)])


def run_one(processes: LabProcesses, scenario: Scenario, style: str, *, size: Size, lab_id: str, progress: ProgressFn) -> dict[str, Any]:
    run = f"{lab_id}-{scenario.name}-{style}"
    processes.check_running()
    for service in SERVICES:
        processes.set_fault(service)
    timeline = _timeline(processes, scenario, size)
    call = sync_caller(processes, run) if style == "sync" else async_caller(run)
    duration = size.timeline(scenario)[0]
    activations_before = _activations()
    with DepthSampler() as depth:
        orders = drive(call, run=run, rate=size.rate, duration=duration, callers=scenarios.CALLERS, timeline=timeline, progress=progress)
        if timeline.error:
            raise RuntimeError(f"{run}: the fault could not be applied: {timeline.error}")
        measured = _settle(run, orders, timeline, depth, activations_before, size=size, progress=progress)
    effects.forget(get_redis(), run)
    figures = results.figures(measured)
    progress("")
    return figures


def _settle(run: str, orders: list[Order], timeline: Timeline, depth: DepthSampler, activations_before: int, *, size: Size, progress: ProgressFn) -> results.Measured:
    """Wait until every order is completed or failed, or the settle time is up; the rest are lost."""
    fault = (timeline.happened["fault_on"], timeline.happened["fault_off"]) if "fault_off" in timeline.happened else None
    deadline = time.monotonic() + size.settle_s
    time.sleep(0.5)  # a request the caller gave up on may still be finishing at its service
    while True:
        done, duplicates = effects.read(get_redis(), run)
        measured = results.Measured(
            orders=orders, effects=done, duplicates=duplicates, dead=_dead_letters(run), fault=fault, queue_depth=list(depth.samples), backpressure_activations=_activations() - activations_before
        )
        waiting = results.unsettled(measured)
        progress(f"{run}: {len(orders) - waiting}/{len(orders)} settled")
        if not waiting or time.monotonic() > deadline:
            return measured
        time.sleep(0.5)


def run_lab(*, size: Size, only: list[str], log_dir: Path, progress: ProgressFn) -> dict[str, Any]:
    """Every chosen scenario in both styles; returns {scenario: {style: figures}} and the setup."""
    lab_id = f"lab{int(time.time())}"
    processes = LabProcesses(log_dir=log_dir)
    chosen = [s for s in scenarios.SCENARIOS if s.name in only]
    out: dict[str, Any] = {}
    try:
        progress("starting the downstream services, the workers and the collector")
        processes.start_all()
        # A second of orders in each style, not counted: connections, pools and the workers'
        # first deliveries warm up here rather than in the first scenario's figures.
        warm_up = dataclasses.replace(size, steady_s=1.0)
        for style in scenarios.STYLES:
            run_one(processes, Scenario("warmup", "warm-up", ""), style, size=warm_up, lab_id=lab_id, progress=progress)
        for scenario in chosen:
            out[scenario.name] = {"title": scenario.title}
            for style in scenarios.STYLES:
                out[scenario.name][style] = run_one(processes, scenario, style, size=size, lab_id=lab_id, progress=progress)
    finally:
        progress("stopping the lab's processes")
        processes.stop_all()
        progress("")
    return out
