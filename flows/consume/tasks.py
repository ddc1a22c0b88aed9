"""The worker's one delivery task: a thin interface over the runtime, for every handler."""

from __future__ import annotations

import gc
import logging
import os
import socket
import time
from typing import Any

from celery import shared_task
from celery.exceptions import Reject
from celery.signals import worker_process_init

from flows.consume import runtime
from flows.consume.stats import counters
from flows.produce.publishing import DELIVER_TASK

log = logging.getLogger(__name__)
REQUEUE_PAUSE_SECONDS = 1.0


@shared_task(name=DELIVER_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def deliver(self: Any, *args: Any, **kwargs: Any) -> str:
    # Arguments are checked by the runtime, not by Python's call, so a malformed message
    # becomes a dead letter instead of a TypeError that Celery would acknowledge and drop.
    raw = args[0] if args else kwargs.get("envelope")
    consumer = args[1] if len(args) > 1 else kwargs.get("consumer")
    worker = f"{self.request.hostname}/{os.getpid()}"
    counters.identify(worker)
    try:
        return runtime.deliver(raw, consumer, worker=worker)
    except Exception:
        # The outcome could not be made durable (database or broker away). Celery would ack a
        # failed task and drop the message; put it back instead, after a pause so an outage
        # does not become a hot loop.
        log.exception("could not record the outcome of a delivery to %r; returning it to the queue", consumer)
        time.sleep(REQUEUE_PAUSE_SECONDS)
        raise Reject(requeue=True) from None


@worker_process_init.connect
def _heartbeat_from_the_start(**_: Any) -> None:
    # An idle pool process is online too: name it before its first task (the worker command
    # puts the node name in FLOWSCOPE_NODE; a bare `celery worker` falls back to the host).
    counters.identify(f"{os.environ.get('FLOWSCOPE_NODE') or 'celery@' + socket.gethostname()}/{os.getpid()}")
    counters.flush()


@worker_process_init.connect
def _freeze_start_up_objects(**_: Any) -> None:
    # Everything a pool process holds from start-up (Django, Celery, the catalog: some 10^5
    # objects) moves to the collector's permanent generation, where full collections no longer
    # walk it. Every hop allocates objects that outlive a young collection (a span waits for
    # its export), so full collections come every few thousand hops and each walked all of it.
    # What is made after this (each hop's objects) is collected as before.
    gc.freeze()
