"""The benchmark's flows: handlers that do nothing but count, like the bare Celery task."""

from __future__ import annotations

import flows
from flows.bench.counting import count_done

flows.message_type("bench.ping", pattern="fire_and_forget")


@flows.handler("bench.ping", consumer="bench_ping", queue="bench.flows", max_attempts=1)
def bench_ping(message: flows.Message) -> None:
    count_done("flows")
