"""Fault injection for the demo handlers, changeable while the demo runs.

Each handler's profile (error rate, latency, poison rate) lives in a Redis hash, read at most
once a second per process, so `manage.py faults billing_on_order_placed --error-rate 0.5`
shows up in the flows within a second.
"""

from __future__ import annotations

import dataclasses
import random
import time

from flows.core.errors import PoisonMessage
from tracing.redis import get_redis, key

_CACHE_SECONDS = 1.0
_cache: dict[str, tuple[float, Fault]] = {}


class InjectedFault(RuntimeError):
    """A failure the demo asked for; retried like any other."""


@dataclasses.dataclass(frozen=True)
class Fault:
    error_rate: float = 0.0
    latency_ms: float = 0.0
    poison_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("error_rate", "poison_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie between 0 and 1, got {getattr(self, name)}")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must not be negative, got {self.latency_ms}")


def _key(consumer: str) -> str:
    return key("faults", consumer)


def set_fault(consumer: str, fault: Fault) -> None:
    get_redis().hset(_key(consumer), mapping={k: str(v) for k, v in dataclasses.asdict(fault).items()})


def clear_faults() -> None:
    redis = get_redis()
    for name in redis.scan_iter(match=_key("*")):
        redis.delete(name)


def get_fault(consumer: str) -> Fault:
    raw = get_redis().hgetall(_key(consumer))
    return Fault(**{k.decode(): float(v) for k, v in raw.items()}) if raw else Fault()


def all_faults() -> dict[str, Fault]:
    redis = get_redis()
    prefix = _key("")
    return {name.decode()[len(prefix) :]: get_fault(name.decode()[len(prefix) :]) for name in redis.scan_iter(match=_key("*"))}


def inject(consumer: str) -> None:
    """Call first thing in a demo handler: sleep, fail or reject as the profile says."""
    now = time.monotonic()
    cached = _cache.get(consumer)
    if cached is None or now - cached[0] > _CACHE_SECONDS:
        cached = (now, get_fault(consumer))
        _cache[consumer] = cached
    fault = cached[1]
    if fault.latency_ms:
        time.sleep(random.uniform(0.5, 1.5) * fault.latency_ms / 1000)
    roll = random.random()
    if roll < fault.poison_rate:
        raise PoisonMessage(f"{consumer}: injected poison (payload rejected by the downstream service)")
    if roll < fault.poison_rate + fault.error_rate:
        raise InjectedFault(f"{consumer}: injected failure (downstream answered 503)")


# What `make demo` starts with: enough trouble to show retries, dead letters, compensations
# and back-pressure, not so much that nothing succeeds.
DEMO_PROFILE = {
    # Handlers that write run inside a transaction: keep their latency low, since SQLite
    # (the embedded default) lets one writer in at a time.
    "billing_on_order_placed": Fault(error_rate=0.05, latency_ms=5),
    "notify_on_order_placed": Fault(poison_rate=0.02, latency_ms=5),
    "shipping_on_order_placed": Fault(latency_ms=40),
    "charge_card": Fault(error_rate=0.4, latency_ms=5),
    "book_shipment": Fault(error_rate=0.05, latency_ms=5),
    "refund_card": Fault(error_rate=0.02),
    "legacy_credit_check": Fault(latency_ms=250, error_rate=0.03),
    "render_invoice": Fault(latency_ms=1200, error_rate=0.02),
}
