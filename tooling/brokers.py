"""Which broker the demo, the bench and the lab run on, and what they need of it on either kind.

The choice is the engine's: CELERY_BROKER_URL's scheme (flows.core.brokers). BROKER=rabbitmq
is the short way to ask for RabbitMQ: the configured URL if it is an AMQP one, the local
RabbitMQ's default (tooling.rabbitmq.DEFAULT_URL) otherwise. BROKER=redis asks for Redis: the
configured URL if it is a Redis one, REDIS_URL otherwise. The commands hand the URL they chose
to every process they start as CELERY_BROKER_URL, so those load their settings on that broker.
"""

from __future__ import annotations

import os
from typing import Any

from amqp.exceptions import NotFound
from celery import current_app
from django.conf import settings

from flows.core.brokers import RABBITMQ, REDIS, broker_kind, kind_of
from flows.produce.backpressure import get_redis_broker
from tooling.rabbitmq import DEFAULT_URL, RabbitMQUnavailable, ensure_running

BROKER_ENV = "BROKER"


class BrokerNotReady(RuntimeError):
    """BROKER names no broker we know, or no RabbitMQ answers (the message says what to do)."""


def chosen_url() -> str:
    """The broker URL a command runs on, from BROKER and the settings (the module docstring)."""
    wanted = os.environ.get(BROKER_ENV, "").strip().lower()
    configured = settings.CELERY_BROKER_URL
    if wanted == RABBITMQ:
        return configured if kind_of(configured) == RABBITMQ else DEFAULT_URL
    if wanted == REDIS:
        return configured if kind_of(configured) == REDIS else settings.REDIS_URL
    if wanted:
        raise BrokerNotReady(f"BROKER must be redis or rabbitmq, not {wanted!r}")
    return configured


def ready_url() -> str:
    """chosen_url(), with a RabbitMQ answering there (started when it is local and down)."""
    url = chosen_url()
    if kind_of(url) == RABBITMQ:
        try:
            ensure_running(url)
        except RabbitMQUnavailable as exc:
            raise BrokerNotReady(str(exc)) from None
    return url


def purge(*queues: str) -> None:
    """Empty the queues on the configured broker; a queue not declared yet is empty already."""
    if broker_kind() != RABBITMQ:
        get_redis_broker().delete(*queues)
        return
    with current_app.connection_for_write() as connection:
        for queue in queues:
            channel = connection.channel()
            try:
                channel.queue_purge(queue)
            except NotFound:
                pass  # the broker closed the channel on the 404; the next queue gets a new one
            finally:
                if channel.is_open:
                    channel.close()


def server_version() -> str:
    """The broker's version as it tells when connected ("unreachable" when it does not answer)."""
    try:
        if broker_kind() == RABBITMQ:
            with current_app.connection_for_read() as connection:
                connection.ensure_connection(max_retries=1)
                properties: dict[str, Any] = connection.connection.server_properties
                return f"RabbitMQ {properties.get('version', '?')}"
        return f"Redis {get_redis_broker().info('server').get('redis_version', '?')}"
    except Exception:  # noqa: BLE001 - a figure, not a check: the run itself says when the broker fails
        return "unreachable"
