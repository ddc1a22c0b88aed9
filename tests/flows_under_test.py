"""Message types, handlers and sagas the tests drive. Each handler does what its payload asks
(fail n times, sleep, block), and leaves a trace of what it did in Redis under flows:test:*.

Loaded by the test process (conftest) and by the workers the tests start (FLOWS_MODULES).
"""

from __future__ import annotations

import gc
import time
from typing import Any

from pydantic import BaseModel, Field

import flows
from examples.demo.models import LedgerEntry
from flows.core.errors import PoisonMessage
from tracing.redis import get_redis, key

QUICK = flows.Backoff(initial=0.05, factor=2.0, maximum=0.2, jitter=0.5)


def attempt_number(name: str, message: flows.Message) -> int:
    """Counts deliveries of one message to one handler, across attempts and workers."""
    return int(get_redis().incr(key("test", "attempts", name, message.message_id)))


def record(name: str, value: str) -> None:
    get_redis().rpush(key("test", "log", name), value)


def recorded(name: str) -> list[str]:
    return [v.decode() for v in get_redis().lrange(key("test", "log", name), 0, -1)]


def is_fixed(bug: str) -> bool:
    return bool(get_redis().exists(key("test", "fixed", bug)))


def fix(bug: str) -> None:
    get_redis().set(key("test", "fixed", bug), 1)


class Job(BaseModel):
    key: str
    fail_times: int = 0
    sleep: float = 0.0
    poison: bool = False
    bug: str = ""  # fails until fix(bug) is called


def _run_job(name: str, message: flows.Message) -> dict[str, Any]:
    job = message.payload
    n = attempt_number(name, message)
    if job["sleep"]:
        time.sleep(job["sleep"])
    if job["poison"]:
        raise PoisonMessage("the downstream service rejects this payload")
    if n <= job["fail_times"]:
        raise RuntimeError(f"planned failure {n} of {job['fail_times']}")
    if job["bug"] and not is_fixed(job["bug"]):
        raise ValueError("a bug in the handler, until fixed")
    record(name, f"{job['key']}|{message.attempt}|{message.worker}")
    return {"key": job["key"], "attempt": message.attempt}


# -- fire-and-forget --
flows.message_type("test.command", pattern="fire_and_forget", schemas={1: Job})


@flows.handler("test.command", consumer="t_command", queue="t.commands", max_attempts=3, backoff=QUICK)
def t_command(message: flows.Message) -> None:
    _run_job("t_command", message)


# -- what a pool process's garbage collector holds back (flows.consume.tasks freezes start-up) --
flows.message_type("test.gc_probe", pattern="fire_and_forget")


@flows.handler("test.gc_probe", consumer="t_gc_probe", queue="t.commands", max_attempts=1)
def t_gc_probe(message: flows.Message) -> None:
    record("t_gc_probe", str(gc.get_freeze_count()))


# -- a queue of its own, for the flow graph test to count exactly --
flows.message_type("test.graph", pattern="fire_and_forget", schemas={1: Job})


@flows.handler("test.graph", consumer="t_graph", queue="t.graph", max_attempts=3, backoff=QUICK)
def t_graph(message: flows.Message) -> None:
    _run_job("t_graph", message)


# -- idempotent: the effect is a ledger row, in the handler's transaction --
flows.message_type("test.credit", pattern="fire_and_forget", schemas={1: Job})


@flows.handler("test.credit", consumer="t_credit", queue="t.commands", idempotent=True, max_attempts=3, backoff=QUICK)
def t_credit(message: flows.Message) -> None:
    n = attempt_number("t_credit", message)
    LedgerEntry.objects.create(service="test", kind="credit", reference=message.payload["key"], amount_cents=1, message_id=message.message_id)
    time.sleep(message.payload["sleep"])
    if n <= message.payload["fail_times"]:
        raise RuntimeError("failed after writing its effect")


# The same, on a queue the session worker leaves to a worker of the test's own, whose database
# connections that test drops (tests/test_dropped_connections.py).
flows.message_type("test.credit.dropped", pattern="fire_and_forget", schemas={1: Job})


@flows.handler("test.credit.dropped", consumer="t_credit_dropped", queue="t.drops", idempotent=True, max_attempts=3, backoff=QUICK)
def t_credit_dropped(message: flows.Message) -> None:
    LedgerEntry.objects.create(service="test", kind="credit", reference=message.payload["key"], amount_cents=1, message_id=message.message_id)
    time.sleep(message.payload["sleep"])


# -- a retry that waits long enough to be seen waiting, in the broker (tests/test_rabbitmq.py) --
flows.message_type("test.later", pattern="fire_and_forget", schemas={1: Job})
LATER = flows.Backoff(initial=8, factor=1, maximum=8, jitter=0)


@flows.handler("test.later", consumer="t_later", queue="t.later", max_attempts=2, backoff=LATER)
def t_later(message: flows.Message) -> None:
    _run_job("t_later", message)


# -- schema evolution: v1 {name}, v2 {first, last}, v3 known to the registry but not this consumer --
class PersonV1(BaseModel):
    name: str


class PersonV2(BaseModel):
    first: str
    last: str


class PersonV3(BaseModel):
    full_name: str = Field(min_length=1)


def person_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    first, _, last = payload["name"].partition(" ")
    return {"first": first, "last": last}


flows.message_type("test.person", pattern="fire_and_forget", schemas={1: PersonV1, 2: PersonV2, 3: PersonV3}, upcasters={1: person_v1_to_v2})


@flows.handler("test.person", consumer="t_person", queue="t.commands", version=2, max_attempts=2, backoff=QUICK)
def t_person(message: flows.Message) -> None:
    record("t_person", f"{message.payload['first']}|{message.payload['last']}|v{message.envelope.schema_version}")


# -- fan-out: three subscribers on their own queues --
class Event(BaseModel):
    key: str
    slow_seconds: float = 0.0


flows.message_type("test.event", pattern="fan_out", schemas={1: Event})


@flows.handler("test.event", consumer="t_sub_fast", queue="t.fan.fast")
def t_sub_fast(message: flows.Message) -> None:
    record("t_sub_fast", message.payload["key"])


@flows.handler("test.event", consumer="t_sub_slow", queue="t.fan.slow")
def t_sub_slow(message: flows.Message) -> None:
    time.sleep(message.payload["slow_seconds"])
    record("t_sub_slow", message.payload["key"])


@flows.handler("test.event", consumer="t_sub_failing", queue="t.fan.failing", max_attempts=2, backoff=QUICK)
def t_sub_failing(message: flows.Message) -> None:
    raise ConnectionError("subscriber's database is down")


# -- request-reply --
class Question(BaseModel):
    text: str
    sleep: float = 0.0
    fail: bool = False


flows.message_type("test.ask", pattern="request_reply", schemas={1: Question})


@flows.handler("test.ask", consumer="t_answer", queue="t.requests", max_attempts=2, backoff=QUICK)
def t_answer(message: flows.Message) -> dict[str, Any]:
    time.sleep(message.payload["sleep"])
    if message.payload["fail"]:
        raise LookupError("no answer to that")
    return {"echo": message.payload["text"].upper()}


# -- competing consumers --
flows.message_type("test.work", pattern="competing_consumers", schemas={1: Job})


@flows.handler("test.work", consumer="t_work", queue="t.work", backoff=QUICK)
def t_work(message: flows.Message) -> None:
    _run_job("t_work", message)


# -- back-pressure: a queue no worker consumes, with watermarks the tests fill up to --
flows.message_type("test.bulk", pattern="fire_and_forget")
flows.queue("t.backlog.raise", high=5, low=2, mode="raise")
flows.queue("t.backlog.block", high=5, low=2, mode="block", block_timeout=1.0)


@flows.handler("test.bulk", consumer="t_bulk", queue="t.backlog.raise")
def t_bulk(message: flows.Message) -> None:
    pass


# -- sagas: a trip of three steps; the payload says which step fails, or blocks --
class Trip(BaseModel):
    trip: str
    fail_at: str = ""  # a step name whose action fails every attempt
    fail_compensation: str = ""  # a step name whose compensation fails until fixed
    block_at: str = ""  # a step name whose first attempt blocks until released


def _trip_step(step_name: str, phase: str, queue: str):  # type: ignore[no-untyped-def]
    def run(message: flows.Message) -> dict[str, Any]:
        trip = message.payload
        record(f"trip:{trip['trip']}", f"{phase}:{step_name}")
        if phase == "action" and trip["block_at"] == step_name and get_redis().set(key("test", "blocked", trip["trip"]), 1, nx=True):
            get_redis().set(key("test", "started", trip["trip"]), 1)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not get_redis().exists(key("test", "release", trip["trip"])):
                time.sleep(0.05)
        if phase == "action" and trip["fail_at"] == step_name:
            raise RuntimeError(f"{step_name} is sold out")
        if phase == "compensation" and trip["fail_compensation"] == step_name and not is_fixed(f"comp:{trip['trip']}"):
            raise RuntimeError(f"cannot undo {step_name}")
        LedgerEntry.objects.create(service="trip", kind=f"{phase}:{step_name}", reference=trip["trip"], message_id=message.message_id)
        return {f"{step_name}_done": True} if phase == "action" else {}

    return run


for _saga_name, _queue in (("test.trip", "t.sagas"), ("test.crashtrip", "t.sagas.crash")):
    _steps = []
    for _step in ("flight", "hotel", "charge"):
        _action, _undo = f"{_saga_name}.{_step}", f"{_saga_name}.{_step}.undo"
        flows.message_type(_action, pattern="saga", schemas={1: Trip})
        flows.message_type(_undo, pattern="saga", schemas={1: Trip})
        flows.handler(_action, consumer=f"{_saga_name}.{_step}", queue=_queue, idempotent=True, max_attempts=2, backoff=QUICK)(_trip_step(_step, "action", _queue))
        flows.handler(_undo, consumer=f"{_saga_name}.{_step}.undo", queue=_queue, idempotent=True, max_attempts=2, backoff=QUICK)(_trip_step(_step, "compensation", _queue))
        _steps.append(flows.step(_step, action=_action, compensation=_undo))
    flows.saga(_saga_name, _steps)
