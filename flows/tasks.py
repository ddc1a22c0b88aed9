"""Celery tasks: thin interfaces over the runtime and the sweeper."""

from __future__ import annotations

import os
from typing import Any

from celery import shared_task

from flows import runtime, sagas


@shared_task(name="flows.deliver", bind=True, acks_late=True, reject_on_worker_lost=True)
def deliver(self: Any, *args: Any, **kwargs: Any) -> str:
    # Arguments are checked by the runtime, not by Python's call, so a malformed message
    # becomes a dead letter instead of a TypeError that Celery would acknowledge and drop.
    raw = args[0] if args else kwargs.get("envelope")
    consumer = args[1] if len(args) > 1 else kwargs.get("consumer")
    return runtime.deliver(raw, consumer, worker=f"{self.request.hostname}/{os.getpid()}")


@shared_task(name="flows.sweep_stalled_sagas")
def sweep_stalled_sagas() -> int:
    return sagas.sweep_stalled_sagas()
