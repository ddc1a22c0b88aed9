"""Broker transports for the claim-window check (test_claim_window.py): each SIGKILLs its whole
worker at the Nth message of the check's that the worker takes, at the moment kombu records it as held (Redis) or
first sees it (RabbitMQ).

A worker runs on one of these when its environment names it in FLOWS_TEST_BROKER_TRANSPORT
(tests/settings.py reads it) and sets FLOWS_TEST_KILL_AT_TAKE=N. Kombu calls QoS.append with a
message the channel has just taken off its queue, before anything else sees it: on kombu's own
transport the message is then in no list and no hash (BRPOP removed it; append would have
recorded it), on Flowscope's it was recorded by the claim that took it. Before dying, the hook
writes the message's delivery tag and payload key to KILLED_AT, so the check can look for it.

On RabbitMQ the broker records the delivery as unacknowledged on the worker's channel before
sending it; the earliest moment the worker has it is kombu's Channel.message_to_python, which
turns each delivery into a kombu message for the consumer (kombu 5.7.0).
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from kombu.transport import pyamqp as kombu_pyamqp
from kombu.transport import redis as kombu_redis

from flows.consume import broker
from tracing.redis import get_redis, key

KILL_AT_ENV = "FLOWS_TEST_KILL_AT_TAKE"
TRANSPORT_ENV = "FLOWS_TEST_BROKER_TRANSPORT"
KILLED_AT = key("rel", "killed-at-take")

_taken = 0


def _payload_key(message: Any) -> str:
    try:
        return str(json.loads(message.body)[0][0]["payload"]["key"])
    except (ValueError, LookupError, TypeError):
        return ""


def _took(message: Any, delivery_tag: str) -> None:
    global _taken
    payload_key = _payload_key(message)
    if not payload_key:
        return  # not a message of the check's: a worker also takes control broadcasts and replies
    _taken += 1
    if str(_taken) == os.environ.get(KILL_AT_ENV):
        get_redis().hset(KILLED_AT, mapping={"tag": delivery_tag, "key": payload_key, "pid": os.getpid()})
        os.killpg(os.getpgrp(), signal.SIGKILL)  # the worker runs in a process group of its own


class KillOnTake:
    def append(self, message: Any, delivery_tag: str) -> None:
        _took(message, delivery_tag)
        super().append(message, delivery_tag)  # type: ignore[misc]


class KombuQoS(KillOnTake, kombu_redis.QoS):
    pass


class KombuChannel(kombu_redis.Channel):
    QoS = KombuQoS


class KombuTransport(kombu_redis.Transport):
    """Kombu 5.7.0's own Redis transport: BRPOP, then QoS.append records the message."""

    Channel = KombuChannel


class FlowscopeQoS(KillOnTake, broker.Channel.QoS):
    pass


class FlowscopeChannel(broker.Channel):
    QoS = FlowscopeQoS


class FlowscopeTransport(broker.Transport):
    """Flowscope's transport (flows.consume.broker), as configured for every worker."""

    Channel = FlowscopeChannel


class RabbitChannel(kombu_pyamqp.Channel):
    def message_to_python(self, raw_message: Any) -> Any:
        message = super().message_to_python(raw_message)
        _took(message, str(message.delivery_tag))
        return message


class RabbitConnection(kombu_pyamqp.Connection):
    Channel = RabbitChannel  # the py-amqp transport makes its channels through its connection


class RabbitTransport(kombu_pyamqp.Transport):
    """Kombu 5.7.0's py-amqp transport, as every worker on RabbitMQ uses it."""

    Connection = RabbitConnection
