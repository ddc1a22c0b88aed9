"""Back-pressure: queue depth against watermarks, checked before every publish.

Depth is read from the broker (the Redis lists that hold each queue, or RabbitMQ's count of
ready messages from a passive declare) at most every
FLOWS_BACKPRESSURE_REFRESH_SECONDS per queue and process, so a hot producer costs the broker one
round trip per refresh, not per message. A queue turns "throttled" at its high watermark and
"open" again only at its low one (hysteresis), so producers do not flap around a single mark.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import redis
from django.conf import settings

from flows.core.brokers import RABBITMQ, broker_kind
from flows.core.errors import QueueFull
from flows.core.registry import QueuePolicy, catalog
from flows.produce import rabbitmq
from tracing.redis import get_redis, key, redis_at

# kombu's Redis transport keeps priority levels 3, 6 and 9 in lists beside the queue's own.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
STATE_KEY = key("backpressure", "state")
ACTIVATIONS_KEY = key("backpressure", "activations")


def get_redis_broker() -> redis.Redis:
    """The Redis the broker's queues are in (often, not always, the engine's own)."""
    return redis_at(settings.CELERY_BROKER_URL)


def queue_depth(queue: str) -> int:
    return queue_gauges([queue])[queue][0]


def queue_gauges(queues: list[str]) -> dict[str, tuple[int, int | None]]:
    """(messages waiting, consumers) of each queue, as the broker tells: on RabbitMQ both, by a
    passive declare; on Redis the lengths of the queue's lists, and consumers unknown (None)."""
    if broker_kind() == RABBITMQ:
        return dict(rabbitmq.queue_gauges(queues))
    pipe = get_redis_broker().pipeline(transaction=False)
    for queue in queues:
        for suffix in _PRIORITY_SUFFIXES:
            pipe.llen(queue + suffix)
    lengths = pipe.execute()
    step = len(_PRIORITY_SUFFIXES)
    return {queue: (sum(lengths[i * step : (i + 1) * step]), None) for i, queue in enumerate(queues)}


def policy_for(queue: str) -> QueuePolicy | None:
    override = settings.FLOWS_BACKPRESSURE.get(queue)
    declared = catalog.queues.get(queue)
    if override is None:
        return declared
    base = dataclasses.asdict(declared) if declared else {"name": queue}
    return QueuePolicy(**{**base, **override, "name": queue})


@dataclasses.dataclass
class _Gauge:
    depth: int = 0
    read_at: float = float("-inf")
    throttled: bool = False


class BackPressure:
    def __init__(self) -> None:
        self._gauges: dict[str, _Gauge] = {}
        self._lock = threading.Lock()

    def forget(self) -> None:
        """Drop every cached depth, so the next check reads the broker."""
        with self._lock:
            self._gauges.clear()

    def admit(self, queue: str) -> None:
        """Return when `queue` may take one more message; raise QueueFull when it may not."""
        policy = policy_for(queue)
        if policy is None:
            return
        if not self._throttled(policy, max_age=settings.FLOWS_BACKPRESSURE_REFRESH_SECONDS):
            return
        if policy.mode == "raise":
            raise QueueFull(queue, self._gauges[queue].depth, policy.high)
        started = time.monotonic()
        deadline = started + policy.block_timeout
        while time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            if not self._throttled(policy, max_age=0):
                return
        raise QueueFull(queue, self._gauges[queue].depth, policy.high, waited=time.monotonic() - started)

    def _throttled(self, policy: QueuePolicy, *, max_age: float) -> bool:
        now = time.monotonic()
        with self._lock:
            gauge = self._gauges.setdefault(policy.name, _Gauge())
            if now - gauge.read_at < max_age:
                return gauge.throttled
        depth = queue_depth(policy.name)
        with self._lock:
            was = gauge.throttled
            gauge.depth, gauge.read_at = depth, now
            gauge.throttled = depth >= policy.high or (was and depth > policy.low)
            changed = gauge.throttled != was
            throttled = gauge.throttled
        if changed:
            pipe = get_redis().pipeline(transaction=False)
            pipe.hset(STATE_KEY, policy.name, "throttled" if throttled else "open")
            if throttled:
                pipe.hincrby(ACTIVATIONS_KEY, policy.name, 1)
            pipe.execute()
        return throttled


backpressure = BackPressure()


@dataclasses.dataclass(frozen=True)
class QueueStatus:
    name: str
    depth: int
    consumers: int | None  # None where the broker does not say (Redis)
    high: int | None
    low: int | None
    mode: str | None
    state: str  # "open", "throttled" or "unlimited"
    activations: int


def queue_statuses() -> list[QueueStatus]:
    """Depth, consumers, watermarks and back-pressure state of every queue a handler consumes."""
    store = get_redis()
    states = {k.decode(): v.decode() for k, v in store.hgetall(STATE_KEY).items()}
    activations = {k.decode(): int(v) for k, v in store.hgetall(ACTIVATIONS_KEY).items()}
    names = sorted(set(catalog.queue_names()) | set(catalog.queues))
    gauges = queue_gauges(names)
    statuses = []
    for name in names:
        policy = policy_for(name)
        depth, consumers = gauges[name]
        if policy is None:
            state = "unlimited"
        else:
            # The depth is fresh; the recorded state tells which side of the hysteresis band we are on.
            was_throttled = states.get(name) == "throttled"
            state = "throttled" if depth >= policy.high or (was_throttled and depth > policy.low) else "open"
        statuses.append(
            QueueStatus(
                name=name,
                depth=depth,
                consumers=consumers,
                high=policy.high if policy else None,
                low=policy.low if policy else None,
                mode=policy.mode if policy else None,
                state=state,
                activations=activations.get(name, 0),
            )
        )
    return statuses
