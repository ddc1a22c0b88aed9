"""Handlers the reliability checks drive, on queues of their own ("r.*", which the session worker
leaves alone). Every effect is a LedgerEntry row written in the handler's transaction or a line
in Redis, so a check can count exactly what ran.

Loaded by the test process and by the workers the checks start (RELIABILITY_MODULES).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from celery.signals import task_postrun
from django.db import transaction
from pydantic import BaseModel

import flows
from examples.demo.models import LedgerEntry
from tracing.redis import get_redis, key

QUICK = flows.Backoff(initial=0.05, factor=2.0, maximum=0.2, jitter=0.5)
POISON_ATTEMPTS = 4


def runs(name: str, redis: Any = None) -> list[str]:
    return [v.decode() for v in (redis or get_redis()).lrange(key("rel", "runs", name), 0, -1)]


def _ran(name: str, value: str) -> None:
    get_redis().rpush(key("rel", "runs", name), value)


class Credit(BaseModel):
    key: str


# 1, 2: an idempotent effect; the inbox row and the ledger row commit together or not at all.
flows.message_type("rel.credit", pattern="fire_and_forget", schemas={1: Credit})


@flows.handler("rel.credit", consumer="r_credit", queue="r.credits", idempotent=True, max_attempts=5, backoff=QUICK)
def r_credit(message: flows.Message) -> None:
    LedgerEntry.objects.create(service="rel", kind="credit", reference=message.payload["key"], amount_cents=1, message_id=message.message_id)


# 2: a slow delivery, in flight when Redis dies: the worker holds it unacknowledged.
class Slow(BaseModel):
    key: str
    seconds: float


flows.message_type("rel.slow", pattern="fire_and_forget", schemas={1: Slow})


@flows.handler("rel.slow", consumer="r_slow", queue="r.credits", max_attempts=1, backoff=QUICK)
def r_slow(message: flows.Message) -> None:
    _ran("r_slow_started", message.payload["key"])
    time.sleep(message.payload["seconds"])
    _ran("r_slow", message.payload["key"])


# 3: a message no attempt can ever process.
flows.message_type("rel.poison", pattern="fire_and_forget", schemas={1: Credit})


@flows.handler("rel.poison", consumer="r_poison", queue="r.poison", max_attempts=POISON_ATTEMPTS, backoff=QUICK)
def r_poison(message: flows.Message) -> None:
    _ran("r_poison", f"{message.payload['key']}|{message.attempt}")
    raise ValueError(f"cannot parse the order lines of {message.payload['key']}")


# 4: fails until the bug is fixed; every run is recorded, so a double republish shows.
flows.message_type("rel.fixable", pattern="fire_and_forget", schemas={1: Credit})


@flows.handler("rel.fixable", consumer="r_fixable", queue="r.fixable", max_attempts=1, backoff=QUICK)
def r_fixable(message: flows.Message) -> None:
    if not get_redis().exists(key("rel", "fixed")):
        raise RuntimeError("a bug in the handler, until fixed")
    _ran("r_fixable", message.payload["key"])


# 6, 7: a plain command whose runs are recorded.
flows.message_type("rel.note", pattern="fire_and_forget", schemas={1: Credit})


@flows.handler("rel.note", consumer="r_note", queue="r.notes", max_attempts=1, backoff=QUICK)
def r_note(message: flows.Message) -> None:
    _ran("r_note", message.payload["key"])


# 5: a three-step saga whose worker process is killed after each step and compensation.
class Trip(BaseModel):
    trip: str
    fail_at: str = ""
    # "commit": killed once the step's transaction commits, before the next step is sent;
    # "ack": killed after everything, before the broker message is acknowledged.
    kill: str = ""
    # The pool process only (its parent requeues the delivery at once), or the whole worker
    # node (on Redis the delivery waits in the unacknowledged set for the visibility timeout; RabbitMQ
    # requeues it as the node's connection drops).
    whole_node: bool = False


_kill_after_task: bool | None = None  # set: kill after the task returns; True: the whole node


def _die(whole_node: bool) -> None:
    if whole_node:
        os.killpg(os.getpgrp(), signal.SIGKILL)  # the worker runs in a process group of its own
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_point(trip: dict[str, Any], point: str) -> None:
    global _kill_after_task
    if not trip["kill"] or not get_redis().set(key("rel", "killed", trip["trip"], point), 1, nx=True):
        return
    get_redis().incr(key("rel", "kills"))
    if trip["kill"] == "commit":
        transaction.on_commit(lambda: _die(trip["whole_node"]))
    else:
        _kill_after_task = trip["whole_node"]


@task_postrun.connect
def _kill_before_ack(**_: Any) -> None:
    # Runs in the pool process after the task returned; the parent acknowledges only after this.
    global _kill_after_task
    if _kill_after_task is not None:
        whole_node, _kill_after_task = _kill_after_task, None
        _die(whole_node)


def _trip_step(step: str, phase: str):  # type: ignore[no-untyped-def]
    def run(message: flows.Message) -> dict[str, Any]:
        trip = message.payload
        if phase == "action" and trip["fail_at"] == step:
            raise RuntimeError(f"{step} is sold out")
        LedgerEntry.objects.create(service="rel-trip", kind=f"{phase}:{step}", reference=trip["trip"], message_id=message.message_id)
        _kill_point(trip, f"{phase}:{step}")
        return {}

    return run


_steps = []
for _step in ("flight", "hotel", "charge"):
    _action, _undo = f"rel.trip.{_step}", f"rel.trip.{_step}.undo"
    flows.message_type(_action, pattern="saga", schemas={1: Trip})
    flows.message_type(_undo, pattern="saga", schemas={1: Trip})
    flows.handler(_action, consumer=f"rel.trip.{_step}", queue="r.trips", idempotent=True, max_attempts=2, backoff=QUICK)(_trip_step(_step, "action"))
    flows.handler(_undo, consumer=f"rel.trip.{_step}.undo", queue="r.trips", idempotent=True, max_attempts=3, backoff=QUICK)(_trip_step(_step, "compensation"))
    _steps.append(flows.step(_step, action=_action, compensation=_undo))
flows.saga("rel.trip", _steps)


# 12: many nodes: a plain command many workers share; every run is recorded.
flows.message_type("rel.node", pattern="fire_and_forget", schemas={1: Credit})


@flows.handler("rel.node", consumer="r_node", queue="r.nodes", max_attempts=3, backoff=QUICK)
def r_node(message: flows.Message) -> None:
    _ran("r_node", message.payload["key"])
