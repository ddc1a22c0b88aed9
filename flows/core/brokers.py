"""Which broker carries the engine's messages, and what each can hold.

Redis (kombu's virtual transport, hardened in flows.consume.broker) or RabbitMQ (AMQP, with
durable quorum queues by default). The choice follows CELERY_BROKER_URL's scheme; everything
else (the span sink, the channel layer, the engine's own keys) stays on Redis either way.
"""

from __future__ import annotations

from django.conf import settings
from kombu.transport.native_delayed_delivery import MAX_NUMBER_OF_BITS_TO_USE

REDIS = "redis"
RABBITMQ = "rabbitmq"
_AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")

# Kombu's native delayed delivery counts a delay in whole seconds over 28 binary levels of
# TTL queues: the longest delay RabbitMQ can hold that way, about 8.5 years.
RABBITMQ_MAX_DELAY_SECONDS = 2**MAX_NUMBER_OF_BITS_TO_USE - 1


def kind_of(url: str) -> str:
    return RABBITMQ if url.split("://", 1)[0].split("+", 1)[0] in _AMQP_SCHEMES else REDIS


def broker_kind() -> str:
    return kind_of(settings.CELERY_BROKER_URL)


def max_delay() -> tuple[float, str]:
    """The longest delay the broker holds for a message before it is delivered, and why."""
    if broker_kind() == RABBITMQ:
        return float(RABBITMQ_MAX_DELAY_SECONDS), f"the most RabbitMQ's native delayed delivery holds ({RABBITMQ_MAX_DELAY_SECONDS}s)"
    # Redis holds a delayed message as unacknowledged; past the visibility timeout it would be
    # handed to a second worker, and the message would run twice.
    return settings.FLOWS_VISIBILITY_TIMEOUT / 2, f"half the broker visibility timeout ({settings.FLOWS_VISIBILITY_TIMEOUT}s)"
