"""What the downstream services did, kept in Redis by the services themselves.

The lab counts an order complete only when every service recorded its effect: an independent
meter, the same for both styles, so an order neither completed nor failed shows up as lost.
Plain redis-py, no Django: the downstream processes import this and nothing else of Flowscope.
"""

from __future__ import annotations

import redis

SERVICES = ("inventory", "billing", "shipping", "notifications")


def effects_key(run: str) -> str:
    return f"flows:lab:effects:{run}"


def duplicates_key(run: str) -> str:
    return f"flows:lab:duplicates:{run}"


def record(client: redis.Redis, *, run: str, order_id: str, service: str, at: float) -> bool:
    """Store the first effect of `service` for the order; a repeat only counts as a duplicate."""
    if client.hsetnx(effects_key(run), f"{order_id}|{service}", repr(at)):
        return True
    client.incr(duplicates_key(run))
    return False


def read(client: redis.Redis, run: str) -> tuple[dict[str, dict[str, float]], int]:
    """({order_id: {service: first effect time}}, duplicate effects) for one run."""
    by_order: dict[str, dict[str, float]] = {}
    for field, value in client.hgetall(effects_key(run)).items():
        order_id, _, service = field.decode().rpartition("|")
        by_order.setdefault(order_id, {})[service] = float(value)
    return by_order, int(client.get(duplicates_key(run)) or 0)


def forget(client: redis.Redis, run: str) -> None:
    client.delete(effects_key(run), duplicates_key(run))
