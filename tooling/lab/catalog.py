"""The lab's asynchronous style: an order fanned out to the four downstream services.

Each subscriber makes the same HTTP call the synchronous chain makes; a failed call raises, so
Flowscope's retries, back-pressure and dead letters decide what happens next. The retries must
outlast the 30 s outage even when jitter takes half of every delay off: 0.5 + 1 + 2 + 4 + 8 x 10
= 87.5 s, at least 43.75 s, before the 14th attempt. (With 10 attempts, at least 23.75 s, a full
lab run dead-lettered two orders of the outage: the lab found it.)
"""

from __future__ import annotations

from pydantic import BaseModel, Field

import flows
from tooling.lab import calls
from tooling.lab.effects import SERVICES
from tooling.lab.scenarios import queue_name

LAB_RETRY = flows.Backoff(initial=0.5, factor=2.0, maximum=8.0)
MAX_ATTEMPTS = 14
# A queue this deep holds several seconds of work: producers wait (up to 10 s) until it drains
# to the low mark, so a slow service slows the callers instead of growing a backlog without end.
QUEUE_HIGH, QUEUE_LOW = 60, 30


class LabOrder(BaseModel):
    run: str = Field(min_length=1, max_length=100)
    order_id: str = Field(min_length=1, max_length=128)
    amount_cents: int = Field(ge=0)


flows.message_type("lab.order", pattern="fan_out", schemas={1: LabOrder})


def _subscriber(service: str) -> None:
    flows.queue(queue_name(service), high=QUEUE_HIGH, low=QUEUE_LOW, mode="block", block_timeout=10.0)

    @flows.handler("lab.order", consumer=f"lab_{service}", queue=queue_name(service), max_attempts=MAX_ATTEMPTS, backoff=LAB_RETRY)
    def call_service(message: flows.Message) -> None:
        addresses, timeout = calls.services_from_env()
        calls.call(addresses[service], service, run=message.payload["run"], order_id=message.payload["order_id"], timeout=timeout)


for _service in SERVICES:
    _subscriber(_service)
