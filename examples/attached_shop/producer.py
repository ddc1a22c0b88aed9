"""The shop's producer: a canvas now and then until SIGTERM or Ctrl-C.

    python -m examples.attached_shop.producer [--rate PER_SECOND]

Each tick sends one of: an order (a chain: reserve stock, charge the card, ship), the order's
notifications (a group), a quote (a chord: price each item, then the total), or an exchange-rate
lookup that retries. The demo starts it through flowscope-agent, so every send is in the trace.
"""

from __future__ import annotations

import argparse
import itertools
import signal
import threading
import uuid

from celery import chain, chord, group

from examples.attached_shop.shop import charge_card, fetch_exchange_rate, notify, price_item, reserve_stock, ship_order, total


def order(order_id: str) -> None:
    chain(reserve_stock.s(order_id), charge_card.s(), ship_order.s()).apply_async()


def notifications(order_id: str) -> None:
    group(notify.s(order_id, channel) for channel in ("email", "sms", "push")).apply_async()


def quote(order_id: str) -> None:
    chord(price_item.s(order_id, f"sku-{i}") for i in range(3))(total.s(order_id))


def exchange_rate(order_id: str) -> None:
    fetch_exchange_rate.delay("EUR")


CANVASES = (order, notifications, order, quote, exchange_rate)  # orders twice as often


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2.0, help="canvases sent a second")
    rate = parser.parse_args().rate
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sent = 0
    for send in itertools.cycle(CANVASES):
        if stop.wait(1 / rate):
            break
        send(f"o-{uuid.uuid4().hex[:8]}")
        sent += 1
    print(f"attached_shop producer: sent {sent} canvases", flush=True)


if __name__ == "__main__":
    main()
