"""Per-message delivery status in Redis: which subscriber got a copy, and how it went.

Fan-out and competing consumers record here (one pipelined round trip per hop); entries
expire after FLOWS_DELIVERY_TTL_SECONDS, by when the spans tell the same story.
"""

from __future__ import annotations

from django.conf import settings

from tracing.redis import get_redis, key

PENDING = "pending"
RETRYING = "retrying"
SUCCEEDED = "succeeded"
DEAD = "dead"


def _status_key(message_id: str) -> str:
    return key("delivery", message_id)


def _spread_key(queue: str) -> str:
    return key("spread", queue)


def mark_pending(message_id: str, consumers: list[str]) -> None:
    pipe = get_redis().pipeline(transaction=False)
    pipe.hset(_status_key(message_id), mapping=dict.fromkeys(consumers, PENDING))
    pipe.expire(_status_key(message_id), settings.FLOWS_DELIVERY_TTL_SECONDS)
    pipe.execute()


def mark(message_id: str, consumer: str, status: str, *, worker: str = "", queue: str = "") -> None:
    pipe = get_redis().pipeline(transaction=False)
    fields = {consumer: status}
    if worker:
        fields[f"{consumer}@worker"] = worker
    pipe.hset(_status_key(message_id), mapping=fields)
    pipe.expire(_status_key(message_id), settings.FLOWS_DELIVERY_TTL_SECONDS)
    if worker and queue and status == SUCCEEDED:
        pipe.hincrby(_spread_key(queue), worker, 1)
    pipe.execute()


def statuses(message_id: str) -> dict[str, dict[str, str]]:
    """{consumer: {"status": ..., "worker": ...}} for one message."""
    raw = {k.decode(): v.decode() for k, v in get_redis().hgetall(_status_key(message_id)).items()}
    result: dict[str, dict[str, str]] = {}
    for field, value in raw.items():
        consumer, _, extra = field.partition("@")
        entry = result.setdefault(consumer, {"status": PENDING, "worker": ""})
        entry["worker" if extra == "worker" else "status"] = value
    return result


def spread(queue: str) -> dict[str, int]:
    """How many messages of `queue` each worker process handled."""
    return {k.decode(): int(v) for k, v in get_redis().hgetall(_spread_key(queue)).items()}
