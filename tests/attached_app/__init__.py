"""A Celery app written with nothing but Celery, as teams already have them: what the agent attaches to.

No `flows`, no Django, no Flowscope import: `flowscope-agent celery -A tests.attached_app worker`
is the only thing that connects it. ATTACHED_BROKER_URL points it at the tests' own Redis.
"""

import os
import time

import redis
from celery import Celery


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
        _redis = redis.Redis.from_url(OldStyleSettings.BROKER_URL)
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
