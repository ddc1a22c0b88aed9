"""The benchmark's flows: handlers that do nothing but count, like the bare Celery task."""

from __future__ import annotations

import flows
from tooling.bench.counting import count_done, record_end

flows.message_type("bench.ping", pattern="fire_and_forget")


@flows.handler("bench.ping", consumer="bench_ping", queue="bench.flows", max_attempts=1)
def bench_ping(message: flows.Message) -> None:
    count_done("flows")


# -- fan-out: one event, three subscribers on queues of their own --
flows.message_type("bench.event", pattern="fan_out")
for _i in (1, 2, 3):
    flows.handler("bench.event", consumer=f"bench_sub{_i}", queue=f"bench.f{_i}", max_attempts=1)(lambda message: count_done("fanout"))

# -- idempotent: the inbox row written in the handler's transaction --
flows.message_type("bench.credit", pattern="fire_and_forget")


@flows.handler("bench.credit", consumer="bench_credit", queue="bench.idem", max_attempts=1, idempotent=True)
def bench_credit(message: flows.Message) -> None:
    count_done("idempotent")


# -- request-reply --
flows.message_type("bench.ask", pattern="request_reply")


@flows.handler("bench.ask", consumer="bench_answer", queue="bench.rr", max_attempts=1)
def bench_answer(message: flows.Message) -> dict:
    return {"n": message.payload.get("n")}


# -- a three-step saga that does nothing but move --
for _step in ("one", "two", "three"):
    flows.message_type(f"bench.saga.{_step}", pattern="saga")
    flows.handler(f"bench.saga.{_step}", consumer=f"bench_saga_{_step}", queue="bench.saga", max_attempts=1, backoff=flows.Backoff(initial=0.1, maximum=1))(lambda message: None)
flows.saga("bench.saga", [flows.step(s, action=f"bench.saga.{s}") for s in ("one", "two", "three")])

# -- requeue: a handler that succeeds, for dead letters made in bulk --
flows.message_type("bench.requeue", pattern="fire_and_forget")


@flows.handler("bench.requeue", consumer="bench_requeue", queue="bench.requeue", max_attempts=1)
def bench_requeue(message: flows.Message) -> None:
    pass


# -- live latency and memory: fire-and-forget hops that note when they ended, or just count --
flows.message_type("bench.live", pattern="fire_and_forget")


@flows.handler("bench.live", consumer="bench_live", queue="bench.live", max_attempts=1)
def bench_live(message: flows.Message) -> None:
    record_end("live")


flows.message_type("bench.memory", pattern="fire_and_forget")


@flows.handler("bench.memory", consumer="bench_memory", queue="bench.memory", max_attempts=1)
def bench_memory(message: flows.Message) -> None:
    count_done("memory")
