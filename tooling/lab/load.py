"""Orders arriving on a fixed schedule, handed to a fixed set of caller threads.

The schedule does not wait for the callers (an open workload, as customers do not wait for
each other): when every caller is busy, an order waits for one, and that wait counts in the
latency the caller saw. Fault actions run on a timeline thread of their own, so a service
restart never delays arrivals.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable

from django.db import connections

CallFn = Callable[[str], None]
ProgressFn = Callable[[str], None]


@dataclasses.dataclass
class Order:
    order_id: str
    arrival: float  # wall clock, when it was due
    caller_done: float = 0.0
    caller_error: str = ""


@dataclasses.dataclass
class Timeline:
    """Fault actions at offsets from the first arrival; records when each really took effect."""

    actions: list[tuple[float, str, Callable[[], None]]]
    happened: dict[str, float] = dataclasses.field(default_factory=dict)
    error: str = ""

    def run(self, t0: float, stop: threading.Event) -> None:
        for offset, name, action in sorted(self.actions, key=lambda a: a[0]):
            if stop.wait(max(0.0, t0 + offset - time.time())):
                return
            try:
                action()
            except Exception as exc:  # reported with the run, never a silent half-fault
                self.error = f"{name}: {type(exc).__name__}: {exc}"
                return
            self.happened[name] = time.time()


def drive(call: CallFn, *, run: str, rate: float, duration: float, callers: int, timeline: Timeline, progress: ProgressFn) -> list[Order]:
    """Send rate x duration orders through `call`; return them once every caller has finished."""
    count = max(1, round(rate * duration))
    orders = [Order(order_id=f"{run}-{i}", arrival=0.0) for i in range(count)]
    due: queue.Queue[Order | None] = queue.Queue()

    def caller() -> None:
        try:
            while (order := due.get()) is not None:
                try:
                    call(order.order_id)
                except Exception as exc:  # the caller's view: any error is a failed order
                    order.caller_error = f"{type(exc).__name__}: {exc}"[:300]
                order.caller_done = time.time()
        finally:
            connections.close_all()  # this thread's own database connection, if a send opened one

    threads = [threading.Thread(target=caller, name=f"lab-caller-{i}", daemon=True) for i in range(callers)]
    for thread in threads:
        thread.start()
    stop = threading.Event()
    t0 = time.time() + 0.2
    faults = threading.Thread(target=timeline.run, args=(t0, stop), name="lab-faults", daemon=True)
    faults.start()
    finished = False
    try:
        for i, order in enumerate(orders):
            order.arrival = t0 + i / rate
            delay = order.arrival - time.time()
            if delay > 0:
                time.sleep(delay)
            due.put(order)
            if i % max(1, int(rate)) == 0:
                done = sum(1 for o in orders[:i] if o.caller_done)
                progress(f"{run}: {i}/{count} sent, {done} returned to the caller")
        finished = True
    finally:
        if not finished:  # interrupted: drop what is still due, end the fault timeline now
            stop.set()
            while not due.empty():
                due.get_nowait()
        for _ in threads:
            due.put(None)
        for thread in threads:
            thread.join()
        faults.join()  # on a full run the timeline ended within the load (the fault ends before it)
        stop.set()
    return orders
