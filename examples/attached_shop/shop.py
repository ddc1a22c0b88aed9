"""The shop's Celery app and tasks: plain Celery, as teams already have them.

SHOP_BROKER_URL is its broker (the demo's, in queues of its own), SHOP_RESULT_BACKEND where a
chord's parts meet (a Redis). Now and then a card is declined (no retry: a dead letter, which a
requeue will most likely get through) and the exchange-rate service times out (retried; after
three retries, a dead letter too).
"""

from __future__ import annotations

import os
import random

from celery import Celery, shared_task

from examples.attached_shop import APP, QUEUES

DECLINED = 0.15  # of cards charged
UNANSWERED = 0.4  # of exchange-rate calls

app = Celery(APP, broker=os.environ.get("SHOP_BROKER_URL", "redis://127.0.0.1:6379/0"), backend=os.environ.get("SHOP_RESULT_BACKEND", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_default_queue=QUEUES[0],
    task_routes={"attached_shop.notify": {"queue": QUEUES[1]}},
    result_expires=600,  # a chord's results are needed for seconds, not kept
)


class CardDeclined(Exception):
    pass


@shared_task(name="attached_shop.reserve_stock")
def reserve_stock(order_id: str) -> str:
    return order_id


@shared_task(name="attached_shop.charge_card")
def charge_card(order_id: str) -> str:
    """Declined now and then, with no retry: the chain stops and the charge becomes a dead letter."""
    if random.random() < DECLINED:
        raise CardDeclined(f"card declined for order {order_id}")
    return order_id


@shared_task(name="attached_shop.ship_order")
def ship_order(order_id: str) -> str:
    return f"{order_id} shipped"


@shared_task(name="attached_shop.notify")
def notify(order_id: str, channel: str) -> str:
    return f"{order_id} told by {channel}"


@shared_task(name="attached_shop.price_item")
def price_item(order_id: str, sku: str) -> int:
    return random.randint(100, 5_000)


@shared_task(name="attached_shop.total")
def total(prices: list[int], order_id: str) -> int:
    """The chord's callback: runs once every price is in."""
    return sum(prices)


@shared_task(name="attached_shop.fetch_exchange_rate", bind=True, max_retries=3, default_retry_delay=1)
def fetch_exchange_rate(self, currency: str) -> float:
    if random.random() < UNANSWERED:
        raise self.retry(exc=ConnectionError(f"exchange-rate service did not answer for {currency}"))
    return round(random.uniform(0.8, 1.2), 4)
