"""What a check reads of the broker, on either: messages waiting on queues, and deliveries a
worker has taken and not yet acknowledged ("held").

On Redis a held delivery sits in kombu's `unacked` hash (every queue's, in one hash) until it is
acknowledged or restored. On RabbitMQ the broker keeps it per channel: `rabbitmqctl list_channels`
answers from each channel process, so its count is current. (`list_queues` is not: for quorum
queues RabbitMQ 3.10 reports counts sampled every few seconds, and a fresh 0 may be stale.)
"""

from __future__ import annotations

import shutil
import subprocess
from urllib.parse import unquote, urlsplit

from django.conf import settings

from flows.core.registry import catalog
from tests.support.brokers import on_rabbitmq, purge, waiting
from tracing.redis import get_redis

CTL_TIMEOUT_SECONDS = 60


def reliability_queues() -> list[str]:
    """The queues of the reliability catalog ("r.*"): no other test's worker consumes them."""
    return sorted({h.queue for h in catalog.handlers.values() if h.queue.startswith("r.")})


def queued(*queues: str) -> int:
    """Messages ready on `queues`, not yet taken by a worker."""
    return sum(waiting(queue) for queue in queues)


def held() -> int:
    """Deliveries taken by a worker and not yet acknowledged, on every queue of the run."""
    if not on_rabbitmq():
        return int(get_redis().hlen("unacked"))
    vhost = unquote(urlsplit(settings.CELERY_BROKER_URL).path[1:]) or "/"
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    done = subprocess.run([ctl, "list_channels", "-q", "--no-table-headers", "vhost", "messages_unacknowledged"], capture_output=True, text=True, timeout=CTL_TIMEOUT_SECONDS, check=True)
    return sum(int(count) for name, _, count in (line.rpartition("\t") for line in done.stdout.splitlines()) if name == vhost)


def settled(*queues: str) -> bool:
    """Nothing waiting on `queues` and nothing held anywhere: no worker will run anything more."""
    return queued(*queues) == 0 and held() == 0


def empty_reliability_queues() -> None:
    """Empty the "r.*" queues, and on Redis what killed workers left held (RabbitMQ gives a dead
    worker's deliveries back to their queue as soon as its connection drops)."""
    if on_rabbitmq():
        purge(*reliability_queues())
        return
    redis = get_redis()
    for name in redis.scan_iter(match="r.*", count=1000):
        redis.delete(name)
    redis.delete("unacked", "unacked_index")
