"""The worker's broker consumer: Celery's own, made to survive the broker vanishing under it.

Celery 5.7.0 closes a lost connection twice: `collect()` detaches the transport, then `close()`
asks the Redis channel to put its unacknowledged deliveries back, which needs that transport
and raises AttributeError. Celery calls that an unrecoverable error and the worker exits, so a
Redis restart under load could take every worker down (seen in tests/reliability). The
connection is gone either way and the deliveries stay in Redis's unacknowledged set (restored
after the visibility timeout), so the right move is to go on to the reconnect.
"""

from __future__ import annotations

import logging

from celery.worker.consumer import Consumer as CeleryConsumer

log = logging.getLogger(__name__)


class Consumer(CeleryConsumer):
    def on_connection_error_after_connected(self, exc: Exception) -> None:
        try:
            super().on_connection_error_after_connected(exc)
        except AttributeError:
            log.warning("the lost broker connection could not be closed cleanly; reconnecting anyway", exc_info=True)
