"""A Celery app written with nothing but Celery, as teams already have them: what the agent attaches to.

No `flows`, no Django, no Flowscope import: `flowscope-agent celery -A tests.attached_app worker`
is the only thing that connects it. ATTACHED_BROKER_URL points it at the tests' broker (Redis or
the run's RabbitMQ vhost), ATTACHED_REDIS_URL at a Redis where its tasks leave what they saw.
"""

import json
import os
import time

import redis
from celery import Celery
from celery.exceptions import Reject


class OldStyleSettings:
    """Configured the way many real apps still are: pre-4.0 setting names, a queue of its own."""

    BROKER_URL = os.environ.get("ATTACHED_BROKER_URL", "redis://127.0.0.1:6379/0")
    CELERY_DEFAULT_QUEUE = "shop"
    CELERY_IGNORE_RESULT = True
    CELERYD_PREFETCH_MULTIPLIER = 1


app = Celery("shop")
app.config_from_object(OldStyleSettings)


@app.task(name="shop.place_order")
def place_order(order_id: str) -> str:
    """Sends a task from a task: both must stay in one trace."""
    charge_card.delay(order_id)
    return order_id


@app.task(name="shop.charge_card")
def charge_card(order_id: str) -> str:
    return order_id


@app.task(name="shop.broken")
def broken(order_id: str) -> None:
    raise ValueError(f"card declined for {order_id}")


@app.task(name="shop.work")
def work(seconds: float) -> float:
    """Busy for `seconds`: its wall time shows whether the agent made it wait."""
    started = time.perf_counter()
    time.sleep(seconds)
    return time.perf_counter() - started


_redis: redis.Redis | None = None  # made on first use in each pool process, never before the fork


def counter() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ.get("ATTACHED_REDIS_URL") or OldStyleSettings.BROKER_URL)
    return _redis


@app.task(name="shop.tick")
def tick(key: str) -> None:
    """A no-op that counts itself done, so a test sees how many ran and when the last did."""
    counter().incr(key)


@app.task(name="shop.flaky", bind=True, max_retries=3, default_retry_delay=0)
def flaky(self, key: str) -> str:
    """Fails its first attempt and asks Celery to retry it; the second succeeds."""
    if counter().incr(key) == 1:
        raise self.retry(exc=ConnectionError("payment gateway timed out"))
    return "paid"


@app.task(name="shop.ship")
def ship(order_id: str, *, carrier: str = "post") -> str:
    """Fails for a carrier that does not exist, with no retry: a dead letter at its first attempt.
    What it was called with is left in Redis, for a test to see what a requeue delivered."""
    counter().rpush(f"shipped:{order_id}", json.dumps({"args": [order_id], "kwargs": {"carrier": carrier}}))
    if carrier == "nowhere":
        raise LookupError(f"no carrier named {carrier!r} for {order_id}")
    return carrier


@app.task(name="shop.settle")
def settle(key: str, amount: int) -> int:
    """Fails the first time (the ledger is locked), succeeds when run again: a requeue heals it."""
    if counter().incr(key) == 1:
        raise RuntimeError(f"ledger locked while settling {amount}")
    return amount


@app.task(name="shop.refund", bind=True, max_retries=1, default_retry_delay=0)
def refund(self, order_id: str) -> None:
    """Always fails and asks for a retry: after its one retry, max_retries is exceeded and it dies."""
    counter().incr(f"refund:{order_id}")
    raise self.retry(exc=TimeoutError(f"bank did not answer for {order_id}"))


@app.task(name="shop.stuck", time_limit=1)
def stuck(order_id: str) -> None:
    """Runs past its hard time limit: the pool process is killed, the main process reports it."""
    counter().incr(f"stuck:{order_id}")
    time.sleep(30)


@app.task(name="shop.refuse", acks_late=True)
def refuse(order_id: str) -> None:
    """Rejects its message without requeue: it will never run again."""
    counter().incr(f"refused:{order_id}")
    raise Reject(f"order {order_id} is not ours", requeue=False)


@app.task(name="shop.collect", bind=True, max_retries=2, default_retry_delay=0)
def collect(self, key: str) -> str:
    """Dies at once the first time; run again, it asks for one retry and then succeeds."""
    runs = counter().incr(key)
    if runs == 1:
        raise KeyError(f"no invoice {key}")
    if runs == 2:
        raise self.retry(exc=ConnectionError("ledger busy"))
    return "collected"
