"""The demo's enterprise flows: an order fanned out to four services, a payment saga, a credit
check against a slow legacy adapter, invoices rendered by competing consumers, audit events.

Every handler starts with `faults.inject`, so the demo can turn failures up and down live.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

import flows
from examples.demo import faults
from examples.demo.models import LedgerEntry

FAST_RETRY = flows.Backoff(initial=0.2, factor=2.0, maximum=5.0)


def _ledger(message: flows.Message, service: str, kind: str, reference: str, amount_cents: int = 0) -> None:
    LedgerEntry.objects.create(service=service, kind=kind, reference=reference, amount_cents=amount_cents, message_id=message.message_id)


# -- order placed: event fan-out, schema v1 upcast to v2 --


class OrderPlacedV1(BaseModel):
    order_id: str = Field(min_length=1, max_length=64)
    customer_id: str = Field(min_length=1, max_length=64)
    amount_cents: int = Field(ge=0)


class Money(BaseModel):
    value_cents: int = Field(ge=0)
    currency: str = Field(default="EUR", min_length=3, max_length=3)


class OrderPlacedV2(BaseModel):
    order_id: str = Field(min_length=1, max_length=64)
    customer_id: str = Field(min_length=1, max_length=64)
    amount: Money
    items: int = Field(default=1, ge=1)


def order_placed_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "order_id": payload["order_id"],
        "customer_id": payload["customer_id"],
        "amount": {"value_cents": payload["amount_cents"], "currency": "EUR"},
        "items": 1,
    }


flows.message_type("order.placed", pattern="fan_out", schemas={1: OrderPlacedV1, 2: OrderPlacedV2}, upcasters={1: order_placed_v1_to_v2})


@flows.handler("order.placed", consumer="inventory_on_order_placed", queue="inventory", idempotent=True, backoff=FAST_RETRY)
def inventory_on_order_placed(message: flows.Message) -> None:
    faults.inject("inventory_on_order_placed")
    _ledger(message, "inventory", "reserve", message.payload["order_id"], message.payload["items"])


@flows.handler("order.placed", consumer="billing_on_order_placed", queue="billing", idempotent=True, backoff=FAST_RETRY)
def billing_on_order_placed(message: flows.Message) -> None:
    faults.inject("billing_on_order_placed")
    _ledger(message, "billing", "invoice-due", message.payload["order_id"], message.payload["amount"]["value_cents"])


@flows.handler("order.placed", consumer="shipping_on_order_placed", queue="shipping", backoff=FAST_RETRY)
def shipping_on_order_placed(message: flows.Message) -> None:
    faults.inject("shipping_on_order_placed")


@flows.handler("order.placed", consumer="notify_on_order_placed", queue="notifications", max_attempts=3, backoff=FAST_RETRY)
def notify_on_order_placed(message: flows.Message) -> None:
    faults.inject("notify_on_order_placed")


# -- payment: saga orchestration with compensations --


class Payment(BaseModel):
    order_id: str = Field(min_length=1, max_length=64)
    amount_cents: int = Field(ge=0)


for _type in ("payment.reserve_stock", "payment.release_stock", "payment.charge_card", "payment.refund_card", "payment.book_shipment", "payment.cancel_shipment"):
    flows.message_type(_type, pattern="saga", schemas={1: Payment})

payment = flows.saga(
    "payment",
    [
        flows.step("reserve_stock", action="payment.reserve_stock", compensation="payment.release_stock"),
        flows.step("charge_card", action="payment.charge_card", compensation="payment.refund_card"),
        flows.step("book_shipment", action="payment.book_shipment", compensation="payment.cancel_shipment"),
    ],
)


def _saga_step(message_type: str, consumer: str, service: str, kind: str, sign: int) -> None:
    @flows.handler(message_type, consumer=consumer, queue="payments", idempotent=True, max_attempts=3, backoff=FAST_RETRY)
    def run(message: flows.Message) -> dict[str, Any]:
        faults.inject(consumer)
        _ledger(message, service, kind, message.payload["order_id"], sign * message.payload["amount_cents"])
        return {f"{kind}_by": message.worker}


_saga_step("payment.reserve_stock", "reserve_stock", "inventory", "reserved", 0)
_saga_step("payment.release_stock", "release_stock", "inventory", "released", 0)
_saga_step("payment.charge_card", "charge_card", "billing", "charged", 1)
_saga_step("payment.refund_card", "refund_card", "billing", "refunded", -1)
_saga_step("payment.book_shipment", "book_shipment", "shipping", "booked", 0)
_saga_step("payment.cancel_shipment", "cancel_shipment", "shipping", "cancelled", 0)


# -- credit check: async request-reply against a slow legacy adapter --


class CreditCheck(BaseModel):
    customer_id: str = Field(min_length=1, max_length=64)
    amount_cents: int = Field(ge=0)


CREDIT_LIMIT_CENTS = 500_00

flows.message_type("credit.check", pattern="request_reply", schemas={1: CreditCheck})


@flows.handler("credit.check", consumer="legacy_credit_check", queue="legacy", max_attempts=2, backoff=FAST_RETRY)
def legacy_credit_check(message: flows.Message) -> dict[str, Any]:
    faults.inject("legacy_credit_check")
    amount = message.payload["amount_cents"]
    return {"customer_id": message.payload["customer_id"], "approved": amount <= CREDIT_LIMIT_CENTS, "limit_cents": CREDIT_LIMIT_CENTS}


# -- invoices: competing consumers, behind back-pressure --


class RenderInvoice(BaseModel):
    order_id: str = Field(min_length=1, max_length=64)
    amount_cents: int = Field(ge=0)


flows.message_type("invoice.render", pattern="competing_consumers", schemas={1: RenderInvoice})
# Rendering is slow (see the demo's fault profile), so this queue fills up under the demo load
# and producers are refused until the renderers catch up.
flows.queue("invoices", high=30, low=10, mode="raise")


@flows.handler("invoice.render", consumer="render_invoice", queue="invoices", backoff=FAST_RETRY)
def render_invoice(message: flows.Message) -> None:
    # Not transactional on purpose: a slow render must not hold a database transaction open.
    faults.inject("render_invoice")


# -- audit: fire-and-forget --


class AuditEvent(BaseModel):
    actor: str = Field(min_length=1, max_length=150)
    action: str = Field(min_length=1, max_length=100)
    subject: str = Field(default="", max_length=200)


flows.message_type("audit.event", pattern="fire_and_forget", schemas={1: AuditEvent})


@flows.handler("audit.event", consumer="record_audit_event", queue="audit", max_attempts=3, backoff=FAST_RETRY)
def record_audit_event(message: flows.Message) -> None:
    faults.inject("record_audit_event")
