"""Traces of known shape and timing, stored through the collector's own store, for the trace
tree and comparison tests (API and browser).

Times are milliseconds after one base instant, so every duration, wait and the critical path
is known in advance."""

from __future__ import annotations

import os
import time
from typing import Any

from tracing.collector import store

INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER = 0, 1, 2, 3, 4
LONG_VALUE = "card declined by the acquirer: " + " ".join(f"reason-{i}" for i in range(600))  # about 6,000 characters


PAYMENT_MESSAGE_ID = "5e1f0c2a-7b7b-4c4c-8d8d-0123456789ab"  # the failing payment's message: its page is linked from the span


def new_id(bytes_: int) -> str:
    return os.urandom(bytes_).hex()


def span(
    trace: str,
    span_id: str,
    name: str,
    start_ms: float,
    end_ms: float,
    *,
    parent: str = "",
    kind: int = INTERNAL,
    base_ns: int,
    error: str = "",
    attributes: dict[str, Any] | None = None,
    links: list[tuple[str, str]] = (),
    events: list[Any] = (),
) -> dict[str, Any]:  # type: ignore[assignment]
    """A span as the collector takes it from the sink."""
    return {
        "t": trace,
        "s": span_id,
        "p": parent,
        "n": name,
        "k": kind,
        "sv": "shop",
        "st": base_ns + int(start_ms * 1e6),
        "en": base_ns + int(end_ms * 1e6),
        "sc": 2 if error else 1,
        "sm": error,
        "a": attributes or {},
        "e": list(events),
        "l": [[t, s, {}] for t, s in links],
    }


def checkout_trace() -> dict[str, Any]:
    """checkout (0–10 ms) runs validate (1–4) then sends order.placed (5–6) and audits (7–9);
    order.placed waits 20 ms in its queue and is processed 26–66, sending order.paid (30–31)
    and writing to the database (50–60) alongside; order.paid waits 9 ms and fails 40–90, the
    trace's end. A second root: an attached app's consumer that says it waited 12.5 ms.
    `process order.placed` links to a span of another trace; one of that trace links to
    `process order.paid`.

    Critical path: checkout, validate, send and process order.placed, send and process order.paid."""
    base = time.time_ns() - 5_000_000_000
    t, other = new_id(16), new_id(16)
    ids = {name: new_id(8) for name in ("root", "validate", "send1", "process1", "send2", "process2", "db", "audit", "attached", "elsewhere", "elsewhere_in")}
    spans = [
        span(t, ids["root"], "checkout", 0, 10, kind=SERVER, base_ns=base),
        span(t, ids["validate"], "validate", 1, 4, parent=ids["root"], base_ns=base),
        span(t, ids["send1"], "send order.placed", 5, 6, parent=ids["root"], kind=PRODUCER, base_ns=base),
        span(t, ids["audit"], "audit", 7, 9, parent=ids["root"], base_ns=base),
        span(t, ids["process1"], "process order.placed", 26, 66, parent=ids["send1"], kind=CONSUMER, base_ns=base, links=[(other, ids["elsewhere"])]),
        span(t, ids["send2"], "send order.paid", 30, 31, parent=ids["process1"], kind=PRODUCER, base_ns=base),
        span(t, ids["db"], "db write", 50, 60, parent=ids["process1"], kind=CLIENT, base_ns=base),
        span(
            t,
            ids["process2"],
            "process order.paid",
            40,
            90,
            parent=ids["send2"],
            kind=CONSUMER,
            base_ns=base,
            error="PaymentDeclined: card declined",
            attributes={"flowscope.decline_reason": LONG_VALUE, "flowscope.attempt": 3, "messaging.message.id": PAYMENT_MESSAGE_ID},
            events=[["exception", base + 89_000_000, {"exception.type": "PaymentDeclined", "exception.message": "card declined"}]],
        ),
        span(t, ids["attached"], "process billing.charge", 2, 3, kind=CONSUMER, base_ns=base, attributes={"flowscope.queue_wait_ms": 12.5}),
        span(other, ids["elsewhere"], "requeue order.placed", 0, 1, kind=PRODUCER, base_ns=base + 200_000_000),
        span(other, ids["elsewhere_in"], "retry order.paid", 2, 3, kind=PRODUCER, base_ns=base + 200_000_000, links=[(t, ids["process2"])]),
    ]
    store(spans)
    return {"trace_id": t, "other_trace_id": other, "ids": ids}


def trip(*, flight_ms: float, with_hotel: bool, with_car: bool, flight_copies: int = 1) -> str:
    """A saga's trace: `saga trip` over a flight (sent, then processed `flight_copies` times in
    parallel, `flight_ms` each), optionally a hotel and a car, each sent and processed."""
    base = time.time_ns() - 5_000_000_000
    t, root = new_id(16), new_id(8)
    spans, at = [], 1.0
    send = new_id(8)
    spans.append(span(t, send, "send trip.flight", at, at + 1, parent=root, kind=PRODUCER, base_ns=base))
    for _ in range(flight_copies):
        spans.append(span(t, new_id(8), "process trip.flight", at + 5, at + 5 + flight_ms, parent=send, kind=CONSUMER, base_ns=base))
    at += 5 + flight_ms + 1
    for step, present in (("hotel", with_hotel), ("car", with_car)):
        if present:
            send = new_id(8)
            spans.append(span(t, send, f"send trip.{step}", at, at + 1, parent=root, kind=PRODUCER, base_ns=base))
            spans.append(span(t, new_id(8), f"process trip.{step}", at + 3, at + 23, parent=send, kind=CONSUMER, base_ns=base))
            at += 24
    spans.append(span(t, root, "saga trip", 0, at, kind=INTERNAL, base_ns=base))
    store(spans)
    return t
