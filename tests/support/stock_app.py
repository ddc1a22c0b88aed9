"""A Celery app of nothing but Celery, for tests that check a message the engine builds by hand
(publish_many's) is one a stock worker takes as `apply_async`'s own.

Its one task has the name of the engine's delivery task, not its code: it leaves what it was
given (arguments, and the request Celery made of the message's headers and properties) in
Redis, as JSON in the list STOCK_RECORD_KEY. STOCK_BROKER_URL is the run's broker; on RabbitMQ
its queues are declared as the engine declares them (quorum by default, topic exchanges), or
the broker would refuse one of the two declarations.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery

app = Celery("stock", broker=os.environ.get("STOCK_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_ignore_result=True,
    task_create_missing_queue_type=os.environ.get("STOCK_QUEUE_TYPE", "classic"),
    task_create_missing_queue_exchange_type="topic",
)
_redis: redis.Redis | None = None  # made on first use in each pool process, never before the fork


@app.task(name="flows.deliver", bind=True)
def deliver(self: Any, envelope: Any, consumer: Any) -> None:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ["STOCK_REDIS_URL"])
    request = self.request
    seen = {
        "args": [envelope, consumer],
        "kwargs": request.kwargs,
        "id": request.id,
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "correlation_id": request.correlation_id,
        "retries": request.retries,
        "origin": request.origin,
        "argsrepr": request.argsrepr,
        "ignore_result": request.ignore_result,
        "routing_key": (request.delivery_info or {}).get("routing_key"),
    }
    _redis.rpush(os.environ["STOCK_RECORD_KEY"], json.dumps(seen))
