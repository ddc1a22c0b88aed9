"""Competing consumers: many worker processes on one queue; each message records who took it."""

from __future__ import annotations

from typing import Any

from flows.core import deliveries
from flows.core.message import Message
from flows.patterns.base import Pattern


class CompetingConsumers(Pattern):
    name = "competing_consumers"

    def after_success(self, message: Message, result: Any) -> None:
        deliveries.mark(message.message_id, message.handler.consumer, deliveries.SUCCEEDED, worker=message.worker, queue=message.handler.queue)

    def on_retry(self, message: Message, exc: BaseException, delay: float) -> None:
        deliveries.mark(message.message_id, message.handler.consumer, deliveries.RETRYING, worker=message.worker)

    def after_dead(self, message: Message, exc: BaseException) -> None:
        deliveries.mark(message.message_id, message.handler.consumer, deliveries.DEAD, worker=message.worker)
