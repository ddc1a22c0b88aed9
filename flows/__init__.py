"""Flowscope's integration engine: declare message types, handlers and sagas; send messages.

    import flows

    flows.message_type("order.placed", pattern="fan_out", schemas={1: OrderPlaced})

    @flows.handler("order.placed", queue="inventory", idempotent=True)
    def reserve(message: flows.Message) -> None: ...

    flows.send("order.placed", {"order_id": "A-1"})
    reply = flows.request("credit.check", {"customer": "c-9"}, timeout=5)
    flows.start_saga("payment", {"order_id": "A-1"})

Names resolve lazily so that importing `flows` never loads Django models too early.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Backoff": "flows.core.retry",
    "Envelope": "flows.core.envelope",
    "Message": "flows.core.message",
    "handler": "flows.core.registry",
    "message_type": "flows.core.registry",
    "queue": "flows.core.registry",
    "catalog": "flows.core.registry",
    "saga": "flows.core.sagas",
    "step": "flows.core.sagas",
    "send": "flows.patterns.sending",
    "request": "flows.patterns.sending",
    "request_async": "flows.patterns.sending",
    "start_saga": "flows.patterns.sending",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flows' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_EXPORTS)
