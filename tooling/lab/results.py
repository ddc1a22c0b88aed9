"""From what was measured (orders as the callers saw them, the services' effects, dead letters)
to the figures of one scenario and style: counts that add up, latencies, recovery, time series.

An order is *completed* when every service recorded its effect, *failed* when it did not and
the caller saw an error or Flowscope dead-lettered a copy, and *lost* otherwise: sent, yet
neither done nor reported.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Any

from tooling.lab.effects import SERVICES
from tooling.lab.load import Order


@dataclasses.dataclass(frozen=True)
class Measured:
    orders: list[Order]
    effects: dict[str, dict[str, float]]  # order_id -> service -> first effect time
    duplicates: int
    dead: dict[str, float]  # order_id -> when its first copy was dead-lettered
    fault: tuple[float, float] | None  # wall clock: fault on, fault over
    queue_depth: list[tuple[float, dict[str, int]]]  # (wall clock, depth per service)
    backpressure_activations: int


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def completion_time(m: Measured, order: Order) -> float | None:
    done = m.effects.get(order.order_id, {})
    return max(done.values()) if len(done) == len(SERVICES) else None


def settle_time(m: Measured, order: Order) -> float | None:
    """When the order's fate was known: completed, or failed as the caller or a dead letter said."""
    done = completion_time(m, order)
    if done is not None:
        return done
    failures = [t for t in (order.caller_done if order.caller_error else None, m.dead.get(order.order_id)) if t]
    return min(failures) if failures else None


def unsettled(m: Measured) -> int:
    return sum(1 for o in m.orders if settle_time(m, o) is None)


def figures(m: Measured) -> dict[str, Any]:
    sent = len(m.orders)
    completed = [o for o in m.orders if completion_time(m, o) is not None]
    failed = [o for o in m.orders if completion_time(m, o) is None and settle_time(m, o) is not None]
    e2e = [completion_time(m, o) - o.arrival for o in completed]  # type: ignore[operator]
    caller = [o.caller_done - o.arrival for o in m.orders if o.caller_done]
    t0 = min(o.arrival for o in m.orders)
    last = max((completion_time(m, o) for o in completed), default=None)
    return {
        "sent": sent,
        "completed": len(completed),
        "failed": len(failed),
        "lost": sent - len(completed) - len(failed),
        # Some services did their part, not all: what a caller must clean up, or a saga compensate.
        "partial": sum(1 for o in m.orders if completion_time(m, o) is None and m.effects.get(o.order_id)),
        "duplicate_effects": m.duplicates,
        "completed_per_s": round(len(completed) / (last - t0), 2) if last and last > t0 else 0.0,
        "e2e_p50_ms": _ms(percentile(e2e, 50)),
        "e2e_p99_ms": _ms(percentile(e2e, 99)),
        "caller_p50_ms": _ms(percentile(caller, 50)),
        "caller_p99_ms": _ms(percentile(caller, 99)),
        "caller_failures": sum(1 for o in m.orders if o.caller_error),
        "dead_lettered": len(m.dead),
        "recovery_s": recovery_seconds(m),
        "backpressure_activations": m.backpressure_activations,
        "fault_window_s": [round(m.fault[0] - t0, 2), round(m.fault[1] - t0, 2)] if m.fault else None,
        "series": series(m, t0),
        "caller_errors": _error_sample(m.orders),
    }


def recovery_seconds(m: Measured) -> float | None:
    """Seconds from the fault's end until its trace is gone: every order that arrived before the
    end is completed or failed, and an order arriving after it has completed as fast as orders
    did before the fault (within twice their p99). None: no fault, or no recovery within the run."""
    if not m.fault:
        return None
    start, end = m.fault
    normal = [t - o.arrival for o in m.orders if o.arrival < start and (t := completion_time(m, o)) is not None]
    limit = 2 * percentile(normal, 99) if normal else float("inf")  # type: ignore[operator]
    before = [settle_time(m, o) for o in m.orders if o.arrival <= end]
    after = [t for o in m.orders if o.arrival > end and (t := completion_time(m, o)) is not None and t - o.arrival <= limit]
    if any(t is None for t in before) or not after:
        return None
    return round(max(0.0, max([*before, min(after)]) - end), 2)  # type: ignore[type-var]


def series(m: Measured, t0: float) -> dict[str, list[Any]]:
    """One-second buckets from the first order: completions and failures by when they happened,
    end-to-end and caller latency by when the order arrived, queue depth as sampled."""
    completed: dict[int, int] = defaultdict(int)
    failed: dict[int, int] = defaultdict(int)
    latency: dict[int, list[float]] = defaultdict(list)
    caller: dict[int, list[float]] = defaultdict(list)
    for order in m.orders:
        if order.caller_done:
            caller[int(order.arrival - t0)].append(order.caller_done - order.arrival)
        done = completion_time(m, order)
        if done is not None:
            completed[int(done - t0)] += 1
            latency[int(order.arrival - t0)].append(done - order.arrival)
        elif (settled := settle_time(m, order)) is not None:
            failed[int(settled - t0)] += 1
    end = max([*completed, *failed, *latency, 0])
    seconds = list(range(end + 1))
    return {
        "t": seconds,
        "completed": [completed.get(s, 0) for s in seconds],
        "failed": [failed.get(s, 0) for s in seconds],
        "e2e_p50_ms": [_ms(percentile(latency.get(s, []), 50)) for s in seconds],
        "e2e_p99_ms": [_ms(percentile(latency.get(s, []), 99)) for s in seconds],
        "caller_p99_ms": [_ms(percentile(caller.get(s, []), 99)) for s in seconds],
        "queue_t": [round(t - t0, 2) for t, _ in m.queue_depth],
        "queue_depth": {service: [d.get(service, 0) for _, d in m.queue_depth] for service in SERVICES} if m.queue_depth else {},
    }


def _error_sample(orders: list[Order]) -> dict[str, int]:
    """The five most common caller errors, with their counts."""
    kinds: dict[str, int] = defaultdict(int)
    for order in orders:
        if order.caller_error:
            kinds[order.caller_error.split(" [", 1)[0][:120]] += 1
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:5])
