"""The alert benchmark's flow: a message whose handler rejects it at once (a dead letter at its
first attempt), so the benchmark decides to the message when a rule's threshold is crossed."""

from __future__ import annotations

import flows
from flows.core.errors import PoisonMessage

QUEUE = "bench.alerts"
flows.message_type("bench.doomed", pattern="fire_and_forget")


@flows.handler("bench.doomed", consumer="bench_doomed", queue=QUEUE, max_attempts=1)
def bench_doomed(message: flows.Message) -> None:
    raise PoisonMessage("the benchmark's doomed message, rejected on purpose")
