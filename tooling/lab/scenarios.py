"""The lab's scenarios and its two sizes (full and --quick), with the workload they share."""

from __future__ import annotations

import dataclasses

FAULTY_SERVICE = "billing"  # second in the synchronous chain: a failure there leaves inventory done
BASE_MS = 25.0  # each service's own time per request
CAPACITY = 4  # requests a service works on at once; more wait their turn
CALLERS = 16  # caller threads, the same in both styles
ASYNC_CONCURRENCY = 4  # consumer threads per downstream service, so a service never sees more than it works on
TIMEOUT_S = 1.0  # per HTTP call, in both styles
SYNC_RETRIES = 1  # the synchronous chain retries a failed call once, at once, as HTTP clients commonly do


def queue_name(service: str) -> str:
    """The asynchronous style's queue for one service. Not "lab.billing": on RabbitMQ a queue
    whose name ends with ".billing" would get the delayed messages meant for the demo's
    "billing" (delayed delivery binds by that suffix), and the catalog check refuses the pair
    when both catalogs are loaded."""
    return f"lab_{service}"


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    fault: str  # "", "slow", "fail" or "down"


SCENARIOS = (
    Scenario("steady", "steady load", ""),
    Scenario("slow", f"{FAULTY_SERVICE} 10 times slower", "slow"),
    Scenario("failing", f"{FAULTY_SERVICE} failing 20 % of requests", "fail"),
    Scenario("outage", f"{FAULTY_SERVICE} down, then back", "down"),
)
SCENARIO_NAMES = tuple(s.name for s in SCENARIOS)
STYLES = ("sync", "async")


@dataclasses.dataclass(frozen=True)
class Size:
    rate: float  # orders a second, arriving on a fixed schedule whatever the callers manage
    steady_s: float
    before_s: float  # load before the fault
    fault_s: float
    outage_s: float
    after_s: float  # load after the fault ends
    settle_s: float  # longest wait, after the load, for orders to complete or fail

    def timeline(self, scenario: Scenario) -> tuple[float, float, float]:
        """(load seconds, fault start, fault end), offsets from the first order; no fault: (d, 0, 0)."""
        if not scenario.fault:
            return self.steady_s, 0.0, 0.0
        fault = self.outage_s if scenario.fault == "down" else self.fault_s
        return self.before_s + fault + self.after_s, self.before_s, self.before_s + fault

    def scaled(self, factor: float) -> Size:
        """The same load at the same rate, each stretch of it `factor` times as long; the settle
        time, only a longest wait, stays."""
        stretches = ("steady_s", "before_s", "fault_s", "outage_s", "after_s")
        return dataclasses.replace(self, **{name: getattr(self, name) * factor for name in stretches})


FULL = Size(rate=20.0, steady_s=20.0, before_s=8.0, fault_s=20.0, outage_s=30.0, after_s=15.0, settle_s=75.0)
QUICK = Size(rate=8.0, steady_s=2.0, before_s=1.0, fault_s=2.0, outage_s=3.0, after_s=2.0, settle_s=40.0)
