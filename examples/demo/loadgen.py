"""Drive the demo catalog at a chosen rate, counting what producers see (sent, refused, replies)."""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import amqp.exceptions
import kombu.exceptions
import redis

import flows
from flows.core.errors import QueueFull, ReplyTimeout, RequestFailed
from flows.patterns.request_reply import PendingReply

log = logging.getLogger(__name__)
FLOWS = ("order", "payment", "credit", "invoice", "audit")
DEFAULT_MIX = {"order": 35, "payment": 25, "credit": 10, "invoice": 20, "audit": 10}
# What a send or a wait for a reply raises when Redis or the broker fails: Redis's errors, and on
# RabbitMQ kombu's (OperationalError once its retries are spent) and py-amqp's (a channel or
# connection closed by the broker); OSError for a socket that fails below them.
TRANSPORT_ERRORS = (redis.RedisError, kombu.exceptions.KombuError, amqp.exceptions.AMQPError, OSError)


def parse_mix(text: str) -> dict[str, int]:
    """'order=3,payment=1' -> {"order": 3, "payment": 1}; weights are whole numbers >= 0."""
    mix: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.partition("=")
        if not sep or name not in FLOWS:
            raise ValueError(f"bad mix entry {part!r}: use name=weight with name one of {', '.join(FLOWS)}")
        if not weight.isdigit():
            raise ValueError(f"bad weight in {part!r}: a whole number >= 0")
        mix[name] = int(weight)
    if not any(mix.values()):
        raise ValueError("the mix needs at least one flow with a positive weight")
    return mix


class LoadGenerator:
    def __init__(self, *, rate: float, mix: dict[str, int] | None = None, request_timeout: float = 2.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.mix = mix or DEFAULT_MIX
        self.request_timeout = request_timeout
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._requests = ThreadPoolExecutor(max_workers=8, thread_name_prefix="credit-check")

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def run(self, *, duration: float, stop: threading.Event, progress: Callable[[float, Counter[str]], None] | None = None) -> Counter[str]:
        names = [n for n in FLOWS if self.mix.get(n)]
        weights = [self.mix[n] for n in names]
        started = time.monotonic()
        next_send = started
        next_report = started + 1
        while not stop.is_set() and (duration <= 0 or time.monotonic() - started < duration):
            now = time.monotonic()
            if now < next_send:
                stop.wait(min(next_send - now, 0.05))
                continue
            next_send = max(next_send + 1 / self.rate, now - 1)  # no burst to catch up after a stall
            self.send_one(random.choices(names, weights)[0])
            if progress and now >= next_report:
                progress(now - started, self.counts.copy())
                next_report += 1
        self._requests.shutdown(wait=True)
        return self.counts

    def send_one(self, flow: str) -> None:
        order_id = f"A-{uuid.uuid4().hex[:8]}"
        amount = random.randint(5_00, 900_00)
        try:
            if flow == "order":
                if random.random() < 0.2:  # older producers still send v1: upcast by the consumers
                    flows.send("order.placed", {"order_id": order_id, "customer_id": "c-1", "amount_cents": amount}, schema_version=1)
                else:
                    flows.send("order.placed", {"order_id": order_id, "customer_id": "c-2", "amount": {"value_cents": amount}, "items": random.randint(1, 5)})
            elif flow == "payment":
                flows.start_saga("payment", {"order_id": order_id, "amount_cents": amount}, correlation_id=order_id)
            elif flow == "credit":
                pending = flows.request_async("credit.check", {"customer_id": "c-3", "amount_cents": amount}, timeout=self.request_timeout, correlation_id=order_id)
                self._requests.submit(self._await_reply, pending)
            elif flow == "invoice":
                flows.send("invoice.render", {"order_id": order_id, "amount_cents": amount}, correlation_id=order_id)
            else:
                flows.send("audit.event", {"actor": "loadgen", "action": "order.viewed", "subject": order_id})
            self.count(f"sent.{flow}")
        except QueueFull:
            self.count(f"refused.{flow}")
        except (*TRANSPORT_ERRORS, ValueError) as exc:
            # A load generator keeps going through a broker hiccup; it counts and says so.
            self.count(f"errors.{flow}")
            log.warning("sending %s failed: %s", flow, exc)

    def _await_reply(self, pending: PendingReply) -> None:
        try:
            pending.result()
            self.count("replies.ok")
        except ReplyTimeout:
            self.count("replies.timeout")
        except RequestFailed:
            self.count("replies.failed")
        except TRANSPORT_ERRORS as exc:
            self.count("replies.error")
            log.warning("awaiting a credit check failed: %s", exc)
